"""What a table of contents holds: a row's :class:`Chunk`, a tensor's :class:`Entry` (filled row by
row by :class:`~streamconv.format.toc.WeightsPart`), and the shape arithmetic both use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from streamconv.dtypes import DType, by_name
from streamconv.format.quantized import block_count
from streamconv.format.records import TensorInfo

__all__ = ["SCALES", "Chunk", "Entry", "Expected", "numel"]

#: (tensor name, next chunk index, next element offset) while reading rows; None between tensors.
Expected = tuple[str, int, int] | None
#: Key prefix, in a reader's pending arrays, of a quantized tensor's scales.
SCALES = "\0scales:"


class Chunk(NamedTuple):
    """One row of a row group, from the table of contents: all a reader needs besides ``data``."""

    name: str
    chunk_index: int
    element_offset: int
    element_count: int
    checksum: int | None
    block: int = 0  # version 4: the int8 quantization block, 0 when not quantized
    scales_checksum: int | None = None
    scales_bytes: int = 0


@dataclass
class Entry:
    """A tensor of the table of contents, filled row by row, and the row groups holding it."""

    row: dict[str, Any]
    dtype: DType
    shape: tuple[int, ...]
    file: Path
    stored_bytes: int = 0
    groups: list[tuple[int, int]] = field(default_factory=list)  # (file index, row group)
    block: int = 0  # int8 quantization block of every chunk; 0 when not quantized

    @property
    def source_itemsize(self) -> int:
        """Bytes of one element in the source, by which the chunk size is counted (the stored dtype's
        if the source dtype is not one streamconv knows)."""
        source = by_name(self.row["source_dtype"])
        return (source or self.dtype).itemsize

    @property
    def info(self) -> TensorInfo:
        row = self.row
        return TensorInfo(row["name"], row["source_name"], self.dtype.name, row["source_dtype"], self.shape,
                          row["chunk_count"], self.stored_bytes, self.file, self.block)

    def array_dtype(self, dequantize: str | None) -> np.dtype:
        """The dtype a reader decodes into: the stored one, or for int8 codes ``dequantize``'s."""
        return self.dtype.numpy if not self.block or dequantize is None else np.dtype(dequantize)

    def scale_count(self, elements: int) -> int:
        """Scales of ``elements`` (whole rows) of a quantized tensor (0 otherwise)."""
        return elements // self.shape[1] * block_count(self.shape[1], self.block) if self.block else 0


def numel(shape: tuple[int, ...]) -> int:
    total = 1
    for d in shape:
        total *= d
    return total
