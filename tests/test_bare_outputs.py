"""The CLI reads what the library writes (issue 20, item 6): a bare ``.parquet`` from ``WeightsWriter``
(no metadata.json) is inspected and verified, and one file of a split output is named as such.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import streamconv
from streamconv.errors import PartOfSplitError
from tests.conftest import random_checkpoint

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "STREAMCONV_DISABLE_PROGRESS_BARS": "1"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamconv", *args], capture_output=True, text=True, env=ENV,
                          timeout=120)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("src"), 4, (64, 512), seed=3, name="layer.{}.weight",
                             config='{"model_type": "tiny-test"}')


@pytest.fixture(scope="module")
def bare(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's generator example, on a tiny checkpoint: a weights file and nothing beside it."""
    path = tmp_path_factory.mktemp("bare") / "encoder.parquet"
    checkpoint = streamconv.open_checkpoint(source)
    chunks = streamconv.cast(streamconv.chunk(streamconv.select(checkpoint), chunk_size=16 * 1024), "float16")
    with streamconv.WeightsWriter(path) as writer:
        writer.write(chunks)
    return path


def test_inspect_reads_a_bare_weights_file(bare: Path) -> None:
    done = cli("inspect", str(bare))
    assert done.returncode == 0, done.stderr
    assert "no metadata.json beside it" in done.stdout and "4 tensors, 131,072 parameters" in done.stdout
    assert "layer.3.weight" in done.stdout
    done = cli("inspect", str(bare), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["metadata"] is None and data["tensors"][0]["name"] == "layer.0.weight"


def test_verify_checks_a_bare_weights_file_and_says_what_it_could_not(bare: Path, tmp_path: Path) -> None:
    report = streamconv.verify(bare)
    assert report.passed and report.tensor_count == 4 and report.chunk_count == 32
    assert any("no metadata.json" in line for line in report.unchecked) and report.files == []
    done = cli("verify", str(bare))
    assert done.returncode == 0, done.stderr
    assert "not checked: no metadata.json" in done.stdout
    # Damage is still found without metadata.json: a flipped byte in the middle of the data.
    damaged = tmp_path / "damaged.parquet"
    data = bytearray(bare.read_bytes())
    data[len(data) // 2] ^= 0x10
    damaged.write_bytes(bytes(data))
    done = cli("verify", str(damaged))
    assert done.returncode == 3, done.stdout + done.stderr


def test_one_file_of_a_split_output_is_named_as_a_part(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "split"
    streamconv.convert(source, out, chunk_size=16 * 1024, max_file_size="100KiB")
    parts = sorted(out.glob("weights-*-of-*.parquet"))
    assert len(parts) >= 3
    with pytest.raises(PartOfSplitError) as caught:
        streamconv.describe(parts[1])
    assert str(caught.value) == f"{parts[1]}: part 2 of {len(parts)} of the split output in {out}; pass the folder"
    for command in ("inspect", "verify"):
        done = cli(command, str(parts[1]))
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == f"error: {parts[1]}: part 2 of {len(parts)} of the split output in {out}; pass the folder"
    alone = tmp_path / parts[0].name
    alone.write_bytes(parts[0].read_bytes())
    done = cli("inspect", str(alone))
    assert done.returncode == 2 and f"part 1 of {len(parts)} of a split output; pass the folder of all its files" in done.stderr
    assert cli("verify", str(out)).returncode == 0
