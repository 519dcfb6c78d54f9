"""Chunks are values: memory while writing is bounded by the writer's queue, not by the model."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

import streamconv
from tests.conftest import write_safetensors

TOTAL_BYTES = 200 * 1024 * 1024  # float32 source: 200 MiB, written as float16


def _peak_while_writing(folder: Path, tensors: int) -> int:
    rows = TOTAL_BYTES // 4 // tensors // 256
    rng = np.random.default_rng(tensors)
    block = rng.standard_normal((rows, 256)).astype(np.float32)  # one array reused: the file is what is big
    write_safetensors(folder / "model.safetensors", {f"t{i}": block for i in range(tensors)})
    refs = streamconv.open_checkpoint(folder).tensors
    chunks = streamconv.cast(streamconv.chunk(refs, chunk_size=1 << 20), "float16")
    del block
    tracemalloc.start()
    try:
        with streamconv.WeightsWriter(folder / "w.parquet", workers=2) as writer:
            summary = writer.write(chunks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.tensor_count == tensors
    return peak


def test_peak_does_not_grow_with_the_number_of_tensors(tmp_path: Path) -> None:
    few = _peak_while_writing(tmp_path / "few", 25)
    many = _peak_while_writing(tmp_path / "many", 400)
    # numpy reports its buffers to tracemalloc: what is alive at once is the queue's chunks.
    assert many < 1.5 * few + (2 << 20)
    assert few < 64 << 20 < TOTAL_BYTES
