"""Per-thread buffers reused from one chunk to the next.

A fresh array of a few MiB per chunk is not free: the allocator often hands back memory it has
just returned to the OS, and every page of it faults again when first touched. Reading a chunk,
checking its cast and decoding it use these instead (on BERT-large, convert took 137,000 page
faults with fresh arrays and 58,000 with these; a fresh bytes object per decoded chunk halved
zstd's speed on 2 threads).
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["thread_buffer"]

_KEEP_AT_MOST = 32 << 20  # larger buffers are not kept between calls
_local = threading.local()


def thread_buffer(name: str, size: int) -> np.ndarray:
    """This thread's ``uint8`` buffer ``name``, of at least ``size`` bytes; its contents are stale.

    The caller must be done with it before it asks for the same name again on the same thread.
    """
    buffer: np.ndarray | None = getattr(_local, name, None)
    if buffer is not None and buffer.size >= size:
        return buffer
    buffer = np.empty(size, np.uint8)
    if size <= _KEEP_AT_MOST:
        setattr(_local, name, buffer)
    return buffer
