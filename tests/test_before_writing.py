"""What a conversion finds out before it writes: `--validate` without torch, and what a dry run reports.

A dry run meets the errors the real run would meet before writing, and gives the warnings it would
give; `convert --validate` without torch or transformers is refused before anything is written.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import streamconv
from streamconv.errors import AssetError, MissingDependencyError, OutputExistsError
from streamconv.format.staging import staging_path
from tests import models
from tests.conftest import run_cli

INSTALL = "pip install torch 'streamconv[validate]'"

@pytest.mark.parametrize("missing", ["torch", "transformers"])
def test_convert_validate_without_torch_is_refused_before_writing(
    tiny_checkpoint: Path, tmp_path: Path, missing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    with monkeypatch.context() as blocked:
        blocked.setitem(sys.modules, missing, None)  # `import` fails, find_spec finds nothing: not installed
        done = run_cli(["convert", str(tiny_checkpoint), "-o", str(out), "--validate"])
    assert done.code == 5, done.stderr
    assert done.stderr == (
        f"error: {missing} is needed to validate against the original model but is not installed; "
        f"install it with `{INSTALL}`\n"
    )
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no output, no hidden staging folder
    # So the run after installing needs no --force (here: the same run, nothing blocked, no validation).
    assert run_cli(["convert", str(tiny_checkpoint), "-o", str(out), "-q"]).code == 0


def test_library_validate_true_without_torch_is_refused_before_reading(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails, find_spec finds nothing
    with pytest.raises(MissingDependencyError) as caught:
        streamconv.convert(tmp_path / "no-such-checkpoint", tmp_path / "out", validate=True)
    assert str(caught.value) == f"torch is needed to validate against the original model but is not installed; install it with `{INSTALL}`"
    assert caught.value.exit_code == 5
    with pytest.raises(MissingDependencyError):
        streamconv.convert(tiny_checkpoint, tmp_path / "out", validate=True, dry_run=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_dry_run_refuses_an_existing_output_as_the_real_run_does(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = streamconv.convert(tiny_checkpoint, tmp_path / "out").output_dir
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(OutputExistsError):
        streamconv.convert(tiny_checkpoint, out, dry_run=True)
    done = run_cli(["convert", str(tiny_checkpoint), "-o", str(out), "--dry-run"])
    assert (done.code, done.stderr) == (4, f"error: {out}: output already exists; pass --force to replace it\n")
    assert streamconv.convert(tiny_checkpoint, out, dry_run=True, force=True).dry_run
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # a dry run never writes


def test_dry_run_warns_of_missing_and_broken_assets_as_the_real_run_does(tmp_path: Path) -> None:
    folder = models.bert(tmp_path / "bert")  # no tokenizer at all: BERT's inputs need one
    (folder / "tokenizer_config.json").write_text("{not json")
    dry = streamconv.convert(folder, tmp_path / "out", dry_run=True)
    real = streamconv.convert(folder, tmp_path / "out")
    assert len(dry.warnings) == 2
    assert any("tokenizer.json: is missing" in w for w in dry.warnings)
    assert any("tokenizer_config.json: is not JSON" in w for w in dry.warnings)
    assert dry.warnings == real.warnings
    with pytest.raises(AssetError, match="tokenizer_config.json: is not JSON"):
        streamconv.convert(folder, tmp_path / "strict", dry_run=True, strict=True)


def test_dry_run_warns_when_a_tokenizer_to_build_needs_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = models.bert(tmp_path / "bert")
    models.write_vocab(folder)  # vocab.txt only: tokenizer.json is built from it
    monkeypatch.setitem(sys.modules, "transformers", None)
    dry = streamconv.convert(folder, tmp_path / "out", dry_run=True)
    real = streamconv.convert(folder, tmp_path / "out")
    assert dry.warnings == real.warnings == [
        "transformers is needed to build tokenizer.json from the slow-tokenizer files but is not installed; "
        "install it with `pip install 'streamconv[validate]'`"
    ]
    assert "tokenizer.json" not in [a["path"] for a in dry.assets]


def test_dry_run_says_which_leftovers_the_real_run_would_remove(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    unrecognised = streamconv.convert(tiny_checkpoint, out, dry_run=True).warnings  # tiny-test: the generic plan
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = staging_path(out, dead.pid)
    left.mkdir()
    dry = streamconv.convert(tiny_checkpoint, out, dry_run=True)
    assert dry.warnings == [*unrecognised, f"would remove {left.name}, left by an interrupted run"]
    assert left.is_dir()
    real = streamconv.convert(tiny_checkpoint, out)
    assert real.warnings == [*unrecognised, f"removed {left.name}, left by an interrupted run"]
    assert not left.exists()
