"""What the reader hands out: a stored tensor's description, and the tensor with its data."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["NameKind", "TensorInfo", "TensorRecord"]

#: Which name keys :func:`load` and labels records: the stored name or the source checkpoint's.
NameKind = Literal["stored", "source"]
@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor, as the file's metadata columns describe it (nothing decoded).

    Attributes:
        name: The stored name.
        source_name: The tensor's name in the source checkpoint.
        dtype: The stored dtype (``float16``...).
        source_dtype: The source checkpoint's dtype.
        shape: The tensor's shape.
        chunk_count: Rows (chunks) holding it.
        stored_bytes: Bytes of its ``data`` values (compressed size; with the scales of int8 codes).
        file: The weights file holding it.
        block: For int8 codes with float16 scales (``--dtype int8``, format 4), the block length
            along a row; 0 for a tensor stored as it reads.
    """

    name: str
    source_name: str
    dtype: str
    source_dtype: str
    shape: tuple[int, ...]
    chunk_count: int
    stored_bytes: int
    file: Path = field(repr=False)
    block: int = 0

    @property
    def quantized(self) -> bool:
        """Whether the tensor is stored as int8 codes with block scales."""
        return self.block > 0

    @property
    def numel(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (for ``inspect --json``)."""
        return {
            "name": self.name, "source_name": self.source_name, "shape": list(self.shape),
            "dtype": self.dtype, "source_dtype": self.source_dtype, "chunks": self.chunk_count,
            "stored_bytes": self.stored_bytes, **({"block": self.block} if self.block else {}),
        }


@dataclass(frozen=True)
class TensorRecord(TensorInfo):
    """A stored tensor with its data: :class:`TensorInfo` plus ``array``, in the stored dtype and shape.

    It unpacks as ``key, array``, the key being the stored or the source name as asked for. For a
    quantized tensor (``block > 0``) ``array`` holds its values, float16 unless the reader was asked
    for float32, or its raw int8 codes (``dequantize=None``); ``scales`` holds its float16 scales,
    shape ``(rows, ceil(cols / block))``, in every case (``None`` for other tensors).
    """

    array: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    names: NameKind = "stored"
    scales: np.ndarray | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """The name asked for: ``name`` (``names="stored"``) or ``source_name`` (``names="source"``)."""
        return self.source_name if self.names == "source" else self.name

    def __iter__(self) -> Iterator[Any]:
        """``name, array = record``: the key asked for and the array."""
        return iter((self.key, self.array))


