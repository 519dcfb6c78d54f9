"""The cast of one array into its stored dtype, and the overflow rule that decides that dtype.

A float cast is numpy's (round to nearest even). float32 and bfloat16 -> float16 go through the
CPU's conversion instruction where the optional extension ``_halfcast.c`` was built. A tensor with
a finite value beyond the target's range is stored in :func:`fallback_dtype` instead, with the note
:func:`overflow_note` words.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from streamconv.buffers import thread_buffer
from streamconv.dtypes import DType, by_name, is_bfloat16
from streamconv.sources.ref import TensorRef

__all__ = ["below_max", "cast_array", "cast_with_bound", "fallback_dtype", "finite_peak", "overflow_note", "planned_dtype",
           "tensor_peak"]


def cast_array(data: np.ndarray, store: DType) -> np.ndarray:
    """``data`` in ``store``'s dtype, by the documented cast (numpy's, round to nearest even).

    The result may be read-only (without the compiled kernel, float32 -> float16 returns a view of
    Arrow's buffer).
    """
    return cast_with_bound(data, store)[0]


def cast_with_bound(data: np.ndarray, store: DType, scratch: str | None = None) -> tuple[np.ndarray, bool | None]:
    """The cast, and whether every result is finite and below ``store.max`` if the kernel said so.

    ``scratch`` names the thread buffer the compiled kernel casts into, instead of a new array.

    float32 and bfloat16 -> float16 go through the CPU's conversion instruction
    (streamconv/stages/_halfcast.c), which also reports the largest result. Without it: Arrow's kernel for
    float32 and ml_dtypes' direct cast for bfloat16. All give numpy's bits for every value that is
    not a NaN (bfloat16 -> float16 is rounded once, as a direct cast; tests/test_codec.py checks all
    65,536 bfloat16 values and the hard float32 ones); a NaN stays a NaN of the same sign, its
    payload bits may differ.
    """
    if store.numpy == _FLOAT16 and (data.dtype == _FLOAT32 or is_bfloat16(data.dtype)) and data.flags.c_contiguous:
        if _HALFCAST is not None:
            out = np.empty(data.shape, _FLOAT16) if scratch is None else \
                thread_buffer(scratch, 2 * data.size)[: 2 * data.size].view(_FLOAT16).reshape(data.shape)
            return out, _HALFCAST(data, out) < _FLOAT16_MAX_BITS
        if data.dtype == _FLOAT32:
            return _arrow_float16(data), None
    with np.errstate(over="ignore"):  # a value beyond the target's range becomes inf: callers check
        return data.astype(store.numpy), None


_FLOAT32, _FLOAT16 = np.dtype("<f4"), np.dtype("<f2")
_FLOAT16_MAX_BITS = 0x7BFF  # 65504, float16's largest finite value


def _load_halfcast() -> Callable[[np.ndarray, np.ndarray], int] | None:
    """The compiled kernel, if it was built and this CPU has the instructions: ``(data, out)`` casts
    into ``out`` and returns the largest magnitude bits (``bits & 0x7fff``) among the results."""
    try:
        from streamconv.stages import _halfcast
    except ImportError:
        return None
    if not _halfcast.supported():
        return None
    return lambda data, out: _halfcast.to_float16(data, out, data.itemsize)


_HALFCAST = _load_halfcast()


def _arrow_float16(data: np.ndarray) -> np.ndarray:
    """float32 to float16 by Arrow's cast kernel (without the compiled one): the same bits as numpy's
    for every one of the 2**32 float32 patterns, NaNs included (checked exhaustively once)."""
    import pyarrow as pa
    from pyarrow import _compute  # not pyarrow.compute: that costs every conversion 20-100 ms

    source = pa.Array.from_buffers(pa.float32(), data.size, [None, pa.py_buffer(data)])
    cast = _compute.call_function("cast", [source], _compute.CastOptions.unsafe(pa.float16()))
    return np.frombuffer(cast.buffers()[1], np.float16, data.size).reshape(data.shape)


def below_max(stored: np.ndarray, store: DType) -> bool:
    """Whether every element of a cast result is finite and smaller in magnitude than ``store.max``.

    Then no source value was beyond the target's range (a finite value beyond it rounds to the
    largest finite value or to inf) nor was inf or NaN, and the exact check of the source
    (:func:`finite_peak`) can be skipped: this looks at the smaller, cast array, in one pass over
    its magnitude bits. Otherwise the caller checks the source.
    """
    if stored.size == 0:
        return True
    bits = stored.view(f"<u{store.itemsize}")
    magnitude_mask = (1 << (8 * store.itemsize - 1)) - 1
    largest = int(np.array(store.max, store.numpy).view(bits.dtype))
    magnitudes = thread_buffer("magnitudes", stored.nbytes)[: stored.nbytes].view(bits.dtype)
    return int(np.bitwise_and(bits, magnitude_mask, out=magnitudes).max()) < largest


def planned_dtype(stored: DType, dtype: str) -> DType:
    """The dtype a tensor of dtype ``stored`` is written in when ``dtype`` is asked for, before the
    overflow rule: float tensors take a float ``dtype`` (float16 for ``int8``, whose weight matrices
    :mod:`streamconv.stages.quantize` then takes); ``keep``, integers and bools keep theirs.
    Convert and export both follow it."""
    target = by_name("float16" if dtype == "int8" else dtype)
    return stored if target is None or not stored.is_float else target


def overflow_note(source_name: str, target: str, store: DType, peak: float) -> str:
    """The warning for a tensor kept wider than ``target`` because its values do not fit."""
    return f"tensor {source_name!r} has values up to {peak:.6g}, beyond {target}'s range; stored as {store.name} instead"


def tensor_peak(ref: TensorRef, step: int) -> float:
    """Largest finite magnitude of a whole tensor, read piece by piece."""
    step = max(1, step)
    return max(
        (finite_peak(ref.read(start, min(start + step, ref.numel))) for start in range(0, ref.numel, step)),
        default=0.0,
    )


def finite_peak(data: np.ndarray) -> float:
    """Largest finite magnitude of ``data`` (0 for an empty array): what decides an overflow."""
    if data.size == 0:
        return 0.0
    values = data.astype(np.float32) if is_bfloat16(data.dtype) else data
    lo, hi = float(values.min()), float(values.max())
    if math.isfinite(lo) and math.isfinite(hi):
        return max(-lo, hi)
    finite = values[np.isfinite(values)]
    return float(np.abs(finite).max()) if finite.size else 0.0


def fallback_dtype(source: DType, peak: float) -> DType:
    """float32 when it holds the values; otherwise the (wider) source dtype itself."""
    float32 = by_name("float32")
    assert float32 is not None
    if source.itemsize < 4 or (source.itemsize > 4 and peak <= float32.max):
        return float32
    return source
