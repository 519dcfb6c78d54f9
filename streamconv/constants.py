"""Defaults and names shared by the pipeline: format version, file names, option choices.

The dtype facts live in :mod:`streamconv.dtypes`; progress-bar policy and its environment
variables in :mod:`streamconv.progress`; size strings in :mod:`streamconv.units`.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

#: Version of the output layout written by this package (see docs/format.md). Readers accept
#: every version up to this one.
FORMAT_VERSION = 3
WEIGHTS_FILENAME = "weights.parquet"
METADATA_FILENAME = "metadata.json"

#: Values accepted by ``dtype``: a float target, or ``keep`` for the source dtype.
DTYPE_CHOICES = ("float16", "bfloat16", "float32", "keep")
DEFAULT_DTYPE = "float16"
#: Values accepted by ``export``'s ``dtype``.
EXPORT_DTYPES = ("keep", "float16", "float32")
#: Other spellings of the float dtypes (llama.cpp's and optimum's), accepted wherever a dtype is.
DTYPE_ALIASES = {"fp16": "float16", "f16": "float16", "bf16": "bfloat16", "fp32": "float32", "f32": "float32"}


def canonical_dtype(name: object) -> object:
    """``name`` with an alias (``fp16``, ``bf16``...) replaced by its dtype name; anything else as given."""
    return DTYPE_ALIASES.get(name.lower(), name) if isinstance(name, str) else name


COMPRESSION_CHOICES = ("zstd", "none")
DEFAULT_COMPRESSION = "zstd"
ZSTD_LEVELS = range(-7, 23)

#: Largest number of source bytes one chunk (one Parquet row) holds.
DEFAULT_CHUNK_SIZE = 2 * 1024 * 1024

#: Worker threads that read, cast and compress chunks; zstd and numpy release the GIL.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)

#: Stack of each worker thread streamconv starts (encode, decode, verify). Python's default is the
#: process's RLIMIT_STACK, usually 8 MiB, all of it counted by RLIMIT_DATA; the workers run numpy,
#: zstd and xxhash, which need little stack (docs/reliability.md, "Memory").
THREAD_STACK_SIZE = 1 << 20
_STACK_LOCK = threading.Lock()


class WorkerPool(ThreadPoolExecutor):
    """A thread pool whose threads get :data:`THREAD_STACK_SIZE` of stack.

    ``threading.stack_size`` is process-wide: it is set only while the pool starts a thread and
    restored at once (a thread another part of the program starts in that instant gets it too).
    """

    def _adjust_thread_count(self) -> None:
        with _STACK_LOCK:
            previous = threading.stack_size(THREAD_STACK_SIZE)
            try:
                super()._adjust_thread_count()
            finally:
                threading.stack_size(previous)
