"""What :func:`streamconv.export` checks before it writes a byte: everything it will write stays inside
the target, and the checkpoint it leaves loads.

The output's ``metadata.json`` and table of contents are data, so none of their names is trusted:

- every module folder and asset path goes through :func:`streamconv._files.contained` (a plain
  relative path inside the output: no absolute path, no ``..``, not ``.`` or empty, a string);
- no two files written share a path, and no file stands where another needs a folder;
- each tensor has a source name of its own, and no name in a safetensors file is ``__metadata__``
  (safetensors keeps that key for the header's metadata);
- each shape is a list of non-negative integers (``bool`` and ``float`` are not) whose size in bytes
  fits in 64 bits, as safetensors and numpy require to load it.

A failed check is one line, exit 3, and nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from streamconv import _files
from streamconv._files import quote
from streamconv.errors import FormatError
from streamconv.format.records import TensorInfo
from streamconv.format.schema import METADATA_FILENAME

__all__ = ["MAX_TENSOR_BYTES", "RESERVED_NAMES", "check_module_folders", "check_names", "check_paths", "check_tensors"]

#: Names safetensors keeps for itself in a header.
RESERVED_NAMES = frozenset({"__metadata__"})
#: The largest tensor safetensors' offsets and numpy's arrays can describe (bytes).
MAX_TENSOR_BYTES = 2**63 - 1
_WIDEST = 8  # bytes per element of the widest dtype a tensor may be written in


def check_module_folders(output: Path, folders: Mapping[Any, Any]) -> dict[str, str]:
    """The module folders a plan names (tensor prefix -> folder), each checked as a path of ``output``.

    Returns:
        The same mapping, its folders as plain relative posix paths.

    Raises:
        UnsafeInputError: a folder is not a string, is absolute, holds ``..``, is ``.`` or empty, or
            leads outside ``output`` through a symlink.
        FormatError: a tensor prefix is not a non-empty string.
    """
    named_in = output / METADATA_FILENAME
    checked: dict[str, str] = {}
    for prefix, folder in folders.items():
        if not isinstance(prefix, str) or not prefix:
            raise FormatError(named_in, f"a module's tensor prefix is {quote(repr(prefix))}, not a name")
        path = _files.contained(output, folder, named_in=named_in)
        checked[prefix] = path.relative_to(output).as_posix()
    return checked


def check_paths(output: Path, written: Sequence[str], assets: Iterable[Any]) -> None:
    """Refuse assets that are not paths inside ``output``, and two files that would share a path or
    where one would need the other as its folder (``written``: the weight files, index and marker).

    Raises:
        UnsafeInputError: an asset path that is not a plain relative path inside ``output``.
        FormatError: an asset that is not an object, two files with one path, or a file where a
            folder is needed.
    """
    named_in = output / METADATA_FILENAME
    paths = list(written)
    for asset in assets:
        if not isinstance(asset, dict):
            raise FormatError(named_in, f"an asset is recorded as {type(asset).__name__}, not as an object")
        name = asset.get("path")
        paths.append(_files.contained(output, name, named_in=named_in).relative_to(output).as_posix())
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise FormatError(named_in, f"export would write {quote(path)} twice (an asset or a module folder "
                                        "has the name of another file)")
        seen.add(path)
    for path in paths:
        for parent in PurePosixPath(path).parents:
            if parent.as_posix() in seen:
                raise FormatError(named_in, f"export would write {quote(path)} inside {quote(parent.as_posix())}, "
                                            "which is a file it writes too")


def check_tensors(output: Path, tensors: Iterable[TensorInfo]) -> None:
    """Refuse a source name shared by two tensors, and shapes safetensors could not hold.

    Raises:
        FormatError: two tensors with one source name, or a shape that is not non-negative integers
            whose size in bytes (at the widest dtype, 8 bytes) fits in 64 bits.
    """
    sources: dict[str, str] = {}
    for info in tensors:
        _check_shape(output, info)
        other = sources.setdefault(info.source_name, info.name)
        if other != info.name:
            raise FormatError(output, f"tensors {quote(other)} and {quote(info.name)} have one source name "
                                      f"{quote(info.source_name)}; a checkpoint holds each name once")


def check_names(output: Path, keys: Mapping[str, Sequence[str]]) -> None:
    """Refuse a name safetensors reserves, or one name twice in one file.

    Args:
        output: The converted output, for the messages.
        keys: Each safetensors file's tensor names, in the order written.

    Raises:
        FormatError: ``__metadata__`` as a tensor name, or a name twice in one file (two module
            prefixes leading to one folder).
    """
    for path, names in keys.items():
        seen: set[str] = set()
        for name in names:
            if name in RESERVED_NAMES:
                raise FormatError(output, f"a tensor would be named {quote(name)} in {path}, a name safetensors "
                                          "keeps for the header's metadata")
            if name in seen:
                raise FormatError(output, f"two tensors would be named {quote(name)} in {path}")
            seen.add(name)


def _check_shape(output: Path, info: TensorInfo) -> None:
    shape = info.shape
    if not isinstance(shape, (list, tuple)) or not all(type(d) is int and d >= 0 for d in shape):
        text = repr(list(shape) if isinstance(shape, (list, tuple)) else shape)
        raise FormatError(output, f"tensor {quote(info.name)} has the shape {text[:80]}, not a list of "
                                  "non-negative integers")
    size = _WIDEST
    for dimension in shape:
        size *= dimension or 1  # an empty tensor's other dimensions must still be describable
    if size > MAX_TENSOR_BYTES:
        raise FormatError(output, f"tensor {quote(info.name)} has the shape {list(shape)}, whose size does not "
                                  "fit in 64 bits; safetensors cannot load it")
