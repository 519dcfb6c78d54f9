"""A loopback Hugging Face hub for the tests and the hub benchmark: 127.0.0.1 only, never the internet.

Two origins on two ports, as on the real hub: the hub itself (``endpoint``, given to huggingface_hub
as ``HF_ENDPOINT``) and a second one standing for the CDN, which serves the large (LFS) files
the hub redirects to. The routes are those huggingface_hub uses:

* ``GET /api/models/{repo}[/revision/{rev}]``: repo info with ``sha`` and ``siblings`` (sizes and
  LFS sha256 with ``?blobs=true``);
* ``GET /api/models/{repo}/tree/{rev}[/{path}]`` and ``POST /api/models/{repo}/paths-info/{rev}``;
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: small files answered at once with ``ETag`` and
  ``X-Repo-Commit``; LFS files a 302 to the CDN origin carrying ``X-Repo-Commit``,
  ``X-Linked-Etag`` and ``X-Linked-Size``;
* the CDN answers ``Range`` with 206 and ``Content-Range``;
* errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``GatedRepo``, ``EntryNotFound``).

Switches (attributes of :class:`HubServer`, changed while it runs): ``drop_after`` / ``drops``
(cut a CDN transfer after so many bytes, so many times), ``ignore_range`` (answer 200 with the
whole file), ``rate`` (bytes per second for all CDN transfers together), ``down`` (the CDN closes
every connection unanswered), ``hook`` (called with each request as it comes, before the answer). :meth:`HubServer.mutate` changes a file's bytes under the same commit.
Every request is logged in ``requests`` (origin, method, path, Range, whether a token came);
:meth:`HubServer.cdn_connections` counts the CDN's connections (kept alive between requests).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

__all__ = ["HubServer", "Logged"]

#: Files at least this large (and every weights file) are LFS: served by the CDN origin.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".h5", ".msgpack")
_BLOCK = 64 * 1024


class Blob:
    """A file's bytes: held in memory, or (for the benchmark's GB checkpoints) read from disk per range."""

    def __init__(self, data: bytes | Path) -> None:
        self.data = data
        self.size = len(data) if isinstance(data, bytes) else data.stat().st_size
        self._sha256: str | None = None
        self._md5: str | None = None

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        end = self.size if end is None else end
        if isinstance(self.data, bytes):
            return self.data[start:end]
        with open(self.data, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    def blocks(self, start: int, end: int) -> Iterator[bytes]:
        if isinstance(self.data, bytes):
            for at in range(start, end, _BLOCK):
                yield self.data[at:min(end, at + _BLOCK)]
            return
        with open(self.data, "rb") as f:
            f.seek(start)
            for at in range(start, end, _BLOCK):
                yield f.read(min(end, at + _BLOCK) - at)

    def _hash(self, name: str) -> str:
        h = hashlib.new(name)
        for block in self.blocks(0, self.size):
            h.update(block)
        return h.hexdigest()

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = self._hash("sha256")
        return self._sha256

    @property
    def git_sha(self) -> str:  # a stand-in for the git blob id: cheap, stable per content
        if self._md5 is None:
            self._md5 = self._hash("md5")
        return self._md5 + "00000000"


@dataclass
class _Repo:
    commits: dict[str, dict[str, Blob]]  # commit sha -> path -> bytes
    refs: dict[str, str]  # branch or tag -> commit sha
    gated: bool = False


@dataclass(frozen=True)
class Logged:
    origin: str  # "hub" or "cdn"
    method: str
    path: str
    range: str | None
    token: bool


@dataclass
class HubServer:
    """The two loopback servers; use as a context manager (``with HubServer() as hub``)."""

    token: str = "hf_test_token"
    drop_after: int | None = None
    drops: int = 0
    ignore_range: bool = False
    rate: float | None = None
    down: bool = False
    hook: Callable[[Logged], None] | None = None
    requests: list[Logged] = field(default_factory=list)
    repos: dict[str, _Repo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._sent_at = time.monotonic()  # the throttle's clock: when the bytes sent so far are due
        self._hub = _Server(self, "hub")
        self._cdn = _Server(self, "cdn")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_port}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_port}"

    def __enter__(self) -> HubServer:
        for server in (self._hub, self._cdn):
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    # --- content ---

    def add_repo(self, repo_id: str, folder: Path | dict[str, bytes], *, gated: bool = False,
                 branch: str = "main") -> str:
        """Serve ``folder`` (every file under it) as ``repo_id`` at a new commit on ``branch``; its sha.

        Files of a folder are read from disk when asked for (the folder must stay as it is)."""
        if isinstance(folder, Path):
            files = {p.relative_to(folder).as_posix(): Blob(p if _is_lfs(p.name) else p.read_bytes())
                     for p in sorted(folder.rglob("*")) if p.is_file()}
        else:
            files = {k: Blob(v) for k, v in folder.items()}
        commit = hashlib.sha1(repr(sorted((k, v.size, v.git_sha) for k, v in files.items())).encode()
                              + repo_id.encode() + str(len(self.repos)).encode()).hexdigest()
        for blob in files.values():  # hashed now, not while a client waits for the listing
            blob.sha256  # noqa: B018
        repo = self.repos.setdefault(repo_id, _Repo({}, {}, gated))
        repo.commits[commit] = files
        repo.refs[branch] = commit
        return commit

    def mutate(self, repo_id: str, path: str, data: bytes) -> None:
        """Change a file's bytes in every commit (what a broken mirror or a rewritten history does)."""
        for files in self.repos[repo_id].commits.values():
            if path in files:
                files[path] = Blob(data)

    def cdn_bytes(self) -> int:
        """Bytes of file data the CDN origin sent."""
        return self._cdn.bytes_sent

    def hub_bytes(self) -> int:
        """Bytes of answers the hub origin sent (listings, small files)."""
        return self._hub.bytes_sent

    def cdn_connections(self) -> int:
        """TCP connections the CDN origin accepted."""
        return self._cdn.connections

    # --- throttle ---

    def throttle(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            # A token bucket with 50 ms of burst: a sleep that overshoots is made up by the next
            # blocks, so the rate is the one asked even when the machine is busy.
            self._sent_at = max(self._sent_at, now - 0.05) + n / self.rate
            wait = self._sent_at - now
        if wait > 0:
            time.sleep(wait)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, hub: HubServer, origin: str) -> None:
        self.hub = hub
        self.origin = origin
        self.bytes_sent = 0
        self.connections = 0
        self._count_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def count(self, n: int) -> None:
        with self._count_lock:
            self.bytes_sent += n

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._count_lock:
            self.connections += 1
        super().process_request(request, client_address)


def _is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as real servers set it: with Nagle's algorithm, a kept-alive connection's answer
    # waits for the client's delayed ACK of its headers (~10 ms a request on loopback).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def _log(self) -> None:
        logged = Logged(self.server.origin, self.command, self.path, self.headers.get("Range"),
                        self.headers.get("Authorization") is not None)
        self.hub.requests.append(logged)
        if self.hub.hook is not None:
            self.hub.hook(logged)

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    # --- answers ---

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            self.server.count(len(body))

    def _json(self, data: Any) -> None:
        self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, message: str = "") -> None:
        self._send(status, json.dumps({"error": message or code}).encode(),
                   {"X-Error-Code": code, "X-Error-Message": message or code, "Content-Type": "application/json"})

    # --- routing ---

    def _route(self) -> None:
        self._log()
        url = urlparse(self.path)
        path = unquote(url.path)
        if self.server.origin == "cdn":
            return self._cdn(path)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            return self._info(m.group(1), m.group(2) or "main", "blobs" in parse_qs(url.query))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if m:
            return self._tree(m.group(1), m.group(2), m.group(3) or "", parse_qs(url.query))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/paths-info/([^/]+)", path)
        if m:
            return self._paths_info(m.group(1), m.group(2))
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._resolve(m.group(1), m.group(2), m.group(3))
        self._error(404, "EntryNotFound", f"no route {path}")

    def _commit(self, repo_id: str, revision: str) -> tuple[str, dict[str, Blob]] | None:
        """The commit and files, or None after answering with the error."""
        repo = self.hub.repos.get(repo_id)
        authorized = self.headers.get("Authorization") == f"Bearer {self.hub.token}"
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found")
            return None
        if repo.gated and not authorized:
            self._error(401, "GatedRepo", "Access to model is restricted; you must be authenticated")
            return None
        commit = repo.refs.get(revision, revision)
        if commit not in repo.commits:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return commit, repo.commits[commit]

    def _entry(self, path: str, blob: Blob, tree: bool) -> dict[str, Any]:
        lfs = {"size": blob.size, "pointerSize": 134}
        if tree:
            return {"type": "file", "path": path, "size": blob.size, "oid": blob.git_sha,
                    **({"lfs": {**lfs, "oid": blob.sha256}} if _is_lfs(path) else {})}
        return {"rfilename": path, "size": blob.size, "blobId": blob.git_sha,
                **({"lfs": {**lfs, "sha256": blob.sha256}} if _is_lfs(path) else {})}

    def _info(self, repo_id: str, revision: str, blobs: bool) -> None:
        found = self._commit(repo_id, revision)
        if found is None:
            return
        commit, files = found
        siblings = [self._entry(p, d, False) if blobs else {"rfilename": p} for p, d in sorted(files.items())]
        self._json({"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                    "gated": self.hub.repos[repo_id].gated and "auto", "siblings": siblings, "tags": []})

    def _tree(self, repo_id: str, revision: str, under: str, query: dict[str, list[str]]) -> None:
        found = self._commit(repo_id, revision)
        if found is None:
            return
        _, files = found
        prefix = under.rstrip("/") + "/" if under else ""
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        entries, folders = [], set()
        for p, d in sorted(files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                folders.update(prefix + "/".join(parts[:i + 1]) for i in range(len(parts)))
            entries.append(self._entry(p, d, True))
        entries += [{"type": "directory", "path": f, "oid": "0" * 40} for f in sorted(folders)]
        self._json(entries)

    def _paths_info(self, repo_id: str, revision: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        found = self._commit(repo_id, revision)
        if found is None:
            return
        _, files = found
        asked = parse_qs(body).get("paths", []) if "paths=" in body else json.loads(body or "{}").get("paths", [])
        self._json([self._entry(p, files[p], True) for p in asked if p in files])

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        found = self._commit(repo_id, revision)
        if found is None:
            return
        commit, files = found
        if path not in files:
            return self._error(404, "EntryNotFound", f"{path} does not exist at {revision}")
        blob = files[path]
        if not _is_lfs(path):
            return self._send(200, blob.read(), {"ETag": f'"{blob.git_sha}"', "X-Repo-Commit": commit})
        location = f"{self.hub.cdn}/cdn/{repo_id}/{commit}/{path}?X-Amz-Signature=loopback"
        self._send(302, b"", {"Location": location, "X-Repo-Commit": commit, "ETag": f'"{blob.git_sha}"',
                              "X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})

    # --- the CDN ---

    def _cdn(self, path: str) -> None:
        hub = self.hub
        if hub.down:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        m = re.fullmatch(r"/cdn/([^/]+/[^/]+)/([0-9a-f]+)/(.+)", path)
        repo = hub.repos.get(m.group(1)) if m else None
        blob = repo.commits.get(m.group(2), {}).get(m.group(3)) if m and repo else None
        if blob is None:
            return self._send(403, b"<Error>AccessDenied</Error>")
        size = blob.size
        headers = {"ETag": f'"{blob.git_sha[:32]}"', "Accept-Ranges": "bytes"}
        start, end, status = 0, size, 200
        asked = self.headers.get("Range")
        if asked and not hub.ignore_range:
            r = re.fullmatch(r"bytes=(\d+)-(\d*)", asked.strip())
            if r is None:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            start = int(r.group(1))
            end = min(size, int(r.group(2)) + 1) if r.group(2) else size
            if start >= size or start >= end:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        limit = None
        with hub._lock:
            if hub.drop_after is not None and hub.drops > 0 and end - start > hub.drop_after:
                hub.drops -= 1
                limit = hub.drop_after
        sent = 0
        try:
            if limit is None and not hub.rate and isinstance(blob.data, Path):
                # Large files unthrottled: the kernel copies them (os.sendfile), so the server takes
                # little of the CPU the client it feeds competes for on a 2-core machine.
                with open(blob.data, "rb") as f:
                    while sent < end - start:
                        n = os.sendfile(self.connection.fileno(), f.fileno(), start + sent, end - start - sent)
                        if n == 0:
                            break
                        sent += n
                        self.server.count(n)
                return
            for block in blob.blocks(start, end):
                if limit is not None and sent + len(block) > limit:
                    block = block[:max(0, limit - sent)]
                    self.wfile.write(block)
                    self.wfile.flush()
                    self.server.count(len(block))
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                hub.throttle(len(block))
                self.wfile.write(block)
                sent += len(block)
                self.server.count(len(block))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
