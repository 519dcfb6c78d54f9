"""SHA-256 of a file while another part of the process writes it, on a thread of its own.

Arrow writes the Parquet file natively, straight to its descriptor, and never seeks back. The
hashing thread follows it through a second descriptor: each time the writer says the file has grown
(after a row group, and once at the end) it hashes everything up to the file's current size (data
a ``write`` has returned from is visible to other descriptors up to ``st_size``), in the page
cache where it lies, through a read-only mapping. The writer's thread spends no time on the hash
and none of Arrow's buffers ever passes through Python.

The writer tells the thread through a :class:`queue.SimpleQueue`, never through a lock or a
condition it holds: ``SimpleQueue.put`` is one C call, which a Ctrl-C cannot cut in half. (A
``threading.Condition`` notified from the main thread could be: an interrupt between releasing
the waiter and removing it from the waiters left a stale waiter behind, the next ``notify`` woke
that one instead of the hashing thread, and joining the thread then waited forever; issue 16.)
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import threading
from pathlib import Path

__all__ = ["ABANDON_WAIT", "FileHasher"]

# The hasher maps and hashes this much at a time (a few milliseconds), and between two steps sees
# whether it was abandoned.
_STEP = 4 * 1024 * 1024
#: Seconds :meth:`FileHasher.abandon` waits for the thread to stop; it is a daemon, so one still
#: running then (a step held up by a slow disk) never keeps the process alive.
ABANDON_WAIT = 0.5
# What the writer tells the thread, in increasing order of precedence.
_GROWN, _FINAL, _ABANDON = 0, 1, 2


class FileHasher:
    """Keeps the SHA-256 of a file that is being appended to.

    The output's checksum is then known when the writer closes, instead of reading the whole file
    back once it is written (that re-read was 9% of a BERT-large conversion).

    Args:
        path: The file, already created; the writer only appends to it.
    """

    def __init__(self, path: Path) -> None:
        self._digest = hashlib.sha256()
        self._events: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._abandoned = False  # read by the thread between steps: a plain attribute, no lock
        self._error: BaseException | None = None
        reader = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._thread = threading.Thread(target=self._run, args=(reader,), name="streamconv-sha256", daemon=True)
        try:
            self._thread.start()
        except BaseException:
            os.close(reader)
            raise

    def grown(self) -> None:
        """Say the file has grown: the hasher reads up to its current size."""
        self._events.put(_GROWN)

    def hexdigest(self) -> str:
        """Once the writer has closed the file: hash up to its end and return the digest.

        An interrupt while it waits is raised here; the writer then calls :meth:`abandon`.
        """
        self._events.put(_FINAL)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._digest.hexdigest()

    def abandon(self) -> None:
        """Stop the hasher without a digest (the file is being discarded); safe to repeat.

        Waits at most :data:`ABANDON_WAIT` seconds for the thread, which stops at its next step.
        """
        self._abandoned = True
        self._events.put(_ABANDON)
        self._thread.join(ABANDON_WAIT)

    def _run(self, reader: int) -> None:
        try:
            self._hash(reader)
        except BaseException as error:  # re-raised on the writer's thread by hexdigest
            self._error = error
        finally:
            os.close(reader)  # by the thread, never under it: abandon may return while it runs

    def _hash(self, reader: int) -> None:
        done = 0
        while True:
            event = self._events.get()
            while not self._events.empty():  # several growths told while the last step ran: one look
                event = max(event, self._events.get_nowait())
            if event == _ABANDON or self._abandoned:
                return
            size = os.fstat(reader).st_size  # what the writer's `write` calls have returned
            while done < size:
                if self._abandoned:
                    return
                done = _hash_range(self._digest, reader, done, min(size, done + _STEP))
            if event == _FINAL:
                return


def _hash_range(digest: hashlib._Hash, reader: int, start: int, stop: int) -> int:
    # Hashed where the page cache holds it, through a read-only mapping: no copy into a buffer.
    base = start - start % mmap.ALLOCATIONGRANULARITY
    with (
        mmap.mmap(reader, stop - base, prot=mmap.PROT_READ, offset=base) as mapped,
        memoryview(mapped) as view,
    ):
        digest.update(view[start - base :])  # releases the GIL
    return stop
