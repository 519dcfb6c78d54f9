"""The read-ahead of a conversion from the hub: its byte ranges fetched in the background, bounded.

:func:`read_ahead` schedules the byte ranges of a conversion's chunks, in the order the writer will
ask for them, merges neighbours (gaps up to :data:`~streamconv.constants.HUB_MERGE_GAP`, and at most
1/16 of what the segment keeps) into segments of at most :data:`~streamconv.constants.HUB_SEGMENT_BYTES`,
and fetches them from background threads (:data:`~streamconv.constants.HUB_CONNECTIONS` requests at a
time; segments that follow each other without a gap share one request of up to
:data:`~streamconv.constants.HUB_REQUEST_BYTES`), at most :data:`~streamconv.constants.HUB_READ_AHEAD_BYTES`
ahead of what the writer consumed. Segments are handed to the writer in order, and hashed in order by a
thread of their own (a segment's budget comes back once it is both read and hashed); the read-ahead
ends by waiting for the last hashes, so a sha256 that does not match fails the conversion before its
output is kept. A range read outside the schedule (a dry run's sample, a second read of a tensor) is
fetched on the spot.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from streamconv.constants import (
    HUB_CONNECTIONS,
    HUB_MERGE_GAP,
    HUB_READ_AHEAD_BYTES,
    HUB_REQUEST_BYTES,
    HUB_SEGMENT_BYTES,
)
from streamconv.sources.remote import HubFile, copy_into

__all__ = ["plan_segments", "read_ahead"]


@dataclass(eq=False)
class _Segment:
    file: HubFile
    start: int
    end: int
    kept: int  # bytes of it the writer will read; it is dropped once they are read
    index: int
    #: The fetched bytes: the response's blocks as they came (no copy), and where each starts in the segment.
    data: list[memoryview] | None = None
    starts: list[int] = field(default_factory=list)
    ready: bool = False  # fetched, and handed to the readers
    hashed: bool = False
    freed: bool = False  # read: its budget is given back once it is hashed too


class _Request:
    """One range request of a file, its bytes handed out a segment's buffer at a time."""

    def __init__(self, file: HubFile, start: int, end: int) -> None:
        self.file, self.position, self.end = file, start, end
        self.blocks = file.stream(start, end)  # resumes by itself after a dropped connection
        self.left = memoryview(b"")

    def continues(self, seg: _Segment) -> bool:
        return seg.file is self.file and seg.start == self.position and seg.end <= self.end

    def take(self, size: int) -> tuple[list[memoryview], list[int]]:
        """The next ``size`` bytes, as views of the blocks they came in (a block that crosses into the
        next segment is shared with it), and where each view starts."""
        pieces, starts, filled = [], [], 0
        while filled < size:
            if not self.left:
                self.left = memoryview(next(self.blocks))
            n = min(len(self.left), size - filled)
            pieces.append(self.left[:n])
            starts.append(filled)
            self.left, filled = self.left[n:], filled + n
        self.position += size
        return pieces, starts

    def close(self) -> None:
        self.blocks.close()  # closes the response (its connection too, if it is not read to its end)


class _ReadAhead:
    def __init__(self, segments: list[_Segment], budget: int) -> None:
        self.segments = segments
        self.budget = budget
        self.by_file: dict[HubFile, tuple[list[int], list[_Segment]]] = {}
        for seg in segments:
            starts, segs = self.by_file.setdefault(seg.file, ([], []))
            at = bisect.bisect(starts, seg.start)
            starts.insert(at, seg.start)
            segs.insert(at, seg)
        # One lock, and a condition per kind of waiter, so that each event wakes only the threads it
        # concerns: every wake-up is a thread that wants the GIL beside the encoding ones.
        self.lock = threading.Lock()
        self.fetchable = threading.Condition(self.lock)  # budget given back, a reader further on, stop
        self.readable = threading.Condition(self.lock)  # a segment handed over, all hashed, an error, stop
        self.hashable = threading.Condition(self.lock)  # a segment to hash, stop
        # Where the request that starts at each segment ends: the segments that follow it in the file
        # without a gap go in the same request, up to HUB_REQUEST_BYTES, filled one after the other
        # as the budget lets (the connection waits meanwhile).
        self.request_end = [seg.end for seg in segments]
        for i in range(len(segments) - 2, -1, -1):
            seg, after = segments[i], segments[i + 1]
            if after.file is seg.file and after.start == seg.end and self.request_end[i + 1] - seg.start <= HUB_REQUEST_BYTES:
                self.request_end[i] = self.request_end[i + 1]
        self.in_flight = 0
        self.next_fetch = 0  # the next segment a fetching thread takes
        self.next_ready = 0  # the next segment to hand to the readers (and the hashing thread), in order
        self.wanted = -1  # the furthest segment a reader waits for
        self.unhashed: deque[tuple[_Segment, list[memoryview]]] = deque()  # handed to the readers, in order
        self.error: BaseException | None = None
        self.hash_error: BaseException | None = None
        self.stopped = False
        self.threads = [threading.Thread(target=self._run, name=f"streamconv-hub-read-ahead-{i}", daemon=True)
                        for i in range(HUB_CONNECTIONS)]
        # Hashing on a thread of its own (hashlib lets go of the GIL): the fetching threads go on
        # receiving meanwhile, and the readers need not wait for it.
        self.threads.append(threading.Thread(target=self._hash, name="streamconv-hub-sha256", daemon=True))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _fail(self, exc: BaseException) -> None:
        with self.lock:
            self.error = exc
            self.readable.notify_all()

    def _claim(self) -> _Segment | None:
        """The next segment to fetch, once the budget has room for it (None: all taken, or stopped)."""
        with self.lock:
            while not self.stopped and self.next_fetch < len(self.segments):
                seg = self.segments[self.next_fetch]
                size = seg.end - seg.start
                if self.in_flight == 0 or self.in_flight + size <= self.budget or self.wanted >= seg.index:
                    break
                self.fetchable.wait()
            if self.stopped or self.next_fetch >= len(self.segments):
                return None
            self.next_fetch += 1
            self.in_flight += size
            return seg

    def _run(self) -> None:
        request: _Request | None = None
        try:
            while (seg := self._claim()) is not None:
                if request is None or not request.continues(seg):
                    if request is not None:
                        request.close()
                    request = _Request(seg.file, seg.start, self.request_end[seg.index])
                # The blocks are kept as they came: no copy here, where every copy is a wait for the GIL.
                pieces, starts = request.take(seg.end - seg.start)
                with self.lock:
                    seg.data, seg.starts = pieces, starts
                    # Hand segments to the readers, and to the hashing thread, in order.
                    while self.next_ready < len(self.segments) and self.segments[self.next_ready].data is not None:
                        ready = self.segments[self.next_ready]
                        assert ready.data is not None
                        ready.ready = True
                        self.unhashed.append((ready, ready.data))
                        self.next_ready += 1
                        self.hashable.notify()
                        self.readable.notify_all()
        except BaseException as exc:  # handed to the readers, raised there
            self._fail(exc)
        finally:
            if request is not None:
                request.close()

    def _hash(self) -> None:
        """Hash each file's fetched bytes in file order (:meth:`HubFile.feed`)."""
        try:
            while True:
                with self.lock:
                    while not self.unhashed and not self.stopped:
                        self.hashable.wait()
                    if self.stopped:
                        return
                    seg, data = self.unhashed[0]
                for start, piece in zip(seg.starts, data, strict=True):
                    seg.file.feed(seg.start + start, piece)
                with self.lock:
                    self.unhashed.popleft()
                    seg.hashed = True
                    if seg.freed:
                        self.in_flight -= seg.end - seg.start
                        self.fetchable.notify_all()
                    if not self.unhashed:
                        self.readable.notify_all()  # for finish()
        except BaseException as exc:  # a sha256 that does not match: raised to the readers and at the end
            with self.lock:
                self.hash_error = exc
            self._fail(exc)

    def _find(self, file: HubFile, position: int) -> tuple[_Segment | None, int]:
        """The live segment holding ``position``, or None and where the next one starts."""
        entry = self.by_file.get(file)
        if entry is None:
            return None, file.size
        starts, segs = entry
        at = bisect.bisect(starts, position) - 1
        if at >= 0 and segs[at].start <= position < segs[at].end and not segs[at].freed:
            return segs[at], segs[at].end
        following = starts[at + 1] if at + 1 < len(starts) else file.size
        return None, following

    def _take(self, file: HubFile, position: int, end: int) -> tuple[memoryview | None, int]:
        """Under the lock: the fetched bytes from ``position`` (at most to ``end``), waiting for them if
        they are scheduled; else None and where the next scheduled segment starts."""
        seg, following = self._find(file, position)
        if seg is None:
            return None, following
        if seg.index > self.wanted:
            self.wanted = seg.index
            self.fetchable.notify_all()
        while not seg.ready and self.error is None and not seg.freed and not self.stopped:
            self.readable.wait()
        if self.error is not None:
            raise self.error
        if not seg.ready or seg.data is None:
            return None, self._find(file, position)[1]  # consumed meanwhile: fetched on the spot
        at = bisect.bisect(seg.starts, position - seg.start) - 1
        piece, inside = seg.data[at], position - seg.start - seg.starts[at]
        n = min(end - position, len(piece) - inside)
        data = piece[inside:inside + n]
        seg.kept -= n
        if seg.kept <= 0:
            self._free(seg)
        return data, n

    def read_into(self, file: HubFile, offset: int, view: memoryview) -> None:
        position, end = offset, offset + len(view)
        while position < end:
            with self.lock:
                data, n = self._take(file, position, end)
            if data is not None:  # copied outside the lock: the memoryview keeps the segment's bytes alive
                copy_into(view[position - offset:position - offset + n], data)
                position += n
                continue
            # Not scheduled (or already consumed): fetch it now, up to the next scheduled segment.
            stop = min(end, max(n, position + 1))
            file.fetch_into(position, view[position - offset:stop - offset])
            position = stop

    def _free(self, seg: _Segment) -> None:
        if seg.data is not None and seg.hashed:
            self.in_flight -= seg.end - seg.start
            self.fetchable.notify_all()
        seg.data, seg.freed = None, True

    def finish(self) -> None:
        """Wait until what the readers were handed is hashed; raise if a sha256 did not match."""
        with self.lock:
            while self.unhashed and self.hash_error is None:
                self.readable.wait()
            if self.hash_error is not None:
                raise self.hash_error

    def close(self) -> None:
        with self.lock:
            self.stopped = True
            for cond in (self.fetchable, self.readable, self.hashable):
                cond.notify_all()
        for thread in self.threads:
            thread.join()
        for seg in self.segments:
            seg.data = None


def plan_segments(ranges: Iterable[tuple[HubFile, int, int]]) -> list[_Segment]:
    """The requests for ``ranges`` (file, start, end), in their order: neighbours in one file merged."""
    segments: list[_Segment] = []
    seen: set[tuple[HubFile, int]] = set()
    for file, start, end in ranges:
        if end <= start or (file, start) in seen:
            continue
        seen.add((file, start))
        last = segments[-1] if segments else None
        gap = start - last.end if last is not None else -1
        # A gap is fetched rather than skipped only when it is small beside what the request keeps
        # (at most 1/16 of it), so the bytes fetched stay within ~6% of the kept ones.
        if (last is not None and last.file is file and 0 <= gap <= min(HUB_MERGE_GAP, (last.kept + end - start) // 16)
                and end - last.start <= HUB_SEGMENT_BYTES):
            last.end, last.kept = end, last.kept + end - start
        else:
            segments.append(_Segment(file, start, end, end - start, len(segments)))
    return segments


@contextmanager
def read_ahead(ranges: Iterable[tuple[HubFile, int, int]], budget: int = HUB_READ_AHEAD_BYTES) -> Iterator[None]:
    """Fetch ``ranges`` (file, absolute start, end) in the background while the body runs.

    Reads of those files inside the body are served from the fetched segments (each dropped once
    read), at most ``budget`` bytes ahead of them; the thread stops when the body ends.
    """
    segments = plan_segments(ranges)
    reader = _ReadAhead(segments, budget)
    files = list(reader.by_file)
    if not segments:
        yield
        return
    for f in files:
        f.reader = reader
    reader.start()
    try:
        yield
        reader.finish()
    finally:
        for f in files:
            f.reader = None
        reader.close()
