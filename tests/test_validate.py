"""Validation against the original model: it passes on honest conversions and names the damage on others."""

from __future__ import annotations

import json
import re
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
        ("sentence_transformer", None, ["outputs:embedding", "outputs:neighbours"]),
        ("roberta", None, ["outputs:text"]),
        ("distilbert", None, ["outputs:text"]),
        ("llama_bf16", None, ["outputs:text"]),
        ("vit", None, ["outputs:image"]),
        ("dinov2", None, ["outputs:image"]),
        ("wav2vec2", None, ["outputs:audio"]),
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
    counts = next(c for c in report["checks"] if c["name"] == "model-tensors")["figures"]
    assert {type(counts[k]) for k in ("loaded", "missing", "unused")} == {int} and type(text["figures"]["items"]) is int
    assert counts["loaded"] > 0 and text["figures"]["items"] == 8
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
    assert main(["validate", str(out)]) == 6  # stored tensors the model does not use fail the check
    captured = capsys.readouterr()
    assert "UNEXPECTED" not in captured.out + captured.err
    assert re.search(r"transformers said \d+ things?; rerun with --debug", captured.out)
    assert "FAIL model-tensors: 5 stored tensors are not used by BertModel: cls.predictions.bias" in captured.out
    assert "ok   outputs:text" in captured.out  # the pooler the source lacks is the reference's, not a failure
    assert main(["validate", str(out), "--debug"]) == 6
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
        validation, "open_checkpoint", lambda s, revision=None, download=False: opened.append((s, revision)) or real(tiny_bert[0])
    )
    assert validate(out).passed
    assert opened == [("org/tiny-bert", "0123abc")]
    assert validate(out, source=tiny_bert[0]).passed and opened[-1] == (tiny_bert[0], None)


MIXTRAL_EXPERT = "model.layers.0.block_sparse_moe.experts.1.w1.weight"
MIXTRAL_ROUTER = "model.layers.1.block_sparse_moe.gate.weight"
VIT_QUERY = "encoder.layer.0.attention.attention.query.weight"


@pytest.mark.parametrize(
    ("builder", "name", "factor", "probe"),
    [("mixtral", MIXTRAL_EXPERT, 1.5, "outputs:text"), ("mixtral", MIXTRAL_ROUTER, 3.0, "outputs:text"),
     ("vit", VIT_QUERY, 1.5, "outputs:image")],
    ids=["mixtral-expert", "mixtral-router", "vit-query"],
)
def test_damage_to_renamed_and_fused_tensors_reaches_the_outputs(
    tmp_path: Path, builder: str, name: str, factor: float, probe: str
) -> None:
    """transformers 5 stacks Mixtral's experts into one tensor and renames ViT's attention on load:
    the model under test is built from the output through that loading, so damage there shows."""
    from tests import models

    source = getattr(models, builder)(tmp_path / "src")
    # keep: exact limits (float16 with pinned routing: tests/test_routing.py).
    out = streamconv.convert(source, tmp_path / "out", dtype="keep").output_dir
    clean = validate(out)
    assert clean.passed, clean.table()
    assert clean.check("model-tensors").figures["unused"] == 0
    damage_output(out, lambda arrays, sources: arrays.update({name: arrays[name] * factor}), tmp_path / "scratch")
    failed = _failed(validate(out))
    assert {"weights", probe} <= set(failed), failed
    assert "model-tensors" not in failed and name in failed["weights"]


@pytest.mark.parametrize(
    "options", [{"max_seq_length": 48, "pooling": "mean"}, {"normalize_first": True}], ids=["length-48", "normalize-dense"]
)
def test_sentence_transformers_probe_follows_length_and_module_order(tmp_path: Path, options: dict) -> None:
    from tests import models

    source = models.sentence_transformer(tmp_path / "src", **options)
    out = streamconv.convert(source, tmp_path / "out").output_dir
    report = validate(out)
    assert report.passed, report.table()
    names = [c.name for c in report.checks]
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        assert "probe:embedding" not in names
    else:  # its own encode agrees with the probe on the original weights
        assert report.check("probe:embedding").figures["nmse"] <= 1e-6


def test_wrong_source_is_one_failed_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests import models

    out = streamconv.convert(models.sentence_transformer(tmp_path / "st"), tmp_path / "out").output_dir
    clip = models.clip(tmp_path / "clip")
    report = validate(out, source=clip)
    assert [c.name for c in report.checks] == ["source"] and not report.passed
    assert "model_type 'clip'" in report.checks[0].detail and "'bert'" in report.checks[0].detail
    assert main(["validate", str(out), "--source", str(clip)]) == 6
    shown = capsys.readouterr()
    assert "FAIL source:" in shown.out and "unexpected" not in shown.out + shown.err
    wider = tmp_path / "wider"
    import transformers

    transformers.BertModel(transformers.BertConfig(
        vocab_size=models.VOCAB, max_position_embeddings=64, hidden_size=48, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=37)).save_pretrained(wider)
    detail = validate(out, source=wider).checks[0].detail
    assert "is not the source of this output" in detail and "have other shapes there" in detail


def test_no_fitting_probe_says_why_in_one_line() -> None:
    import torch

    from streamconv.plans.model_inputs import input_probes
    from streamconv.plans.probes import ProbeContext

    class VideoModel(torch.nn.Module):
        main_input_name = "pixel_values_videos"

        def forward(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
            return pixel_values_videos

    probes, why = input_probes(ProbeContext(torch, VideoModel(), Path("."), {}))
    assert probes == [] and "\n" not in why
    assert "main input is 'pixel_values_videos'" in why and "requires pixel_values_videos" in why


def test_generation_config_travels_into_output_and_export(tmp_path: Path) -> None:
    from tests import models
    from tests.models import write_json

    source = models.llama_bf16(tmp_path / "src")
    write_json(source / "generation_config.json", {"eos_token_id": [2, 7], "max_new_tokens": 20})
    out = streamconv.convert(source, tmp_path / "out").output_dir
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, 7]
    exported = streamconv.export(out, tmp_path / "hf")
    assert json.loads((exported.target / "generation_config.json").read_text())["eos_token_id"] == [2, 7]


@pytest.mark.parametrize(("budget", "started"), [(1024 * 1024, 1), (None, 2)], ids=["budget-1MiB", "default"])
def test_reader_starts_no_tensor_past_its_budget_while_one_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int | None, started: int
) -> None:
    """validate's memory: when the first tensor is handed out, the next has not been allocated if it
    would take the read-ahead past READ_AHEAD_BYTES; small ones still decode ahead (the default)."""
    from safetensors.numpy import save_file

    from streamconv.format import reader, toc

    rng = np.random.default_rng(0)  # random float32: incompressible, each tensor spans row groups
    (tmp_path / "src").mkdir()
    save_file({f"t{i}": rng.standard_normal(1024 * 1024).astype(np.float32) for i in range(3)},
              tmp_path / "src" / "model.safetensors")
    out = streamconv.convert(tmp_path / "src", tmp_path / "out", dtype="keep").output_dir
    if budget is not None:
        monkeypatch.setattr(reader, "READ_AHEAD_BYTES", budget)
    takes = []
    real = toc.Recycler.take
    monkeypatch.setattr(toc.Recycler, "take", lambda self, count, dtype: takes.append(count) or real(self, count, dtype))
    records = reader.iter_tensors(out)
    first = next(records)
    assert first.name == "t0" and len(takes) == started
    assert [r.name for r in records] == ["t1", "t2"] and len(takes) == 3
