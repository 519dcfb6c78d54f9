"""Weights read straight from the hub by byte ranges, with a bounded read-ahead, and nothing on disk.

A :class:`HubFile` is one weights file at one commit. Its metadata comes from huggingface_hub's own
``get_hf_file_metadata`` on the ``hf_hub_url`` of that commit (a HEAD that stops at the hub's 302
to the CDN, as ``hf_hub_download`` does): the commit must be the resolved one and the size and
LFS sha256 those the repo listing gave. Its bytes come by ``GET`` with ``Range`` through
huggingface_hub's ``get_session`` and ``build_hf_headers``, from the redirect's location. As in
``hf_hub_download``, the token is sent only when that location has the hub's origin (scheme,
host, port); a signed CDN URL gets no ``authorization`` header.

Every response is checked: a 206 must start at the byte asked and name the file's size; a 200 (a
server that ignores ``Range``) must carry the whole file, and the bytes before the range are
skipped; the CDN's ``ETag`` must stay the one first seen. A size or ETag that changes is refused:
the file changed on the hub during the run. A dropped connection, a timeout, a 408/429/5xx is
retried from the byte where it stopped, :data:`~streamconv.constants.HUB_RETRIES` times in a row
without progress, with exponential backoff; then :class:`~streamconv.errors.HubError`.

A 206 is read to its end, so that its connection is kept for the next request (one TCP and TLS
handshake per run, not per range); httpcore2 is asked to read :data:`~streamconv.constants.HUB_RECV_BYTES`
from its socket at a time rather than 64 KiB (a class attribute of its HTTP/1.1 connection, raised once).

The bytes are hashed as they arrive in file order; when every byte of a file went through (the
plan keeps all of it, or the gaps were small enough to be fetched), its sha256 is compared with the
hub's LFS sha256 and the file is listed in ``metadata.json`` as checked.

The read-ahead that fetches a conversion's ranges in the background is
:mod:`streamconv.sources.read_ahead`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np

from streamconv.constants import HUB_RECV_BYTES, HUB_RETRIES, HUB_RETRY_WAIT
from streamconv.errors import CorruptCheckpointError, HubError

__all__ = ["HubFile", "HubStats", "RangeReader", "copy_into"]

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass
class HubStats:
    """What a hub source fetched: bytes, and when the first and last arrived (for the rate)."""

    bytes_fetched: int = 0
    started: float | None = None
    last: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, n: int) -> None:
        with self.lock:
            now = time.perf_counter()
            self.started = now if self.started is None else self.started
            self.last = now
            self.bytes_fetched += n

    def rate(self) -> float:
        """Bytes per second since the first byte arrived."""
        if self.started is None or self.last is None or self.last <= self.started:
            return 0.0
        return self.bytes_fetched / (self.last - self.started)


class RangeReader(Protocol):
    """What serves a file's reads while a read-ahead runs (:mod:`streamconv.sources.read_ahead`)."""

    def read_into(self, file: HubFile, offset: int, view: memoryview) -> None: ...


def copy_into(target: memoryview, data: bytes | memoryview) -> None:
    """``target[:] = data``, the GIL let go of during the copy (numpy does for large arrays; a
    memoryview's assignment holds it), so the encoding threads run meanwhile."""
    np.copyto(np.frombuffer(target, np.uint8), np.frombuffer(data, np.uint8))


def _session() -> Any:
    """huggingface_hub's shared ``httpx2`` client, its HTTP/1.1 connections reading larger pieces."""
    from huggingface_hub.utils import get_session

    try:
        from httpcore2._sync.http11 import HTTP11Connection
    except ImportError:  # another transport: left as it is
        pass
    else:
        if getattr(HTTP11Connection, "READ_NUM_BYTES", HUB_RECV_BYTES) < HUB_RECV_BYTES:
            HTTP11Connection.READ_NUM_BYTES = HUB_RECV_BYTES
    return get_session()


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = urlparse(url)
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    return parsed.scheme, (parsed.hostname or "").lower(), port


class HubFile:
    """One weights file of a hub repo at one commit, read by byte ranges.

    Args:
        repo_id: The repository.
        name: The file's path in the repository.
        commit: The resolved commit every request is pinned to.
        size: Its size as the repo listing reports it.
        sha256: Its LFS sha256 from the listing (``None`` for a file not in LFS: not checked).
        label: How messages name it (the path it would have in the snapshot folder).
        stats: Shared counters of the bytes fetched.
    """

    def __init__(self, repo_id: str, name: str, commit: str, size: int, sha256: str | None, label: Path,
                 stats: HubStats) -> None:
        self.repo_id, self.name, self.commit, self.size, self.sha256 = repo_id, name, commit, size, sha256
        self.label = label
        self.stats = stats
        self.reader: RangeReader | None = None
        self._location: str | None = None
        self._headers: dict[str, str] = {}
        self._etag: str | None = None
        self._hasher: Any = hashlib.sha256()
        self._hashed = 0
        self._hash_lock = threading.Lock()
        self._head = b""  # the file's first bytes, fetched ahead by prefetch_header
        self.verified = False

    # --- metadata ---

    def _resolve(self) -> None:
        """HEAD the file at the commit (huggingface_hub's way) and check it against the listing."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(self.repo_id, self.name, revision=self.commit)
        # No retries inside huggingface_hub: _attempts retries, with this module's bounds.
        meta = self._attempts("resolving it", lambda: get_hf_file_metadata(url, retry_on_errors=False))
        if meta.commit_hash is not None and meta.commit_hash != self.commit:
            raise self._changed(f"the hub answers for commit {meta.commit_hash}, not {self.commit}")
        if meta.size is not None and meta.size != self.size:
            raise self._changed(f"the hub now says {meta.size} bytes, the listing said {self.size}")
        if self.sha256 is not None and meta.etag is not None and meta.etag != self.sha256:
            raise self._changed(f"its LFS sha256 is now {meta.etag}, the listing said {self.sha256}")
        headers = build_hf_headers()
        headers["Accept-Encoding"] = "identity"  # the bytes as stored: sizes and ranges are those of the file
        if _origin(meta.location) != _origin(url):
            # A signed CDN URL: the token must not leave the hub (hf_hub_download drops it the same way).
            headers.pop("authorization", None)
        self._location, self._headers = meta.location, headers

    def _changed(self, what: str) -> HubError:
        return HubError(self.label, f"changed on the hub during the run ({what})",
                        "run again once the repository is stable, or pin --revision to a commit")

    # --- bytes ---

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the file's bytes from ``offset``: from the read-ahead if one holds them."""
        if self.reader is not None:
            self.reader.read_into(self, offset, view)
        else:
            self.fetch_into(offset, view)

    def prefetch_header(self) -> None:
        """Fetch the safetensors header now (its 8-byte length, then the header if within the cap
        and the file), for :meth:`read` to serve later; the header is checked where it is parsed."""
        from streamconv.sources.safetensors_header import MAX_HEADER_BYTES

        if self.size < 8:
            return
        prefix = self.read(0, 8)
        length = int.from_bytes(prefix, "little")
        self._head = prefix + self.read(8, length) if length <= min(MAX_HEADER_BYTES, self.size - 8) else prefix

    def read(self, offset: int, n: int) -> bytes:
        """``n`` bytes from ``offset`` (fewer at the end of the file), fetched now unless prefetched."""
        n = max(0, min(n, self.size - offset))
        if offset + n <= len(self._head):
            return self._head[offset:offset + n]
        buffer = bytearray(n)
        self.fetch_into(offset, memoryview(buffer))
        return bytes(buffer)

    def fetch_into(self, offset: int, view: memoryview, *, check: bool = True) -> None:
        """Fetch ``len(view)`` bytes from ``offset`` into ``view``, resuming after failures.

        ``check``: hash them now (see :meth:`feed`); the read-ahead feeds its segments itself, in order.
        """
        filled = 0
        for block in self.stream(offset, offset + len(view)):
            copy_into(view[filled:filled + len(block)], block)
            filled += len(block)
        if check:
            self.feed(offset, view)

    def stream(self, start: int, end: int) -> Generator[bytes, None, None]:
        """The bytes ``[start, end)`` as they arrive, in one request (more after failures, each
        resuming from the byte where the last stopped)."""
        from httpx2 import NetworkError, RemoteProtocolError, TimeoutException
        from huggingface_hub import constants

        if end > self.size or start < 0:
            raise CorruptCheckpointError(self.label, f"bytes [{start}, {end}) lie past the end of the "
                                         f"{self.size}-byte file")
        position, failures = start, 0
        while position < end:
            if self._location is None:
                self._resolve()
            assert self._location is not None
            cause = ""
            try:
                headers = {**self._headers, "Range": f"bytes={position}-{end - 1}"}
                with _session().stream("GET", self._location, headers=headers, follow_redirects=True,
                                          timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
                    skip = self._check(response, position)
                    if skip is None:
                        cause = f"HTTP {response.status_code}"
                        if response.status_code in (401, 403):
                            self._location = None  # an expired signed URL: ask the hub again
                    else:
                        for block in response.iter_bytes():
                            if skip:
                                dropped = min(skip, len(block))
                                block, skip = block[dropped:], skip - dropped
                            block = block[:end - position]
                            if not block:
                                if position >= end:
                                    break
                                continue
                            self.stats.add(len(block))
                            position += len(block)
                            failures = 0
                            yield block
                            if position >= end and response.status_code != 206:
                                break  # the rest of a whole file; a 206 is read to its end, keeping the connection
                        if position < end:
                            cause = "the connection closed early"
            except (TimeoutException, NetworkError, RemoteProtocolError) as exc:
                cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if position >= end:
                return
            failures += 1
            if failures > HUB_RETRIES:
                raise HubError(self.label, f"the transfer failed {failures} times in a row at byte "
                               f"{position} ({cause.splitlines()[0] if cause else 'no data'})")
            time.sleep(min(HUB_RETRY_WAIT * 2 ** (failures - 1), 8 * HUB_RETRY_WAIT))

    def _check(self, response: Any, position: int) -> int | None:
        """Bytes to skip before ``position`` (0 for a 206), or ``None`` to retry; raises if the file changed."""
        status = response.status_code
        if status in _RETRY_STATUS or status in (401, 403):  # 401/403: a signed URL that expired
            return None
        if status == 206:
            content_range = response.headers.get("Content-Range", "")
            try:
                span, total = content_range.removeprefix("bytes ").split("/")
                first = int(span.split("-")[0])
            except ValueError:
                raise HubError(self.label, f"the server answered a range with Content-Range {content_range!r}") from None
            if total != "*" and int(total) != self.size:
                raise self._changed(f"it is now {total} bytes, the hub listed {self.size}")
            if first != position:
                raise HubError(self.label, f"the server answered byte {first} when asked for byte {position}")
            skip = 0
        elif status == 200:  # Range ignored: the whole file comes, skip to the position
            length = response.headers.get("Content-Length")
            if length is not None and int(length) != self.size:
                raise self._changed(f"it is now {length} bytes, the hub listed {self.size}")
            skip = position
        elif status == 416:
            raise self._changed("the server says the range is past its end")
        else:
            raise HubError(self.label, f"the server answered HTTP {status} to a range request")
        etag = response.headers.get("ETag")  # the same size, other bytes
        if etag is not None:
            if self._etag is None:
                self._etag = etag
            elif etag != self._etag:
                raise self._changed(f"its ETag went from {self._etag} to {etag}")
        return skip

    def feed(self, offset: int, data: memoryview | bytes | bytearray) -> None:
        """Hash bytes that continue the file in order; check the sha256 once the last byte is in."""
        if self.sha256 is None:  # nothing to check them against
            return
        with self._hash_lock:
            if offset > self._hashed or offset + len(data) <= self._hashed:
                return
            self._hasher.update(data[self._hashed - offset:])
            self._hashed = offset + len(data)
            if self._hashed == self.size and self.sha256 is not None:
                digest = self._hasher.hexdigest()
                if digest != self.sha256:
                    raise CorruptCheckpointError(
                        self.label, f"the bytes fetched have sha256 {digest}, the hub lists {self.sha256}",
                        "the transfer was damaged or the file changed on the hub: run again")
                self.verified = True

    def _attempts(self, what: str, call: Callable[[], Any]) -> Any:
        from httpx2 import NetworkError, RemoteProtocolError, TimeoutException
        from huggingface_hub.errors import HfHubHTTPError

        for failures in range(1, HUB_RETRIES + 2):
            try:
                return call()
            except (TimeoutException, NetworkError, RemoteProtocolError, HfHubHTTPError) as exc:
                cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if isinstance(exc, HfHubHTTPError) and status not in _RETRY_STATUS:
                    raise HubError(self.label, f"the hub refused {what} ({cause})") from exc
                if failures > HUB_RETRIES:
                    raise HubError(self.label, f"{what} failed {failures} times in a row ({cause})") from exc
                time.sleep(min(HUB_RETRY_WAIT * 2 ** (failures - 1), 8 * HUB_RETRY_WAIT))
        raise AssertionError("unreachable")
