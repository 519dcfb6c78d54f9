"""The one owner of file access driven by data: every file streamconv opens because a checkpoint or an
output names it, and every small file it writes.

The rules, one place each:

* **A path from data stays inside its folder.** A name read from a file (a shard index, a split index,
  ``metadata.json``, ``modules.json``) must be a plain relative path (no ``..``, not absolute, no NUL
  or backslash), and where it resolves to, symlinks followed, must lie inside the folder. A file
  found by its usual name (``config.json``, ``model.safetensors``) is held to the second half of the
  rule. The one allowed exception is a Hugging Face cache snapshot (``.../snapshots/<rev>``), whose
  files are symlinks into that repository's ``blobs`` folder.
* **Only regular files are opened.** A FIFO, a device or a folder where a file belongs is refused at
  once: the open never blocks (``O_NONBLOCK``, checked with ``fstat`` before any read).
* **Small files are read under a cap and JSON is read strictly** (:mod:`streamconv.strict_json`;
  docs/reliability.md lists the caps).
* **sha256 of a file** and **atomic JSON writing** (a temporary name, then ``os.replace``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from streamconv.errors import StreamconvError, UnsafeInputError
from streamconv.messages import quote
from streamconv.strict_json import JSONRefused, strict_json_loads

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_TOKENIZER_BYTES",
    "contained",
    "copy_file",
    "file_record",
    "homes",
    "is_regular",
    "open_file",
    "open_regular",
    "read_bytes",
    "read_json",
    "regular",
    "same_file",
    "sha256_file",
    "utf8_text",
    "within",
    "write_json",
]

#: Cap on a JSON file streamconv parses (configs, indexes, metadata.json, module configs). The largest
#: real ones are shard indexes of a few MB.
MAX_JSON_BYTES = 64 * 1024 * 1024
#: Cap on ``tokenizer.json``: real ones run to tens of MB (Gemma 3's is 33 MB); parsing one costs
#: about 6x its size in memory, so the cap is 4x the largest seen, not more.
MAX_TOKENIZER_BYTES = 128 * 1024 * 1024
_HASH_BLOCK = 1 << 20


def utf8_text(text: str) -> str:
    """``text`` as UTF-8 can hold it: the lone surrogates of a name that is not UTF-8 as escapes.

    A file name that is not UTF-8 reaches Python with its bytes as lone surrogates (``b'\\xff'``
    as ``'\\udcff'``), which no UTF-8 writer accepts; they become the text ``\\xff``.
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _utf8_tree(value: Any) -> Any:
    if isinstance(value, str):
        return utf8_text(value)
    if isinstance(value, dict):
        return {_utf8_tree(k): _utf8_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_utf8_tree(v) for v in value]
    return value


def homes(root: Path) -> list[Path]:
    """Where files of ``root`` may resolve to: ``root`` itself, and for a Hugging Face cache snapshot
    (``<repo>/snapshots/<rev>``) that repository's ``blobs`` folder."""
    found = [root.resolve()]
    if root.parent.name == "snapshots":
        found.append((root.parent.parent / "blobs").resolve())
    return found


def within(root: Path, path: Path) -> Path:
    """``path`` (a file of ``root``, by name or from data), refused if it resolves outside ``root``.

    Raises:
        UnsafeInputError: ``path`` resolves, through a symlink, outside ``root`` (and outside a hub
            snapshot's ``blobs``), or cannot be resolved (a symlink loop).
    """
    try:
        target = path.resolve()
        allowed = homes(root)
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise UnsafeInputError(path, f"cannot be resolved ({quote(str(exc))})", "replace it with a regular file") from None
    if not any(target.is_relative_to(home) for home in allowed):
        raise UnsafeInputError(
            path, f"leads through a symlink to {quote(str(target))}, outside {quote(str(root))}",
            "copy the file into the folder instead of linking to it",
        )
    return path


def contained(root: Path, name: Any, *, named_in: Path) -> Path:
    """``root / name`` for a ``name`` read from the file ``named_in``, refused unless it stays inside.

    Raises:
        UnsafeInputError: ``name`` is not a string, not a plain relative path, or resolves outside.
    """
    if not isinstance(name, str):
        raise UnsafeInputError(named_in, f"names a file by {type(name).__name__}, not by a path", "rebuild the file")
    parts = name.split("/")
    if not name or name.startswith("/") or ".." in parts or "\0" in name or "\\" in name or _DRIVE.match(name):
        raise UnsafeInputError(
            named_in, f"names {quote(name)}, which is not a plain relative path inside {quote(str(root))}",
            "no '..' and no absolute paths: rebuild the file",
        )
    if all(part in ("", ".") for part in parts):
        raise UnsafeInputError(named_in, f"names {quote(name)}, the folder itself, where a file belongs", "rebuild the file")
    return within(root, root / name)


_DRIVE = re.compile(r"^[A-Za-z]:")


# --- regular files only, read under caps ---


def is_regular(path: Path) -> bool:
    """Whether ``path`` is a regular file (symlinks followed); false, not an error, if it cannot be told."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):  # missing, a name too long, a NUL in the name
        return False


def _kind(mode: int) -> str:
    for test, word in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return word
    return "not a regular file"


def regular(path: Path, *, root: Path | None = None) -> Path:
    """``path``, refused unless it is a regular file (and, with ``root``, resolves inside it).

    For files another library opens by name (Parquet): ``stat`` never blocks on a FIFO, the open
    that follows would.

    Raises:
        UnsafeInputError: not a regular file, or outside ``root``.
        FileNotFoundError: nothing there.
    """
    if root is not None:
        within(root, path)
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise UnsafeInputError(path, f"is {_kind(mode)}, where a file belongs", "replace it with a regular file")
    return path


def open_file(path: Path, *, root: Path | None = None, buffering: int = -1) -> IO[bytes]:
    """Open ``path`` for reading, refusing anything but a regular file before a byte is read; the
    caller closes the handle (:func:`open_regular` is the ``with`` form).

    ``O_NONBLOCK`` makes the open of a FIFO return at once instead of waiting for a writer; the flag is
    cleared again for the regular file that passed. With ``root``, the path must resolve inside it.
    ``buffering`` is :func:`open`'s (0: a raw file, for reads straight into the caller's buffer).

    Raises:
        UnsafeInputError: not a regular file, or outside ``root``.
        OSError: the file cannot be opened (missing, no permission).
    """
    if root is not None:
        within(root, path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeInputError(path, f"is {_kind(mode)}, where a file belongs", "replace it with a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def open_regular(path: Path, *, root: Path | None = None, buffering: int = -1) -> Iterator[IO[bytes]]:
    """:func:`open_file` as a context manager: the file is closed at the end of the ``with``."""
    with open_file(path, root=root, buffering=buffering) as handle:
        yield handle


def same_file(handle: IO[bytes]) -> str | None:
    """A name another library can open to read the very file ``handle`` has open (Linux's
    ``/proc/self/fd/N``), whatever is renamed over its path since; None where there is no such name."""
    name = f"/proc/self/fd/{handle.fileno()}"
    return name if os.path.exists(name) else None


def read_bytes(path: Path, *, cap: int = MAX_JSON_BYTES, root: Path | None = None) -> bytes:
    """The whole of a small file, refused when it is larger than ``cap`` (checked before reading).

    Raises:
        UnsafeInputError: over the cap, not a regular file, or outside ``root``.
        OSError: the file cannot be read.
    """
    with open_regular(path, root=root) as f:
        size = os.fstat(f.fileno()).st_size
        # read(n) allocates n bytes first: ask for the size the file has (one more byte tells that it
        # grew), never for the whole cap.
        data = f.read(size + 1) if size <= cap else b""
        if len(data) > size and size <= cap:  # it grew while being read: the rest, still under the cap
            data += f.read(cap + 1 - len(data))
        if size > cap or len(data) > cap:  # a file that grows while it is read is held to the cap too
            raise UnsafeInputError(
                path, f"is {max(size, len(data)):,} bytes, over streamconv's cap of {cap:,} for this file",
                "this is not a file streamconv wrote or a checkpoint it can read; check where it came from",
            )
        return data


def read_json(path: Path, *, cap: int = MAX_JSON_BYTES, root: Path | None = None,
              error: Callable[[Path, str], StreamconvError] | None = None) -> Any:
    """Parse a JSON file strictly (:func:`strict_json_loads`), under a size cap.

    Args:
        path: The file.
        cap: Largest size accepted, in bytes.
        root: The folder the file must resolve inside, if any.
        error: Builds the error for content that is not strict UTF-8 JSON, from the path and the
            reason (each caller names its own file and fix); :class:`UnsafeInputError` by default.

    Raises:
        UnsafeInputError: over the cap, not a regular file, or outside ``root``.
        OSError: the file cannot be read.
    """
    data = read_bytes(path, cap=cap, root=root)
    try:
        return strict_json_loads(data.decode("utf-8"))
    except (UnicodeDecodeError, JSONRefused) as exc:
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"not JSON ({exc})"
        if error is not None:
            raise error(path, reason) from None
        raise UnsafeInputError(path, f"is {reason}", "replace it with the original file") from None


# --- hashing and writing ---


def sha256_file(path: Path, *, root: Path | None = None) -> str:
    """Hex sha256 of a regular file (inside ``root``, if given), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open_regular(path, root=root) as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path, root: Path) -> dict[str, Any]:
    """``{"path", "bytes", "sha256"}`` for a file under ``root``."""
    return {"path": path.relative_to(root).as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def copy_file(source: Path, target: Path, *, root: Path, cap: int | None = None) -> None:
    """Copy a regular file of the folder ``root`` to ``target`` (whose folder is made), under ``cap``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open_regular(source, root=root) as src:
        size = os.fstat(src.fileno()).st_size
        if cap is not None and size > cap:
            raise UnsafeInputError(source, f"is {size:,} bytes, over streamconv's cap of {cap:,} for this file",
                                   "check where the file came from")
        with open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, _HASH_BLOCK)


def write_json(data: Any, path: Path) -> None:
    """Write ``data`` as indented UTF-8 JSON with a final newline, atomically: to a temporary name
    beside ``path``, then renamed over it, so a reader never sees half a file.

    A string that UTF-8 cannot hold (a path that is not UTF-8, in provenance or a warning) is
    written as :func:`utf8_text` gives it."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        encoded = (json.dumps(_utf8_tree(data), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            f.write(encoded)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
