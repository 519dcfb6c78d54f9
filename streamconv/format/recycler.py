"""Arrays for whole tensors that the reader reuses once the caller has dropped them (see :class:`Recycler`)."""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["RECYCLE_AHEAD", "RECYCLE_BYTES", "Recycler"]

#: Arrays smaller than this come from malloc's heap, which reuses freed memory already.
RECYCLE_BYTES = 1 << 20
#: How many tensors ahead :class:`Recycler` looks for one that could reuse a dropped array.
RECYCLE_AHEAD = 16


class Recycler:
    """Arrays for whole tensors, reusing a tensor's array for a later one of the same byte size once
    nothing else in the process refers to it (its reference count says so).

    ``iter_tensors``' caller typically drops each tensor before asking for the next; without this
    every tensor is decoded into memory fresh from the kernel, which here costs almost as much as
    decoding (llama-bf16: 1.7 s of kernel time against the decode floor's 0.3 s, on 2.1 s of
    decoding; the floor reuses its buffers). An array is kept only while one of the next
    :data:`RECYCLE_AHEAD` tensors has its size: a model's layers repeat their sizes, so what is kept
    is at most about a layer, never the model. ``take`` is called in the order ``sizes`` lists.
    """

    def __init__(self, sizes: list[int]) -> None:
        self.sizes, self.taken = sizes, 0
        self.kept: dict[int, list[np.ndarray]] = {}

    def take(self, count: int, dtype: np.dtype) -> np.ndarray:
        """An array of ``count`` elements of ``dtype``, contents undefined."""
        nbytes = count * dtype.itemsize
        self.taken += 1
        soon = {n for n in self.sizes[self.taken:self.taken + RECYCLE_AHEAD] if n >= RECYCLE_BYTES}
        kept = self.kept.pop(nbytes, [])
        free = next((i for i in range(len(kept)) if sys.getrefcount(kept[i]) == _UNSHARED), None)
        buffer = kept.pop(free) if free is not None else np.empty(nbytes, np.uint8)
        self.kept = {n: arrays for n, arrays in self.kept.items() if n in soon}
        if nbytes in soon:  # the last few: a caller holding every tensor must not make this quadratic
            self.kept[nbytes] = [*kept, buffer][-RECYCLE_AHEAD:]
        return buffer.view(dtype)


def _unshared() -> int:
    """What ``sys.getrefcount(items[i])`` says of an array that only the list ``items`` holds."""
    items = [np.empty(0)]
    return sys.getrefcount(items[0])


_UNSHARED = _unshared()
