"""The lazy tensor handle every source hands out: name, shape, dtype and a byte range, read on request.

Reads are plain file reads of the asked range into a fresh (or the caller's) buffer: no memory map,
so pages a conversion touched do not stay resident (see :mod:`streamconv.sources.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from streamconv import _files
from streamconv.dtypes import CODES, DType, by_code
from streamconv.errors import CorruptCheckpointError, UnsupportedDtypeError

__all__ = ["RangeSource", "TensorRef"]


class RangeSource(Protocol):
    """Where a tensor's bytes come from when they are not in a local file (a hub file read by ranges)."""

    def read_into(self, offset: int, view: memoryview) -> None: ...


@dataclass(frozen=True)
class TensorRef:
    """A lazy handle on one tensor inside a safetensors file.

    Args:
        name: The name the tensor will be stored under (changes in the rename stage).
        source_name: The tensor's name in the source checkpoint (never changes).
        dtype_code: The safetensors dtype code (``F32``, ``BF16``...).
        shape: The tensor's shape.
        path: The safetensors file that holds it.
        offset: Absolute byte offset of the tensor's data in ``path``.
        nbytes: Size of the tensor's data in bytes.
        remote: For a file read by ranges from the hub, what reads them (``path`` then names
            the file as it would lie in the snapshot folder, for messages).
    """

    name: str
    source_name: str
    dtype_code: str
    shape: tuple[int, ...]
    path: Path
    offset: int
    nbytes: int
    remote: RangeSource | None = field(default=None, compare=False, repr=False)

    @property
    def stored_type(self) -> DType:
        """The tensor's row of the dtype table.

        Raises:
            UnsupportedDtypeError: for safetensors dtypes streamconv does not store (F8, U32...).
        """
        row = by_code(self.dtype_code)
        if row is None:
            raise UnsupportedDtypeError(self.path, {self.source_name: self.dtype_code}, list(CODES))
        return row

    @property
    def dtype(self) -> np.dtype:
        """The tensor's numpy dtype (see :attr:`stored_type`)."""
        return self.stored_type.numpy

    @property
    def dtype_name(self) -> str:
        """The dtype as written in the Parquet ``dtype`` column (``float32``, ``bfloat16``...)."""
        return self.stored_type.name

    @property
    def numel(self) -> int:
        """Number of elements (1 for a scalar)."""
        return math.prod(self.shape)

    def renamed(self, name: str) -> TensorRef:
        """A copy of this handle stored under another name."""
        return dataclasses.replace(self, name=name)

    def read(self, start: int = 0, stop: int | None = None, *, buffer: np.ndarray | None = None) -> np.ndarray:
        """Read elements ``[start, stop)`` of the flattened (C-order) tensor.

        Only that byte range is read from disk, into a new 1-D array, or into ``buffer``.

        Args:
            start: First element to read.
            stop: One past the last element; the end of the tensor by default.
            buffer: A ``uint8`` array of at least the range's bytes to read into; the result is
                then a view of it.

        Returns:
            A 1-D array of the tensor's dtype.

        Raises:
            CorruptCheckpointError: if the file ends before the range does.
        """
        stop = self.numel if stop is None else stop
        if not 0 <= start <= stop <= self.numel:
            raise IndexError(f"element range [{start}, {stop}) outside tensor of {self.numel}")
        dtype = self.dtype
        nbytes = (stop - start) * dtype.itemsize
        out = np.empty(stop - start, dtype) if buffer is None else buffer[:nbytes].view(dtype)
        view = out.view(np.uint8).data
        if self.remote is not None:
            self.remote.read_into(self.offset + start * dtype.itemsize, view.cast("B"))
            return out
        # Checked again (a regular file, never blocking): the file may have been swapped since its header was read.
        with _files.open_regular(self.path, buffering=0) as f:
            f.seek(self.offset + start * dtype.itemsize)
            filled = 0
            while filled < len(view):
                n = f.readinto(view[filled:])  # type: ignore[attr-defined]  # a raw FileIO (buffering=0)
                if not n:
                    raise CorruptCheckpointError(
                        self.path, f"file ended while reading tensor {self.source_name!r}"
                    )
                filled += n
        return out
