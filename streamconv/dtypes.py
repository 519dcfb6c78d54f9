"""The one table of dtypes: each row says everything streamconv knows about one element type.

Every module looks dtypes up here: the source (safetensors codes), the stages (is it a float, can
it overflow), the writer and reader (the name in the Parquet ``dtype`` column), validate and the
tests (the torch dtype of the same name).
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

__all__ = ["DType", "DTYPES", "by_code", "by_name", "by_numpy", "CODES", "NAMES"]


@dataclass(frozen=True)
class DType:
    """One element type.

    Attributes:
        name: The name in the Parquet ``dtype`` columns, and torch's (``torch.<name>``).
        code: The safetensors header code (``F16``, ``BF16``...).
        numpy: The numpy dtype, little-endian as safetensors and streamconv store it.
        is_float: True for floating-point types: only those are cast.
    """

    name: str
    code: str
    numpy: np.dtype
    is_float: bool

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return self.numpy.itemsize

    @property
    def max(self) -> float:
        """The largest finite value of a float type (``inf`` for integer and bool types)."""
        return float(ml_dtypes.finfo(self.numpy).max) if self.is_float else float("inf")


DTYPES: tuple[DType, ...] = (
    DType("float64", "F64", np.dtype("<f8"), True),
    DType("float32", "F32", np.dtype("<f4"), True),
    DType("float16", "F16", np.dtype("<f2"), True),
    DType("bfloat16", "BF16", np.dtype(ml_dtypes.bfloat16), True),
    DType("int64", "I64", np.dtype("<i8"), False),
    DType("int32", "I32", np.dtype("<i4"), False),
    DType("int16", "I16", np.dtype("<i2"), False),
    DType("int8", "I8", np.dtype("i1"), False),
    DType("uint8", "U8", np.dtype("u1"), False),
    DType("bool", "BOOL", np.dtype("?"), False),
)
_BY_CODE = {d.code: d for d in DTYPES}
_BY_NAME = {d.name: d for d in DTYPES}
_BY_NUMPY = {d.numpy: d for d in DTYPES}
#: The safetensors codes and the Parquet names streamconv stores, in table order.
CODES: tuple[str, ...] = tuple(_BY_CODE)
NAMES: tuple[str, ...] = tuple(_BY_NAME)


def by_code(code: str) -> DType | None:
    """The row of a safetensors code, or ``None`` for one streamconv does not store (``F8_E4M3``...)."""
    return _BY_CODE.get(code) if isinstance(code, str) else None


def by_name(name: str) -> DType | None:
    """The row of a Parquet dtype name (``float16``...), or ``None``."""
    return _BY_NAME.get(name) if isinstance(name, str) else None


def by_numpy(dtype: np.dtype) -> DType:
    """The row of a numpy dtype streamconv stores.

    Raises:
        KeyError: a numpy dtype outside the table (a big-endian or complex type).
    """
    return _BY_NUMPY[np.dtype(dtype)]
