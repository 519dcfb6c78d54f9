"""The read side of a split output: the files its ``weights.parquet.index.json`` lists, in order.

Every name in the index goes through :func:`streamconv._files.contained` (inside the folder,
symlinks resolved) and the index itself is read as strict, capped JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamconv import _files
from streamconv.errors import FormatError, NotConvertedError

__all__ = ["read_index"]


def read_index(path: Path) -> list[tuple[Path, list[str]]]:
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
        raise FormatError(path, "not a usable split index (no 'files' list of {path, tensors} objects)")
    if not entries:
        raise FormatError(path, "the split index lists no files")
    found = []
    for entry in entries:
        file = _files.contained(path.parent, entry["path"], named_in=path)
        if not file.exists():
            raise NotConvertedError(file, "weights file (listed in the split index)")
        found.append((_files.regular(file), list(entry["tensors"])))
    return found


def _usable(entry: Any) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("tensors"), list)
            and all(isinstance(name, str) for name in entry["tensors"]))
