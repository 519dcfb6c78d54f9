"""SHA-256 of a file while it is being written, on a thread of its own.

The writer's main thread only says how far the file has reached; a background thread reads that
much back (from the page cache, through a second descriptor, into one reused buffer) and hashes
it. Nothing the writer passes is kept past its ``write`` call, so no buffer of Arrow's is hashed
after Arrow may have reused it, and the main thread no longer spends the hash's time.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import IO

__all__ = ["HashingFile"]

# The hasher is woken once the file has grown by this much; it reads back this much at a time.
_STEP = 4 * 1024 * 1024


class HashingFile:
    """A write-only file that keeps the SHA-256 and size of what went through it.

    The output's checksum is then known when the writer closes, instead of reading the whole file
    back once it is written (that re-read was 9% of a BERT-large conversion).

    Args:
        raw: The file being written (binary, from the start).
        path: Its path, opened again for reading by the hashing thread.
    """

    def __init__(self, raw: IO[bytes], path: Path) -> None:
        self.raw, self.size, self.closed = raw, 0, False
        self._digest = hashlib.sha256()
        self._reader = os.open(path, os.O_RDONLY)
        self._reached = 0  # bytes of the file the OS has (the hasher may read up to here)
        self._final = False
        self._error: BaseException | None = None
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._hash, name="streamconv-sha256", daemon=True)
        self._thread.start()

    def write(self, data: bytes | memoryview) -> int:
        if self.raw.closed:
            # The writer failed or was interrupted and closed the file, which is being deleted; Arrow's
            # buffered stream may still flush into it when destroyed: drop those bytes quietly
            # instead of letting Arrow print an error after our one-line message.
            return len(data)
        written = self.raw.write(data)
        self.size += len(data)
        if self.size - self._reached >= _STEP:
            self._publish(final=False)
        return written

    def flush(self) -> None:
        if not self.raw.closed:
            self.raw.flush()

    def close(self) -> None:
        self.closed = True  # the raw file is closed by its owner

    def hexdigest(self) -> str:
        """Flush, wait for the hasher to reach the end of the file, and return the digest."""
        self._publish(final=True)
        self._stop()
        if self._error is not None:
            raise self._error
        return self._digest.hexdigest()

    def abandon(self) -> None:
        """Stop the hasher without a digest (the file is being discarded); safe to repeat."""
        with self._wake:
            self._final, self._reached = True, 0
            self._wake.notify()
        self._stop()

    def _stop(self) -> None:
        self._thread.join()
        if self._reader >= 0:
            os.close(self._reader)
            self._reader = -1

    def _publish(self, final: bool) -> None:
        self.raw.flush()
        with self._wake:
            self._reached, self._final = self.size, final
            self._wake.notify()

    def _hash(self) -> None:
        buffer = bytearray(_STEP)
        view = memoryview(buffer)
        done = 0
        try:
            while True:
                with self._wake:
                    while done >= self._reached and not self._final:
                        self._wake.wait()
                    reached, final = self._reached, self._final
                while done < reached:
                    n = os.preadv(self._reader, [view[: min(_STEP, reached - done)]], done)
                    if n <= 0:
                        raise OSError(f"the output file ended at {done} bytes, {reached} were written")
                    self._digest.update(view[:n])  # releases the GIL
                    done += n
                if final and done >= reached:
                    return
        except BaseException as error:  # re-raised on the writer's thread by hexdigest
            self._error = error
