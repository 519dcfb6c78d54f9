"""Defaults shared by every layer: option choices and bounds, worker thread counts.

The dtype facts live in :mod:`streamconv.dtypes`; the on-disk names and version in
:mod:`streamconv.format.schema`; progress-bar policy and its environment variables in
:mod:`streamconv.progress`; size strings in :mod:`streamconv.units`; the worker threads themselves in
:mod:`streamconv.workers`.
"""

from __future__ import annotations

import os

from streamconv.errors import InvalidOptionError

#: Values accepted by ``dtype``: a float target, ``int8`` (weight matrices as int8 codes with
#: float16 block scales, other floating tensors float16: streamconv.stages.quantize), or ``keep``.
DTYPE_CHOICES = ("float16", "bfloat16", "float32", "int8", "keep")
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
#: Largest chunk size accepted, and the largest chunk a reader accepts from a weights file without a
#: ``metadata.json`` recording its chunk size: a declared chunk is refused before anything is allocated.
MAX_CHUNK_BYTES = 256 * 1024 * 1024

#: Hub sources read by ranges (streamconv.sources.remote): the bytes fetched ahead of what the
#: writer has consumed, the largest single request, the gap between two kept ranges of a file
#: that is fetched rather than asked for separately, and the retries of a transfer that makes no
#: progress (waiting HUB_RETRY_WAIT seconds, doubled each time, at most 8x).
HUB_READ_AHEAD_BYTES = 16 * 1024 * 1024
HUB_SEGMENT_BYTES = 4 * 1024 * 1024
HUB_MERGE_GAP = 256 * 1024
#: Largest range one request asks for: segments that follow each other without a gap share a
#: request (each request costs ~1-2 ms of CPU on both ends; CLIP's vision tower was 111 of them).
HUB_REQUEST_BYTES = 64 * 1024 * 1024
#: Requests the read-ahead keeps in flight at once. Two were measured (benchmarks/hub.py, loopback): no
#: faster on CLIP, 10% on the sharded bf16 model, and 15-20 MiB more peak RSS, over the 160 MiB target;
#: measured again once hashing moved off the fetching thread, no faster either. With more than one,
#: the threads take segments in turn, so a segment rarely continues its thread's request.
HUB_CONNECTIONS = 1
#: Bytes httpcore2 asks its socket for at a time (its own default: 64 KiB). Every read takes the GIL
#: again beside the encoding threads; 1 MiB reads took the reading thread's CPU from 0.78 s to 0.46 s
#: for CLIP's 351 MB (benchmarks/hub.py, loopback).
HUB_RECV_BYTES = 1024 * 1024
HUB_RETRIES = 5
HUB_RETRY_WAIT = 0.5

#: Worker threads that read, cast and compress chunks; zstd and numpy release the GIL.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
#: More threads than this only cost memory (each holds a chunk and its stack).
MAX_WORKERS = 256


# --- the bounds of the options every layer takes: checked here, and only here ---


def check_dtype(dtype: str) -> None:
    """Refuse a ``dtype`` that is not one of :data:`DTYPE_CHOICES`."""
    if dtype not in DTYPE_CHOICES:
        raise InvalidOptionError(f"{{dtype=}} is not a dtype; choose one of {', '.join(DTYPE_CHOICES)} "
                                 f"(or {', '.join(DTYPE_ALIASES)})", "dtype", dtype=dtype)


def check_codec(compression: str, level: int | None) -> None:
    """Refuse an unknown ``compression``, a level outside zstd's, and a level with no compression."""
    if compression not in COMPRESSION_CHOICES:
        raise InvalidOptionError(f"{{compression=}} is not a codec; choose one of {', '.join(COMPRESSION_CHOICES)}",
                                 "compression", compression=compression)
    if level is not None and compression == "none":
        raise InvalidOptionError("{level=} has no effect with {compression=none}; drop {level}, or use {compression=zstd}",
                                 "level", level=level)
    if level is not None and level not in ZSTD_LEVELS:
        raise InvalidOptionError(f"{{level=}} is outside zstd's levels; choose {ZSTD_LEVELS.start} to {ZSTD_LEVELS.stop - 1}",
                                 "level", level=level)


def check_chunk_size(chunk_size: int) -> None:
    """Refuse a chunk smaller than one byte or larger than :data:`MAX_CHUNK_BYTES`."""
    if chunk_size < 1:
        raise InvalidOptionError("{chunk_size=} must be at least 1 byte", "chunk_size", chunk_size=chunk_size)
    if chunk_size > MAX_CHUNK_BYTES:
        raise InvalidOptionError(f"{{chunk_size=}} is over the largest chunk, {MAX_CHUNK_BYTES // 2**20} MiB; "
                                 "choose a smaller one (row groups are about 1 MiB: larger chunks gain nothing)",
                                 "chunk_size", chunk_size=chunk_size)


def check_workers(workers: int) -> None:
    """Refuse a thread count outside 1 to :data:`MAX_WORKERS`."""
    if not 1 <= workers <= MAX_WORKERS:
        raise InvalidOptionError(f"{{workers=}} must be between 1 and {MAX_WORKERS}", "workers", workers=workers)
