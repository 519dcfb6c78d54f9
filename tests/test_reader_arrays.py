"""Where the reader decodes to: an array handed out is reused only once nothing refers to it."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pytest

import streamconv
from streamconv.format.recycler import RECYCLE_AHEAD, RECYCLE_BYTES, Recycler
from tests.conftest import write_safetensors

F16 = np.dtype(np.float16)


def test_an_array_is_reused_once_nothing_refers_to_it() -> None:
    nbytes = 2 * RECYCLE_BYTES
    arrays = Recycler([nbytes] * 4)
    first = arrays.take(nbytes // 2, F16)
    memory = weakref.ref(first.base)
    view = first[::3]
    del first
    second = arrays.take(nbytes // 2, F16)
    assert second.base is not memory()  # the view still refers to it
    del view
    third = arrays.take(nbytes // 4, np.dtype(np.float32))
    assert third.base is memory() and third.dtype == np.float32 and third.size == nbytes // 4


def test_an_array_no_tensor_soon_needs_is_let_go() -> None:
    nbytes = 2 * RECYCLE_BYTES
    arrays = Recycler([nbytes, *[8] * RECYCLE_AHEAD, nbytes])
    first = arrays.take(nbytes // 2, F16)
    memory = weakref.ref(first.base)
    del first
    assert memory() is None


@pytest.fixture
def same_size_tensors(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Six float16 tensors of 1 MiB, each in several chunks and row groups."""
    rng = np.random.default_rng(0)
    tensors = {f"t{i}": rng.standard_normal((512, 1024)).astype(np.float16) for i in range(6)}
    write_safetensors(tmp_path / "m" / "model.safetensors", tensors)
    pieces = streamconv.chunk(streamconv.open_checkpoint(tmp_path / "m"), chunk_size=1 << 18)
    with streamconv.WeightsWriter(tmp_path / "w.parquet", row_group_bytes=1) as writer:
        writer.write(streamconv.cast(pieces, "keep"))
    return tmp_path / "w.parquet", tensors


def test_tensors_dropped_or_held_read_back_whole(same_size_tensors) -> None:
    path, tensors = same_size_tensors
    for name, array in streamconv.iter_tensors(path):
        assert np.array_equal(array, tensors[name]), name
    held = [(name, array[1:, ::2]) for name, array in streamconv.iter_tensors(path)]  # views only
    for name, view in held:
        assert np.array_equal(view, tensors[name][1:, ::2]), name
    loaded = streamconv.load(path)
    assert all(np.array_equal(loaded[name], tensor) for name, tensor in tensors.items())
