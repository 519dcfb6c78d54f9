"""The one thread pool: every pool of jobs streamconv runs (encode, decode, row-group read-ahead,
verify, hub small files). The few long-lived threads of their own (an output's sha256, the hub's
fetchers) are not jobs and start themselves.

Daemon threads told and answered through :class:`queue.SimpleQueue` alone, because the thread that
waits on them may be interrupted (the main thread under Ctrl-C or SIGTERM). ``SimpleQueue.put`` and
``get`` are single C calls, which a signal cannot cut in half. ``ThreadPoolExecutor`` waits on
Python ``threading.Condition`` objects (a ``Future``'s, its semaphore's), and an interrupt in one of
their methods can leave the lock taken: the future's ``result()`` then ended in "cannot release
un-acquired lock", or a worker waited forever (issue 16).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

__all__ = ["THREAD_STACK_SIZE", "Answer", "DaemonWorkers"]

#: Stack of each worker thread. Python's default is the process's RLIMIT_STACK, usually 8 MiB, all
#: of it counted by RLIMIT_DATA; the workers run numpy, zstd and xxhash, which need little stack
#: (docs/reliability.md, "Memory").
THREAD_STACK_SIZE = 1 << 20
_STACK_LOCK = threading.Lock()
T = TypeVar("T")


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
    """Daemon threads (never joined at exit) with :data:`THREAD_STACK_SIZE` of stack that run jobs.

    As a context manager: a normal exit runs every queued job and joins the threads; an error, an
    interrupt or a generator closed early skips the queued jobs and does not wait for the running
    ones. Jobs only read and compute into arrays they are given, which they keep alive, so a job
    left running harms nothing.

    Args:
        count: Threads.
        name: Their name prefix.
    """

    def __init__(self, count: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Answer[Any]] | None] = \
            queue.SimpleQueue()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(count)]
        # threading.stack_size is process-wide: set only while these threads start, then restored
        with _STACK_LOCK:
            previous = threading.stack_size(THREAD_STACK_SIZE)
            try:
                for thread in self._threads:
                    thread.start()
            finally:
                threading.stack_size(previous)

    def submit(self, fn: Callable[..., T], *args: Any) -> Answer[T]:
        """Queue ``fn(*args)``; its :class:`Answer`."""
        answer: Answer[T] = Answer()
        self._jobs.put((fn, args, answer))
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

    def __enter__(self) -> DaemonWorkers:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
                 ) -> None:
        self.close(wait=kind is None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, answer = job
            if self._closed:
                continue
            try:
                result = (True, fn(*args))
            except BaseException as error:  # raised again by Answer.get, in the waiting thread
                result = (False, error)
            answer._box.put(result)
            del job, args, result  # the piece and its payload are not kept alive by an idle thread
