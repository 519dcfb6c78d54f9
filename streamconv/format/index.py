"""The read side of a split output: the files its ``weights.parquet.index.json`` lists, in order.

Every name in the index goes through :func:`streamconv._files.contained` (inside the folder,
symlinks resolved) and the index itself is read as strict, capped JSON. Each file comes with what the
index records of it (size, and the identity of its rows), which the reader checks against the file
it opened: a file of another output (one replaced with ``--force`` meanwhile) is never mixed in.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

from streamconv import _files
from streamconv.errors import FormatError, NotConvertedError

__all__ = ["Listed", "read_index"]

_HEX64 = re.compile(r"[0-9a-f]{16}")


class Listed(NamedTuple):
    """One file of a split index: its path, the tensors whose first chunk it holds, and what the index
    records of it (``None`` when an older index does not)."""

    path: Path
    tensors: list[str]
    bytes: int | None
    chunks_xxh3: int | None


def read_index(path: Path) -> list[Listed]:
    """The files a split index lists, in order, with the tensors each holds.

    Raises:
        FormatError: the index is not strict JSON or not an index, lists no files, or names a path
            outside its folder.
        UnsafeInputError: the index is not a regular file, or is over the JSON cap.
        NotConvertedError: a listed file is missing.
    """
    index = _files.read_json(path, error=lambda file, reason: FormatError(file, f"the split index is {reason}"))
    entries = index.get("files") if isinstance(index, dict) else None
    if not isinstance(entries, list) or not all(_usable(entry) for entry in entries):
        raise FormatError(path, "not a usable split index (no 'files' list of {path, tensors} objects, "
                                "with a non-negative 'bytes' and a 16-digit hex 'chunks_xxh3' where given)")
    if not entries:
        raise FormatError(path, "the split index lists no files")
    found = []
    for entry in entries:
        file = _files.contained(path.parent, entry["path"], named_in=path)
        if not file.exists():
            raise NotConvertedError(file, "weights file (listed in the split index)")
        digest = entry.get("chunks_xxh3")
        found.append(Listed(file, list(entry["tensors"]), entry.get("bytes"),
                            int(digest, 16) if digest is not None else None))
    return found


def _usable(entry: Any) -> bool:
    if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("tensors"), list)
            and all(isinstance(name, str) for name in entry["tensors"])):
        return False
    size, digest = entry.get("bytes"), entry.get("chunks_xxh3")
    return ((size is None or (isinstance(size, int) and not isinstance(size, bool) and size >= 0))
            and (digest is None or (isinstance(digest, str) and _HEX64.fullmatch(digest) is not None)))
