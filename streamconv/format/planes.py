"""Byte planes: a chunk's little-endian bytes regrouped so byte ``j`` of every element sits together.

Plane ``j`` holds byte ``j`` of every element, in element order (one-byte dtypes are one plane).
Splitting puts the sign/exponent bytes of floats side by side, where an entropy coder shrinks
them, and leaves the near-random low mantissa bytes together (streamconv.format.codec codes the planes).

The *entropy bound* measured against (benchmarks/codec_choice.py): for each chunk, the sum over
its byte planes of plane length times the order-0 Shannon entropy of that plane's byte
histogram, in bytes; summed over chunks. (docs/benchmarks.md sums the same over whole tensors,
which is at least as large.)
"""

from __future__ import annotations

import numpy as np

from streamconv.buffers import thread_buffer

__all__ = ["entropy_bound", "join_into", "join_planes", "split", "split_planes"]


def split_planes(data: np.ndarray) -> np.ndarray:
    """The byte planes of a 1-D array, as one contiguous ``uint8`` array of ``itemsize * n``."""
    return split(np.ascontiguousarray(data).reshape(-1)).reshape(-1)


def split(data: np.ndarray, scratch: str | None = None) -> np.ndarray:
    """The ``(k, n)`` planes of ``data``, in a new array or the thread's ``scratch`` buffer."""
    k, n = data.dtype.itemsize, data.size
    if k == 1:
        return data.view(np.uint8).reshape(1, n)
    buffer = np.empty(k * n, np.uint8) if scratch is None else thread_buffer(scratch, k * n)
    planes = buffer[:k * n].reshape(k, n)
    if k not in (2, 4):  # shifting wins for 2 and 4 bytes (14 and 6 GB/s against 3.6), not 8
        planes[...] = data.view(np.uint8).reshape(n, k).T
        return planes
    words = data.view(f"<u{k}")
    for j in range(k):
        np.right_shift(words, 8 * j, out=planes[j], casting="unsafe")  # keeps the low byte
    return planes


def join_planes(planes: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`split_planes`: a 1-D array of ``dtype``."""
    dtype = np.dtype(dtype)
    out = np.empty(planes.size // dtype.itemsize, dtype)
    join_into(list(planes.reshape(dtype.itemsize, -1)), out)
    return out


def join_into(planes: list[np.ndarray], out: np.ndarray) -> None:
    """Interleave ``planes`` (each ``out.size`` bytes) into ``out``, writing each byte once."""
    k = len(planes)
    if k == 1:
        np.copyto(out.view(np.uint8), planes[0])
    elif k == 2:  # two vector passes: 10 GB/s against 3.6 for strided byte copies
        words = out.view("<u2")
        np.left_shift(planes[1], 8, out=words, dtype=words.dtype)
        np.bitwise_or(words, planes[0], out=words)
    else:
        grid = out.view(np.uint8).reshape(-1, k)
        for j, plane in enumerate(planes):
            grid[:, j] = plane


def entropy_bound(data: np.ndarray) -> float:
    """The entropy bound of one chunk, in bytes: per byte plane, its length times the order-0
    Shannon entropy of its byte histogram, summed over planes (see the module docstring)."""
    total = 0.0
    for plane in split(np.ascontiguousarray(data).reshape(-1)):
        counts = np.bincount(plane, minlength=256)
        p = counts[counts > 0] / plane.size
        total += float(-(p * np.log2(p)).sum()) * plane.size
    return total / 8
