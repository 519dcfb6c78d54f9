"""How one chunk's elements become the bytes of the Parquet ``data`` column, and back.

Format version 1 (docs/format.md): the chunk's little-endian element bytes are split into byte
planes (plane ``j`` holds byte ``j`` of every element, planes in order 0..itemsize-1), then the
planes, concatenated, are compressed as one zstd frame (with content size and checksum, a block
boundary after each plane), or stored as they are for compression ``none``. Splitting puts the exponent bytes of floats side by side,
which zstd's entropy coder compresses far better than interleaved bytes.
"""

from __future__ import annotations

import threading

import numpy as np
import zstandard

__all__ = ["encode", "decode", "split_planes", "join_planes"]

_local = threading.local()


def split_planes(data: np.ndarray) -> np.ndarray:
    """The byte planes of a 1-D array, as one contiguous ``uint8`` array of ``itemsize * n``."""
    data = np.ascontiguousarray(data)
    if data.dtype.itemsize == 1:
        return data.view(np.uint8)
    return np.ascontiguousarray(data.view(np.uint8).reshape(-1, data.dtype.itemsize).T).reshape(-1)


def join_planes(planes: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`split_planes`: a 1-D array of ``dtype``."""
    itemsize = dtype.itemsize
    if itemsize == 1:
        return planes.view(dtype)
    return np.ascontiguousarray(planes.reshape(itemsize, -1).T).view(dtype).reshape(-1)


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # A ZstdCompressor must not be shared between threads; keep one per thread and level.
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_checksum=True)
    return cache[level]


def encode(data: np.ndarray, compression: str, level: int) -> bytes:
    """Encode a chunk's elements: byte-plane split, then zstd (or nothing for ``none``).

    The planes go into one zstd frame, with a block boundary at the end of each plane so that no
    block (and so no entropy table) mixes two planes: on MiniLM in fp16 that is 0.7% smaller than
    one unbroken frame and within 0.2% of the planes' order-0 entropy.
    """
    planes = split_planes(data)
    if compression == "none":
        return planes.tobytes()
    stream = _compressor(level).compressobj(size=planes.size)
    parts = []
    for plane in planes.reshape(data.dtype.itemsize, -1):
        parts.append(stream.compress(plane.data))
        parts.append(stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
    parts.append(stream.flush())
    return b"".join(parts)


def decode(payload: bytes, dtype: np.dtype, count: int, compression: str) -> np.ndarray:
    """Decode one ``data`` value back into ``count`` elements of ``dtype``."""
    raw = payload if compression == "none" else zstandard.ZstdDecompressor().decompress(payload)
    if len(raw) != count * dtype.itemsize:
        raise ValueError(f"chunk holds {len(raw)} bytes, expected {count * dtype.itemsize}")
    return join_planes(np.frombuffer(raw, dtype=np.uint8), dtype)
