"""Validation against the original model: it passes on honest conversions and fails on damaged ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import streamconv
from streamconv.validate import validate
from tests.conftest import rewrite_weights


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "keep"])
def test_real_minilm_validates(minilm_path: Path, tmp_path: Path, dtype: str) -> None:
    out = streamconv.convert(minilm_path, tmp_path / "out", dtype=dtype).output_dir
    result = validate(out)
    assert result.passed, [c.detail for c in result.checks]
    names = [c.name for c in result.checks]
    assert names[:2] == ["weights", "outputs:text"]
    outputs = result.checks[1].figures
    if dtype == "keep":
        assert outputs["max_abs_error"] == 0.0
    else:
        assert 0.0 < outputs["max_abs_error"] and outputs["cosine"] > 0.999


def _tamper(out: Path, name: str, tmp_path: Path) -> None:
    """Rewrite the weights with one tensor scaled: a plausible-looking but wrong conversion."""
    records = list(streamconv.iter_tensors(out))
    arrays = {r.name: r.array for r in records}
    arrays[name] = (arrays[name].astype(np.float32) * 1.5).astype(arrays[name].dtype)
    rewrite_weights(out, arrays, {r.name: r.source_name for r in records}, tmp_path)


def test_damaged_conversion_fails(minilm_path: Path, tmp_path: Path) -> None:
    out = streamconv.convert(minilm_path, tmp_path / "out").output_dir
    _tamper(out, "encoder.layer.2.attention.self.value.weight", tmp_path)
    result = validate(out)
    assert not result.passed
    checks = {c.name: c for c in result.checks}
    assert not checks["weights"].passed and "encoder.layer.2.attention.self.value.weight" in checks["weights"].detail
    assert not checks["outputs:text"].passed


def test_cli_validate_exit_codes(minilm_path: Path, tmp_path: Path) -> None:
    out = streamconv.convert(minilm_path, tmp_path / "out").output_dir
    done = subprocess.run([sys.executable, "-m", "streamconv", "validate", str(out), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["passed"] is True
    _tamper(out, "embeddings.word_embeddings.weight", tmp_path)
    done = subprocess.run([sys.executable, "-m", "streamconv", "validate", str(out)], capture_output=True, text=True)
    assert done.returncode == 6
    assert "FAIL weights" in done.stdout and "FAILED" in done.stdout


@pytest.mark.parametrize(
    ("builder", "parts", "probes"),
    [
        ("clip", None, ["outputs:image"]),
        ("clip", ["vision", "text"], ["outputs:image", "outputs:text"]),
        ("clip_vision", None, ["outputs:image"]),
        ("whisper", None, ["outputs:encoder"]),
        ("whisper", ["encoder", "decoder"], ["outputs:encoder", "outputs:decoder"]),
        ("sentence_transformer", None, ["outputs:text"]),
        ("llama_bf16", None, ["outputs:text"]),
    ],
)
def test_tiny_models_validate(tmp_path: Path, builder: str, parts: list[str] | None, probes: list[str]) -> None:
    from tests import models

    source = getattr(models, builder)(tmp_path / "src")
    out = streamconv.convert(source, tmp_path / "out", parts=parts).output_dir
    result = validate(out)
    assert result.passed, [(c.name, c.detail) for c in result.checks]
    assert [c.name for c in result.checks if c.name.startswith("outputs:")] == probes
