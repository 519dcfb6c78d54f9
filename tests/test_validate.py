"""Validation against the original model: it passes on honest conversions and names the damage on others."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import streamconv
from streamconv.cli.app import main
from streamconv.tools.validate import ValidationReport, validate
from tests.conftest import damage_output

QUERY = "encoder.layer.0.attention.self.query.weight"
KEY = "encoder.layer.0.attention.self.key.weight"
LAYER_NORM = "encoder.layer.1.output.LayerNorm.weight"
POSITIONS = "embeddings.position_embeddings.weight"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny BertModel and its float16 conversion (copy the output before damaging it).

    Its weights are drawn wider than transformers' default (std 0.3, not 0.02) so that attention
    is not near-uniform: swapping the query and key weights then changes the outputs, as in a
    trained model.
    """
    import transformers

    from tests import models

    root = tmp_path_factory.mktemp("bert")
    config = transformers.BertConfig(
        vocab_size=models.VOCAB, max_position_embeddings=64, initializer_range=0.3, **models._ENCODER
    )
    transformers.BertModel(config).save_pretrained(root / "src")
    source = root / "src"
    return source, streamconv.convert(source, root / "out").output_dir


def _copy(out: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(out, tmp_path / "out"))


def _failed(report: ValidationReport) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if not c.passed}


@pytest.mark.parametrize(
    ("builder", "parts", "probes"),
    [
        ("clip", None, ["outputs:image"]),
        ("clip", ["vision", "text"], ["outputs:image", "outputs:text"]),
        ("clip_vision", None, ["outputs:image"]),
        ("whisper", None, ["outputs:encoder"]),
        ("whisper", ["encoder", "decoder"], ["outputs:encoder", "outputs:decoder"]),
        ("sentence_transformer", None, ["outputs:embedding"]),
        ("roberta", None, ["outputs:text"]),
        ("distilbert", None, ["outputs:text"]),
        ("llama_bf16", None, ["outputs:text"]),
    ],
)
def test_tiny_models_validate(tmp_path: Path, builder: str, parts: list[str] | None, probes: list[str]) -> None:
    from tests import models

    source = getattr(models, builder)(tmp_path / "src")
    out = streamconv.convert(source, tmp_path / "out", parts=parts).output_dir
    report = validate(out)
    assert report.passed, [(c.name, c.detail) for c in report.checks]
    assert [c.name for c in report.checks][:3] == ["names", "weights", "model-tensors"]
    assert [c.name for c in report.checks if c.name.startswith("outputs:")] == probes
    for check in report.checks:
        if check.name.startswith("outputs:"):
            assert check.figures["items"] >= 8
            assert check.figures["min_cosine"] >= 0.99999 and check.figures["nmse"] <= 1e-5


@pytest.mark.parametrize("dtype", ["keep", "float32", "bfloat16"])
def test_limits_per_dtype(tmp_path: Path, dtype: str) -> None:
    from tests import models

    out = streamconv.convert(models.bert(tmp_path / "src"), tmp_path / "out", dtype=dtype).output_dir
    check = validate(out).check("outputs:text")
    assert check.passed, check.detail
    if dtype == "bfloat16":
        assert check.limits == {"min_cosine": 0.9993, "max_nmse": 6e-4}
        assert 0 < check.figures["nmse"] <= 6e-4
    else:  # keep and float32: exactly equal
        assert check.limits == {"min_cosine": 1.0, "max_nmse": 0.0}
        assert check.figures["nmse"] == 0.0 and check.figures["max_abs_error_ratio"] == 0.0


def _scale(arrays: dict, sources: dict) -> None:
    arrays[QUERY] = (arrays[QUERY].astype(np.float32) * 1.01).astype(arrays[QUERY].dtype)


def _swap_tensors(arrays: dict, sources: dict) -> None:
    arrays[QUERY], arrays[KEY] = arrays[KEY], arrays[QUERY]


def _swap_names(arrays: dict, sources: dict) -> None:
    sources[QUERY], sources[KEY] = sources[KEY], sources[QUERY]


def _drop(arrays: dict, sources: dict) -> None:
    del arrays[LAYER_NORM]


def _zero(arrays: dict, sources: dict) -> None:
    arrays[LAYER_NORM] = np.zeros_like(arrays[LAYER_NORM])


def _shift(arrays: dict, sources: dict) -> None:
    arrays[POSITIONS] = np.roll(arrays[POSITIONS], 1, axis=0)


@pytest.mark.parametrize(
    ("damage", "named", "failing"),
    [
        (_scale, [QUERY], {"weights"}),
        (_swap_tensors, [QUERY, KEY], {"weights", "outputs:text"}),
        (_swap_names, [QUERY, KEY], {"names", "weights", "outputs:text"}),
        (_drop, [LAYER_NORM], {"weights", "model-tensors", "outputs:text"}),
        (_zero, [LAYER_NORM], {"weights", "outputs:text"}),
        (_shift, [POSITIONS], {"weights", "outputs:text"}),
    ],
    ids=["scaled-1.01", "swapped-tensors", "swapped-names", "missing", "layernorm-zeroed", "positions-shifted"],
)
def test_damage_is_caught_and_named(
    tiny_bert: tuple[Path, Path], tmp_path: Path, damage: Callable, named: list[str], failing: set[str]
) -> None:
    out = _copy(tiny_bert[1], tmp_path)
    damage_output(out, damage, tmp_path / "scratch")
    failed = _failed(validate(out))
    assert failing <= set(failed), failed
    for name in named:
        assert name in failed["weights"]
    if "names" in failing:
        assert QUERY in failed["names"] and KEY in failed["names"]
    if "model-tensors" in failing:
        assert LAYER_NORM in failed["model-tensors"]


def test_excluded_model_tensor_fails_and_says_why(tiny_bert: tuple[Path, Path], tmp_path: Path) -> None:
    out = streamconv.convert(tiny_bert[0], tmp_path / "out", exclude=[LAYER_NORM]).output_dir
    failed = _failed(validate(out))
    assert "weights" not in failed  # the output is what the options asked for
    assert LAYER_NORM in failed["model-tensors"] and f"left out by --exclude {LAYER_NORM}" in failed["model-tensors"]
    assert "outputs:text" in failed


def test_source_found_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import models

    models.bert(tmp_path / "work" / "src")
    monkeypatch.chdir(tmp_path / "work")
    out = streamconv.convert("src", tmp_path / "out").output_dir  # a relative source
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    report = validate(out)
    assert report.passed and report.source == str((tmp_path / "work" / "src").resolve())


def test_cli_json_limits_and_exit_codes(tiny_bert: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tiny_bert[1])
    assert main(["validate", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    text = next(c for c in report["checks"] if c["name"] == "outputs:text")
    assert text["limits"] == {"min_cosine": 0.99999, "max_nmse": 1e-5}
    assert isinstance(text["figures"]["nmse"], float) and isinstance(text["figures"]["min_cosine"], float)
    assert main(["validate", out, "--max-nmse", "0"]) == 6
    shown = capsys.readouterr().out
    assert "FAIL outputs:text" in shown and "FAILED" in shown


def test_convert_validate_records_failure_and_exits_6(
    tiny_bert: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamconv.tools.validate import report

    monkeypatch.setitem(report.LIMITS, "float16", (1.0, 0.0))  # float16 can never be exact: a failure
    out = tmp_path / "out"
    assert main(["convert", str(tiny_bert[0]), "-o", str(out), "--validate"]) == 6
    captured = capsys.readouterr()
    assert "FAIL outputs:text" in captured.out and f"{out / 'metadata.json'}" in captured.err
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["validation"]["passed"] is False and (out / "weights.parquet").is_file()
    assert metadata["include"] == [] and metadata["exclude"] == []


def test_real_minilm_convert_validate(minilm_path: Path, tmp_path: Path) -> None:
    result = streamconv.convert(minilm_path, tmp_path / "out", validate=True)
    assert result.validation is not None and result.validation["passed"], result.validation
    recorded = json.loads(result.metadata_path.read_text())["validation"]
    checks = {c["name"]: c for c in recorded["checks"]}
    assert {"names", "weights", "model-tensors", "outputs:embedding"} <= set(checks)
    if "probe:embedding" in checks:  # sentence-transformers installed: its own encode agrees
        assert checks["probe:embedding"]["passed"]
    figures = checks["outputs:embedding"]["figures"]
    assert figures["min_cosine"] >= 0.99999 and 0 < figures["nmse"] <= 1e-5


def test_transformers_load_report_is_captured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests import models

    out = streamconv.convert(models.bert(tmp_path / "src", "BertForMaskedLM"), tmp_path / "out").output_dir
    metadata = json.loads((out / "metadata.json").read_text())
    metadata["source"]["architectures"] = ["BertModel"]  # the head's tensors are then unexpected
    (out / "metadata.json").write_text(json.dumps(metadata))
    assert main(["validate", str(out)]) == 0
    captured = capsys.readouterr()
    assert "UNEXPECTED" not in captured.out + captured.err
    assert "transformers said 1 thing; rerun with --debug" in captured.out
    assert "checked as weights only: cls.predictions.bias" in captured.out
    assert main(["validate", str(out), "--debug"]) == 0
    assert "UNEXPECTED" in capsys.readouterr().out


def test_hub_source_is_opened_at_its_recorded_commit(
    tiny_bert: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamconv.tools.validate

    validation = sys.modules["streamconv.tools.validate"]  # the package name `streamconv.validate` is the function
    out = _copy(tiny_bert[1], tmp_path)
    metadata = json.loads((out / "metadata.json").read_text())
    metadata["source"].update(path=str(tmp_path / "gone"), repo_id="org/tiny-bert", revision="0123abc")
    (out / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(streamconv.StreamconvError, match="--source"):
        validation.locate_source({"source": {"id": "gone", "path": str(tmp_path / "gone")}}, None)
    opened = []
    real = validation.open_checkpoint
    monkeypatch.setattr(
        validation, "open_checkpoint", lambda s, revision=None: opened.append((s, revision)) or real(tiny_bert[0])
    )
    assert validate(out).passed
    assert opened == [("org/tiny-bert", "0123abc")]
    assert validate(out, source=tiny_bert[0]).passed and opened[-1] == (tiny_bert[0], None)
