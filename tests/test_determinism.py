"""The output does not depend on how many threads encode: same checkpoint, same bytes.

Parquet embeds nothing run-dependent here: no timestamp, and ``created_by`` is the pyarrow
version (the same within one environment); the schema metadata holds the streamconv version.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import ml_dtypes
import numpy as np

import streamconv
from tests.conftest import all_dtype_tensors, write_safetensors


def _checkpoint(folder: Path) -> Path:
    rng = np.random.default_rng(7)
    tensors = all_dtype_tensors()
    # Tensors of several chunks and row groups, small ones between them, a bfloat16 one, a float32
    # one beyond float16's range (kept in float32 with a note).
    tensors["big"] = rng.standard_normal((300, 1000)).astype(np.float32)
    tensors["bf16_big"] = rng.standard_normal((512, 700)).astype(ml_dtypes.bfloat16)
    for i in range(40):
        tensors[f"small.{i}"] = rng.standard_normal(i * 37 + 1).astype(np.float32)
    tensors["wide"] = (rng.standard_normal(5000) * 1e6).astype(np.float32)
    write_safetensors(folder / "model.safetensors", tensors)
    (folder / "config.json").write_text('{"model_type": "tiny-test", "hidden_size": 4}')
    return folder


def _convert(source: Path, out: Path, workers: int) -> bytes:
    streamconv.convert(source, out, dtype="float16", workers=workers, chunk_size=64 * 1024, progress=False)
    return (out / "weights.parquet").read_bytes()


def test_weights_are_byte_identical_for_any_thread_count(tmp_path: Path) -> None:
    source = _checkpoint(tmp_path / "src")
    one = _convert(source, tmp_path / "w1", workers=1)
    three = _convert(source, tmp_path / "w3", workers=3)
    assert hashlib.sha256(one).hexdigest() == hashlib.sha256(three).hexdigest()
    assert one == three
    recorded = streamconv.read_metadata(tmp_path / "w3")
    # The SHA-256 taken while writing is the file's.
    assert recorded["files"] == [{"path": "weights.parquet", "bytes": len(three),
                                  "sha256": hashlib.sha256(three).hexdigest()}]
