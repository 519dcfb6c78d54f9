"""SHA-256 of a file while another part of the process writes it, on a thread of its own.

Arrow writes the Parquet file natively, straight to its descriptor, and never seeks back. The
hashing thread follows it through a second descriptor: each time the writer says the file has grown
(after a row group, and once at the end) it hashes everything up to the file's current size (data
a ``write`` has returned from is visible to other descriptors up to ``st_size``), in the page
cache where it lies, through a read-only mapping. The writer's thread spends no time on the hash
and none of Arrow's buffers ever passes through Python.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from pathlib import Path

__all__ = ["FileHasher"]

# The hasher maps and hashes this much at a time.
_STEP = 4 * 1024 * 1024


class FileHasher:
    """Keeps the SHA-256 of a file that is being appended to.

    The output's checksum is then known when the writer closes, instead of reading the whole file
    back once it is written (that re-read was 9% of a BERT-large conversion).

    Args:
        path: The file, already created; the writer only appends to it.
    """

    def __init__(self, path: Path) -> None:
        self._digest = hashlib.sha256()
        self._reader = os.open(path, os.O_RDONLY)
        self._grown = False  # the file may have grown since the hasher last looked
        self._final = False  # the writer has closed the file (or it is being abandoned)
        self._abandoned = False
        self._error: BaseException | None = None
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._hash, name="streamconv-sha256", daemon=True)
        self._thread.start()

    def grown(self) -> None:
        """Say the file has grown: the hasher reads up to its current size."""
        with self._wake:
            self._grown = True
            self._wake.notify()

    def hexdigest(self) -> str:
        """Once the writer has closed the file: hash up to its end and return the digest."""
        with self._wake:
            self._final = True
            self._wake.notify()
        self._stop()
        if self._error is not None:
            raise self._error
        return self._digest.hexdigest()

    def abandon(self) -> None:
        """Stop the hasher without a digest (the file is being discarded); safe to repeat."""
        with self._wake:
            self._final = self._abandoned = True
            self._wake.notify()
        self._stop()

    def _stop(self) -> None:
        self._thread.join()
        if self._reader >= 0:
            os.close(self._reader)
            self._reader = -1

    def _hash(self) -> None:
        done = 0
        try:
            while True:
                with self._wake:
                    while not (self._grown or self._final):
                        self._wake.wait()
                    self._grown = False
                    final, abandoned = self._final, self._abandoned
                if abandoned:
                    return
                size = os.fstat(self._reader).st_size  # what the writer's `write` calls have returned
                while done < size and not self._abandoned:
                    done = self._hash_range(done, min(size, done + _STEP))
                if final:
                    return
        except BaseException as error:  # re-raised on the writer's thread by hexdigest
            self._error = error

    def _hash_range(self, start: int, stop: int) -> int:
        # Hashed where the page cache holds it, through a read-only mapping: no copy into a buffer.
        base = start - start % mmap.ALLOCATIONGRANULARITY
        with (
            mmap.mmap(self._reader, stop - base, prot=mmap.PROT_READ, offset=base) as mapped,
            memoryview(mapped) as view,
        ):
            self._digest.update(view[start - base :])  # releases the GIL
        return stop
