"""Defaults shared by every layer: option choices and bounds, worker threads.

The dtype facts live in :mod:`streamconv.dtypes`; the on-disk names and version in
:mod:`streamconv.format.schema`; progress-bar policy and its environment variables in
:mod:`streamconv.progress`; size strings in :mod:`streamconv.units`.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar, cast

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

#: Stack of each worker thread streamconv starts (encode, decode, verify). Python's default is the
#: process's RLIMIT_STACK, usually 8 MiB, all of it counted by RLIMIT_DATA; the workers run numpy,
#: zstd and xxhash, which need little stack (docs/reliability.md, "Memory").
THREAD_STACK_SIZE = 1 << 20
_STACK_LOCK = threading.Lock()
T = TypeVar("T")


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


class Answer(Generic[T]):
    """The result of one :class:`DaemonWorkers` job, to be waited for with :meth:`get`."""

    __slots__ = ("_box",)

    def __init__(self) -> None:
        self._box: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()

    def get(self) -> T:
        """Wait for the job and return its result, or raise what it raised."""
        ok, value = self._box.get()
        if not ok:
            raise value
        return cast(T, value)


class DaemonWorkers:
    """Daemon threads that run jobs, told and answered through :class:`queue.SimpleQueue` alone.

    For a thread that may be interrupted (the main thread under Ctrl-C or SIGTERM) while it waits on
    them: ``SimpleQueue.put`` and ``get`` are single C calls, which a signal cannot cut in half.
    ``ThreadPoolExecutor`` waits on Python ``threading.Condition`` objects (a ``Future``'s, its
    semaphore's), and an interrupt in one of their methods can leave the lock taken: the future's
    ``result()`` then ended in "cannot release un-acquired lock", or a worker waited forever (issue
    16). The threads are daemons (never joined at exit) with :data:`THREAD_STACK_SIZE` of stack;
    after :meth:`close` they skip the jobs still queued.

    Args:
        count: Threads.
        name: Their name prefix.
    """

    def __init__(self, count: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[Any], Any], Any, Answer[Any]] | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(count)]
        with _STACK_LOCK:
            previous = threading.stack_size(THREAD_STACK_SIZE)
            try:
                for thread in self._threads:
                    thread.start()
            finally:
                threading.stack_size(previous)

    def submit(self, fn: Callable[[Any], T], arg: Any) -> Answer[T]:
        """Queue ``fn(arg)``; its :class:`Answer`."""
        answer: Answer[T] = Answer()
        self._jobs.put((fn, arg, answer))
        return answer

    def close(self, wait: bool) -> None:
        """Stop the threads: at once (jobs still queued are skipped), or with ``wait`` once every
        queued job has run."""
        if not wait:
            self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, arg, answer = job
            if self._closed:
                continue
            try:
                result = (True, fn(arg))
            except BaseException as error:  # raised again by Answer.get, in the waiting thread
                result = (False, error)
            answer._box.put(result)
            del job, arg, result  # the piece and its payload are not kept alive by an idle thread
