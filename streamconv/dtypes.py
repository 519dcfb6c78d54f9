"""The one table of dtypes: each row says everything streamconv knows about one element type.

Every module looks dtypes up here: the source (safetensors codes), the stages (is it a float, can
it overflow), the writer and reader (the name in the Parquet ``dtype`` column), validate and the
tests (the torch dtype of the same name).

bfloat16 is ml_dtypes' type. Importing ml_dtypes 0.7.0 took longer than converting BERT-base
(0.7-1.4 s; pyproject.toml excludes that version, 0.6.0 takes 0.01 s), and nothing promises the
next release is quick, so its row resolves its numpy type the first time a bfloat16 is
needed: a bf16 tensor read or planned, a bf16 cast, a bf16 output read. Until then nothing has
made an array of that type, which is why :func:`by_numpy` and :func:`is_bfloat16` need not look.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DType", "DTYPES", "by_code", "by_name", "by_numpy", "is_bfloat16", "CODES", "NAMES"]


@dataclass(frozen=True)
class DType:
    """One element type.

    Attributes:
        name: The name in the Parquet ``dtype`` columns, and torch's (``torch.<name>``).
        code: The safetensors header code (``F16``, ``BF16``...).
        itemsize: Bytes per element.
        is_float: True for floating-point types: only those are cast.
        eager: The numpy dtype, little-endian as safetensors and streamconv store it; ``None`` for
            ml_dtypes' type of the same name (bfloat16), which :attr:`numpy` imports on first use.
    """

    name: str
    code: str
    itemsize: int
    is_float: bool
    eager: np.dtype | None = field(default=None, repr=False)

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype (for bfloat16: ml_dtypes' type, importing ml_dtypes the first time)."""
        return self.eager if self.eager is not None else _ml_dtype(self.name)

    @property
    def max(self) -> float:
        """The largest finite value of a float type (``inf`` for integer and bool types)."""
        if not self.is_float:
            return float("inf")
        if self.eager is not None:
            return float(np.finfo(self.eager).max)
        import ml_dtypes

        return float(ml_dtypes.finfo(self.numpy).max)


@functools.cache
def _ml_dtype(name: str) -> np.dtype:
    import ml_dtypes

    return np.dtype(getattr(ml_dtypes, name))


def _row(name: str, code: str, numpy: str, is_float: bool) -> DType:
    return DType(name, code, np.dtype(numpy).itemsize, is_float, np.dtype(numpy))


DTYPES: tuple[DType, ...] = (
    _row("float64", "F64", "<f8", True),
    _row("float32", "F32", "<f4", True),
    _row("float16", "F16", "<f2", True),
    DType("bfloat16", "BF16", 2, True),  # ml_dtypes.bfloat16, imported on first use
    _row("int64", "I64", "<i8", False),
    _row("int32", "I32", "<i4", False),
    _row("int16", "I16", "<i2", False),
    _row("int8", "I8", "i1", False),
    _row("uint8", "U8", "u1", False),
    _row("bool", "BOOL", "?", False),
)
_BY_CODE = {d.code: d for d in DTYPES}
_BY_NAME = {d.name: d for d in DTYPES}
_BY_NUMPY = {d.eager: d for d in DTYPES if d.eager is not None}
_LAZY = tuple(d for d in DTYPES if d.eager is None)
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
    dtype = np.dtype(dtype)
    row = _BY_NUMPY.get(dtype)
    if row is None and "ml_dtypes" in sys.modules:  # only ml_dtypes makes a bfloat16 array
        row = next((d for d in _LAZY if d.numpy == dtype), None)
    if row is None:
        raise KeyError(dtype)
    return row


def is_bfloat16(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is ml_dtypes' bfloat16, without importing ml_dtypes to find out."""
    return "ml_dtypes" in sys.modules and dtype == _ml_dtype("bfloat16")
