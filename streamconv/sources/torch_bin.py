"""PyTorch ``.bin`` checkpoints: ``pytorch_model.bin`` or its shards, read lazily and safely.

Each file is opened with ``torch.load(path, mmap=True, weights_only=True, map_location="cpu")``:
``weights_only`` refuses any pickle that would call a function other than torch's tensor
rebuilders (the pickle is never executed), and ``mmap`` maps the storages instead of reading them,
so listing a shard's tensors reads only its pickle. A :class:`TorchTensorRef` reads its elements
from the mapped storage when asked; every handle of one checkpoint shares a :class:`ShardCache`
that keeps one shard mapped at a time and releases it when the next shard is asked for, so memory
is bounded by one shard's mapping plus the pipeline.

torch is imported only here, and only when a folder has ``.bin`` weights and no safetensors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamconv import _files
from streamconv._files import quote
from streamconv.dtypes import by_name
from streamconv.errors import (
    CorruptCheckpointError,
    MissingDependencyError,
    ShardIndexError,
    UnsafeCheckpointError,
)
from streamconv.sources.ref import TensorRef
from streamconv.sources.safetensors_header import read_weight_map, shard_path

__all__ = ["BIN_FILE", "BIN_INDEX_FILE", "ShardCache", "TorchTensorRef", "bin_folder_weights", "read_bin_file"]

BIN_FILE = "pytorch_model.bin"
BIN_INDEX_FILE = "pytorch_model.bin.index.json"
ZIP_MAGIC = b"PK\x03\x04"
#: The fix of a damaged ``.bin`` (CorruptCheckpointError's own speaks of safetensors).
DAMAGED_FIX = "the file is damaged or not a torch checkpoint: re-download it, or re-save the model as safetensors"
# A torch file from before torch 1.6 starts with a pickled magic number (protocol 2: 0x80 0x02).
LEGACY_MAGIC = b"\x80\x02"


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            "torch", "to read pytorch_model.bin checkpoints", install="pip install 'streamconv[bin]'"
        ) from None
    return torch


def load_state_dict(path: Path) -> dict[str, Any]:
    """Map one ``.bin`` file with torch, refusing anything but a zip checkpoint of plain tensors.

    Raises:
        CorruptCheckpointError: not a zip checkpoint (legacy torch files included), or damaged.
        UnsafeCheckpointError: the pickle would build objects other than tensors (never run).
        MissingDependencyError: torch is not installed.
    """
    with _files.open_regular(path) as f:
        magic = f.read(4)
    if magic != ZIP_MAGIC:
        if magic.startswith(LEGACY_MAGIC):
            problem = "a legacy (pre-1.6, non-zip) torch file, which cannot be read without unpickling it"
            fix = "load it with a torch you trust and re-save it with `model.save_pretrained(dir, safe_serialization=True)`"
        else:
            problem, fix = "not a zip-format torch checkpoint", DAMAGED_FIX
        raise CorruptCheckpointError(path, problem, fix)
    torch = _torch()
    import pickle

    try:
        loaded = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(path, _unsafe_reason(exc)) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CorruptCheckpointError(path, f"torch cannot read it ({_first_line(exc)})", DAMAGED_FIX) from exc
    if not isinstance(loaded, dict):
        raise CorruptCheckpointError(path, f"holds a {type(loaded).__name__}, not a state dict of tensors", DAMAGED_FIX)
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def _unsafe_reason(exc: BaseException) -> str:
    """The one line of torch's long weights_only message that says what the pickle wanted."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported" in line or "global" in line.lower():
            return line[:200]
    return lines[0][:200] if lines else "the pickle is not plain tensors"


class ShardCache:
    """The one mapped shard of a checkpoint, shared by its tensor handles (thread-safe).

    Asking for a shard later in the checkpoint's order releases the mapped one; a late read of an
    earlier shard (a worker finishing its last chunks) maps it for that read only.

    ``local`` maps a shard's path to the file to map: for a hub source, a temporary copy fetched
    when first asked for (:class:`streamconv.sources.hub.FetchedShards`); the path itself by default.
    """

    def __init__(self, files: list[Path], local: Callable[[Path], Path] | None = None) -> None:
        self.order = {path: i for i, path in enumerate(files)}
        self._lock = threading.Lock()
        self._path: Path | None = None
        self._tensors: dict[str, Any] = {}
        self.local = local or (lambda path: path)

    def load(self, path: Path) -> dict[str, Any]:
        """The state dict of ``path`` (its local copy, for a hub shard)."""
        return load_state_dict(self.local(path))

    def tensor(self, path: Path, key: str) -> Any:
        """The torch tensor ``key`` of ``path``, from the mapping."""
        with self._lock:
            if path == self._path:
                return self._tensors[key]
            current = -1 if self._path is None else self.order.get(self._path, -1)
            if self.order.get(path, 0) < current:
                return self.load(path)[key]
            self._tensors = {}  # drop the old mapping before mapping the next shard
            self._path = None
            self._tensors = self.load(path)
            self._path = path
            return self._tensors[key]


@dataclass(frozen=True)
class TorchTensorRef(TensorRef):
    """A lazy handle on one tensor of a ``.bin`` file, read from its mmapped storage.

    Attributes:
        key: The tensor's key in the file's state dict (without any module prefix).
        cache: The checkpoint's shared :class:`ShardCache`.
    """

    key: str = ""
    cache: ShardCache | None = field(default=None, compare=False, repr=False)

    def read(self, start: int = 0, stop: int | None = None, *, buffer: np.ndarray | None = None) -> np.ndarray:
        """Elements ``[start, stop)`` of the flattened (C-order) tensor, as a new 1-D array or a
        view of ``buffer`` (as :meth:`TensorRef.read`).

        Non-contiguous tensors (views of a shared storage) are read element by element through
        their strides, only over the range asked for.
        """
        stop = self.numel if stop is None else stop
        if not 0 <= start <= stop <= self.numel:
            raise IndexError(f"element range [{start}, {stop}) outside tensor of {self.numel}")
        dtype = self.dtype  # raises UnsupportedDtypeError for complex, float8...
        assert self.cache is not None
        tensor = self.cache.tensor(self.path, self.key)
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.view(_torch().int16)  # numpy has no bfloat16: read its 16 bits
        if tensor.is_contiguous():
            values = tensor.reshape(-1)[start:stop].numpy()
        else:
            array = tensor.numpy()
            values = array[np.unravel_index(np.arange(start, stop), array.shape)] if stop > start else array.reshape(-1)[:0]
        if buffer is None:
            return np.array(values, copy=True).view(dtype).reshape(-1)
        out = buffer[: (stop - start) * dtype.itemsize].view(values.dtype)
        out[...] = values.reshape(-1)
        return out.view(dtype)


def read_bin_file(path: Path, prefix: str = "", cache: ShardCache | None = None) -> list[TensorRef]:
    """Lazy handles on every tensor of one ``.bin`` file (its mapping is released on return).

    Args:
        path: The ``.bin`` file.
        prefix: Prepended to every tensor name (sentence-transformers module folders).
        cache: The checkpoint's shared cache; a new one for this file alone by default.
    """
    cache = cache or ShardCache([path])
    refs: list[TensorRef] = []
    for key, tensor in cache.load(path).items():
        name = str(tensor.dtype).removeprefix("torch.")
        row = by_name(name)
        shape = tuple(int(d) for d in tensor.shape)
        numel = int(np.prod(shape, dtype=np.int64))
        itemsize = row.itemsize if row is not None else tensor.element_size()
        _check_storage(path, prefix + key, tensor, numel)
        refs.append(TorchTensorRef(
            name=prefix + key, source_name=prefix + key, dtype_code=row.code if row else f"torch.{name}",
            shape=shape, path=path, offset=0, nbytes=numel * itemsize, key=key, cache=cache,
        ))
    return refs


def _check_storage(path: Path, name: str, tensor: Any, numel: int) -> None:
    """Refuse a tensor whose elements are not distinct values inside its storage: a stride-0
    ``expand`` or overlapping strides (``as_strided``) declare more elements than the file holds,
    and reading them would follow the declared size, not the file's bytes (a 1.6 KB ``.bin`` of
    ``zeros(1).expand(2**34)`` took 73 s).

    Checked on the strides alone, before any element is read: sorted by stride, each dimension must
    step past everything the smaller ones reach (transposes and slices of a real model pass).
    """
    if numel == 0:
        return
    itemsize = tensor.element_size()
    held = tensor.untyped_storage().nbytes() // itemsize if itemsize else 0
    reach = 0  # the furthest element, from the first, that the dimensions seen so far reach
    for stride, size in sorted((abs(s), d) for d, s in zip(tensor.shape, tensor.stride(), strict=True) if d > 1):
        if stride <= reach:
            raise CorruptCheckpointError(
                path, f"tensor {quote(name)} is a view whose {numel:,} elements repeat values of its storage "
                f"of {held:,} (an expanded or overlapping view)",
                "re-save it with contiguous tensors (`model.save_pretrained(dir, safe_serialization=True)`)",
            )
        reach += (size - 1) * stride
    if tensor.storage_offset() + reach >= held:
        raise CorruptCheckpointError(
            path, f"tensor {quote(name)} reaches element {tensor.storage_offset() + reach:,} of a storage of {held:,}",
            DAMAGED_FIX,
        )


def bin_folder_weights(
    root: Path, remote: Callable[[Path], Path] | None = None, exists: Callable[[Path], bool] | None = None
) -> tuple[list[Path], list[TensorRef]] | None:
    """The folder's ``.bin`` weights: ``pytorch_model.bin``, or the shards its index lists; else ``None``.

    Args:
        root: The folder.
        remote: For a hub source whose ``.bin`` files are not on disk: fetches one and returns
            its temporary copy (see :class:`ShardCache`); ``exists`` then says which are on the hub.

    Raises:
        ShardIndexError: the index is not JSON, names a missing shard, or disagrees with the shards.
    """
    exists = exists or Path.exists
    if exists(root / BIN_FILE):
        path = _files.within(root, root / BIN_FILE)
        return [path], read_bin_file(path, cache=ShardCache([path], remote))
    index_path = root / BIN_INDEX_FILE
    if not index_path.exists():
        return None
    weight_map = read_weight_map(_files.within(root, index_path))
    shards = [shard_path(index_path, s) for s in dict.fromkeys(weight_map.values())]
    missing = [p.name for p in shards if not exists(p)]
    if missing:
        raise ShardIndexError(index_path, f"shard files missing: {', '.join(missing[:8])}")
    cache = ShardCache(shards, remote)
    refs: list[TensorRef] = []
    for shard in shards:
        refs.extend(read_bin_file(shard, cache=cache))
    found = {r.source_name: r.path.name for r in refs}
    problems = [
        f"{what}: {', '.join(names[:8])}"
        for what, names in (
            ("tensors listed but not in their shard", [n for n, s in weight_map.items() if found.get(n) != s]),
            ("tensors in shards but not in the index", [n for n in found if n not in weight_map]),
        )
        if names
    ]
    if len(found) != len(refs):
        problems.append("a tensor is stored in two shards")
    if problems:
        raise ShardIndexError(index_path, "; ".join(problems))
    return shards, refs
