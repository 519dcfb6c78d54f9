"""What ``--force`` may replace: only what streamconv wrote (docs/cli.md, "What --force replaces").

:func:`streamconv.format.staging.check_output` asks here before a run writes, and
:func:`~streamconv.format.staging.staged_output` again just before the replacement. Each function
returns, in words for the message, why a path is not streamconv's to replace, or None:

- :func:`place_refusal`: the path is the current folder or holds it, or is a folder the run reads
  (the source checkpoint; for export, the output exported and its source), holds one, or (when it
  exists) lies inside one; the user keeps those, so the fix is another output name;
- :func:`contents_refusal`: a symlink, a file, a FIFO or device, or a folder holding anything but
  what its marker lists (``metadata.json`` for convert, ``streamconv_export.json`` for export); the
  user's to remove. An empty folder, or a missing name, is accepted.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from streamconv import _files
from streamconv.errors import StreamconvError
from streamconv.format.schema import (
    EXPORT_FORMAT,
    EXPORT_MARKER_FILENAME,
    INDEX_FILENAME,
    METADATA_FILENAME,
    WEIGHTS_FILENAME,
)
from streamconv.messages import quote

__all__ = ["contents_refusal", "place_refusal"]


def place_refusal(output: Path, reads: Mapping[str, Path]) -> str | None:
    """Why ``output`` may never be written, whatever it holds: it is the current folder or holds it,
    or it is a folder of ``reads``, holds one, or (when it exists) lies inside one; None otherwise."""
    if output.is_symlink():
        return None  # refused for what it is (a symlink), not followed
    try:
        out = output.resolve()
        cwd = Path.cwd().resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop above it, a removed working folder
        return f"cannot be resolved ({quote(str(exc))})"
    if out == cwd:
        return "is the current folder"
    if cwd.is_relative_to(out):
        return f"holds the current folder ({str(cwd)!r})"
    exists = out.exists()
    for what, path in reads.items():
        try:
            read = path.resolve()
        except (OSError, RuntimeError):
            continue
        if out == read:
            return f"is {what}"
        if read.is_relative_to(out):
            return f"holds {what} ({str(read)!r})"
        if exists and out.is_relative_to(read):
            return f"lies inside {what} ({str(read)!r})"
    return None


def contents_refusal(output: Path, kind: str) -> str | None:
    """Why what stands at ``output`` is not streamconv's to replace; None for an empty folder or a
    folder of ``kind`` holding only the files its marker lists."""
    if output.is_symlink():
        try:
            target = os.readlink(output)
        except OSError:
            target = "?"
        return f"is a symlink (to {quote(target)}), not a folder streamconv wrote"
    try:
        mode = os.stat(output).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be read ({quote(exc.strerror or str(exc))})"
    if not stat.S_ISDIR(mode):
        return f"is {_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}, not a folder streamconv wrote"
    marker, _ = _MARKERS[kind]
    known = _own_files(output, kind)
    try:
        foreign = _foreign(output, known or set())
    except OSError as exc:
        return f"cannot be listed ({quote(exc.strerror or str(exc))})"
    if not foreign:
        return None
    count = len(foreign)
    named = ", ".join(quote(name) for name in foreign[:2]) + (", ..." if count > 2 else "")
    items = f"{count} item{'s' if count > 1 else ''}"
    if known is None:
        return f"holds {items} ({named}) and no {marker} of a streamconv {_WORDS[kind]}"
    return f"holds {items} streamconv did not write ({named})"


#: The file that marks a folder as written by each command, and the ``format`` it records there.
_MARKERS = {"convert": (METADATA_FILENAME, "streamconv"), "export": (EXPORT_MARKER_FILENAME, EXPORT_FORMAT)}
_WORDS = {"convert": "output", "export": "export"}
#: Files a convert output may hold that its metadata.json does not list (format 1 lists no files).
_UNLISTED = {"convert": {WEIGHTS_FILENAME, INDEX_FILENAME}, "export": set()}
_KINDS = {stat.S_IFREG: "a file", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}
#: A temporary name :func:`streamconv._files.write_json` writes beside a file (a killed write leaves it).
_TEMPORARY = re.compile(r"\.(.+)\.[0-9]+\.tmp")


def _own_files(folder: Path, kind: str) -> set[str] | None:
    """The files (relative posix paths) the marker of ``kind`` in ``folder`` lists; None without a
    readable marker of that kind (missing, damaged, a FIFO, another format)."""
    marker, form = _MARKERS[kind]
    try:
        data = _files.read_json(folder / marker, root=folder)
    except (StreamconvError, OSError):
        return None
    if not isinstance(data, dict) or data.get("format") != form or type(data.get("format_version")) is not int:
        return None
    known = {marker, *_UNLISTED[kind]}
    for key in ("files", "assets"):
        records = data.get(key)
        for record in records if isinstance(records, list) else []:
            if isinstance(record, dict) and isinstance(record.get("path"), str):
                known.add(record["path"])
    return known


def _foreign(folder: Path, known: set[str]) -> list[str]:
    """Everything in ``folder`` that is not one of the ``known`` files (relative posix paths) or a
    folder on the way to one, top level first; a symlink is always foreign, and is never followed."""
    parents = {p.as_posix() for name in known for p in PurePosixPath(name).parents if p.as_posix() != "."}
    found: list[str] = []
    queue = [(folder, "")]
    while queue:
        current, prefix = queue.pop(0)
        with os.scandir(current) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        for entry in entries:
            name = prefix + entry.name
            if entry.is_symlink():
                found.append(name)
            elif entry.is_dir(follow_symlinks=False) and name in parents:
                queue.append((Path(entry.path), name + "/"))
            elif entry.is_file(follow_symlinks=False) and (name in known or _temporary_of(name, known)):
                continue
            else:
                found.append(name)
    return found


def _temporary_of(name: str, known: set[str]) -> bool:
    path = PurePosixPath(name)
    match = _TEMPORARY.fullmatch(path.name)
    return match is not None and (path.parent / match.group(1)).as_posix() in known
