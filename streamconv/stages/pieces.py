"""The pipeline's stages: pure generators that take an iterable and return an iterator.

``select`` and ``rename`` work on lazy :class:`~streamconv.sources.checkpoint.TensorRef` handles and read
nothing. ``chunk`` cuts each tensor into :class:`TensorChunk` values of at most ``chunk_size``
bytes, and ``cast`` says which dtype each is stored in. A chunk is an immutable description: its
bytes are read and cast only by :meth:`TensorChunk.load`, which the writer's worker threads call.
Compose them::

    chunks = cast(chunk(rename(select(checkpoint, include=["encoder.*"]), RULES)), "float16")

Memory stays bounded by the writer's queue of chunks, whatever the size of the model.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from streamconv.buffers import thread_buffer
from streamconv.constants import DEFAULT_CHUNK_SIZE, DTYPE_CHOICES
from streamconv.dtypes import DType, by_name, by_numpy
from streamconv.errors import CastOverflowError, InvalidOptionError, PlanError
from streamconv.sources.checkpoint import TensorRef

__all__ = ["TensorChunk", "RenameRule", "select", "rename", "chunk", "cast", "matches_any"]

#: A rename rule: a regular expression and its replacement, as for :func:`re.sub`.
RenameRule = tuple[str, str]

#: How a chunk meets a target dtype its values may not fit: ``store`` casts to ``store_as``
#: (decided for the whole tensor beforehand), ``decide`` checks the chunk's own values (a tensor of
#: one chunk), ``check`` raises :class:`CastOverflowError` when they do not fit.
CastMode = Literal["store", "decide", "check"]


@dataclass(frozen=True)
class TensorChunk:
    """A contiguous piece of one tensor's flattened (C-order) elements, and how to store it.

    Attributes:
        ref: The tensor (name, source name, shape, source dtype).
        index: Position of this piece among the tensor's pieces, from 0.
        count: How many pieces the tensor has.
        start: Index of the first element of this piece in the flattened tensor.
        stop: One past its last element.
        store_as: The dtype to store; ``None`` keeps the source dtype.
        mode: How a float cast meets values beyond ``store_as``'s range (see ``CastMode``).
        note: A warning decided before loading (a tensor kept in float32 for its range).
    """

    ref: TensorRef
    index: int
    count: int
    start: int
    stop: int
    store_as: DType | None = None
    mode: CastMode = "store"
    note: str | None = None

    @property
    def name(self) -> str:
        """The name the tensor is stored under."""
        return self.ref.name

    @property
    def element_count(self) -> int:
        """Number of elements in this piece."""
        return self.stop - self.start

    def load(self, *, scratch: bool = False) -> np.ndarray:
        """Read the piece and cast it: a new 1-D array in the stored dtype.

        The result may be read-only (see :func:`cast_array`); copy it to change it in place.

        Args:
            scratch: Cast into this thread's reused buffer where the cast allows, instead of a new
                array: the result is then valid only until this thread loads again (the writer's
                workers encode it at once; a fresh array per chunk fragments the heap).

        Raises:
            CastOverflowError: in ``check`` mode, values beyond the target's range.
        """
        if self.store_as is None or self.ref.dtype == self.store_as.numpy:
            return self.ref.read(self.start, self.stop)
        # The source elements die with this call: read them into this thread's reused buffer.
        data = self.ref.read(self.start, self.stop, buffer=thread_buffer("read", self.element_count * self.ref.dtype.itemsize))
        stored, below_max = _cast(data, self.store_as, "cast" if scratch else None)
        source = by_numpy(data.dtype)
        if self.mode == "store" or self.store_as.max >= source.max:
            return stored
        if below_max if below_max is not None else _below_max(stored, self.store_as):
            return stored
        peak = finite_peak(data)
        if peak <= self.store_as.max:
            return stored
        if self.mode == "check":
            raise CastOverflowError(self.ref.source_name, peak, self.store_as.name)
        return cast_array(data, fallback_dtype(source, peak))

    def note_for(self, stored: np.ndarray) -> str | None:
        """The warning for the user once the piece is loaded as ``stored``, if any."""
        if self.note or self.mode != "decide" or self.store_as is None or stored.dtype == self.store_as.numpy:
            return self.note
        return _overflow_note(self.ref, self.store_as, by_numpy(stored.dtype), finite_peak(stored))

    def __repr__(self) -> str:
        return f"TensorChunk({self.name!r}, {self.index + 1}/{self.count}, elements [{self.start}, {self.stop}))"

def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """True if ``name`` matches one of the shell-style glob ``patterns`` (case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select(
    refs: Iterable[TensorRef],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> Iterator[TensorRef]:
    """Keep the tensors whose name matches ``include`` (all if empty) and not ``exclude``.

    Args:
        refs: Tensor handles.
        include: Glob patterns (``*``, ``?``, ``[...]``); a tensor is kept if one matches.
        exclude: Glob patterns; a tensor matching one is dropped, even if included.

    Returns:
        The kept handles, in order.

    Example:
        >>> names = [r.name for r in select(refs, include=["encoder.*"], exclude=["*.bias"])]
    """
    for ref in refs:
        if include and not matches_any(ref.name, include):
            continue
        if exclude and matches_any(ref.name, exclude):
            continue
        yield ref


def rename(refs: Iterable[TensorRef], rules: Sequence[RenameRule]) -> Iterator[TensorRef]:
    """Rename tensors with a table of ``(regex, replacement)`` rules, applied in order.

    Every rule is applied to the result of the previous one (``re.sub``), so a table can strip a
    prefix and then rename a leaf. The source name is kept on the handle.

    Args:
        refs: Tensor handles.
        rules: The table.

    Returns:
        The renamed handles, in order.

    Raises:
        PlanError: if two tensors end up with the same name.

    Example:
        >>> rules = [(r"^model\\.encoder\\.", ""), (r"embed_positions", "position_embedding")]
        >>> [r.name for r in rename(refs, rules)]
    """
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    seen: dict[str, str] = {}
    for ref in refs:
        name = ref.name
        for pattern, replacement in compiled:
            name = pattern.sub(replacement, name)
        if name in seen:
            raise PlanError(
                f"renaming maps both {seen[name]!r} and {ref.source_name!r} to {name!r}; "
                "exclude one of them or fix the rename table"
            )
        seen[name] = ref.source_name
        yield ref if name == ref.name else ref.renamed(name)


def chunk(refs: Iterable[TensorRef], chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[TensorChunk]:
    """Cut each tensor into pieces of at most ``chunk_size`` bytes; nothing is read.

    A tensor smaller than ``chunk_size`` is one piece; an empty tensor is one empty piece.

    Args:
        refs: Tensor handles.
        chunk_size: Largest piece, in bytes of the source dtype (at least one element).

    Returns:
        The pieces, tensor after tensor, in element order.

    Raises:
        InvalidOptionError: ``chunk_size`` below 1.
    """
    if chunk_size < 1:
        raise InvalidOptionError("{chunk_size=} must be at least 1 byte", "chunk_size", chunk_size=chunk_size)
    for ref in refs:
        per_chunk = max(1, chunk_size // ref.dtype.itemsize)
        count = max(1, math.ceil(ref.numel / per_chunk))
        for index in range(count):
            start = index * per_chunk
            yield TensorChunk(ref, index, count, start, min(ref.numel, start + per_chunk))


def cast(chunks: Iterable[TensorChunk], dtype: str, *, prescan: bool = True) -> Iterator[TensorChunk]:
    """Say which dtype each floating-point piece is stored in; integer and bool pieces pass unchanged.

    The cast is numpy's (round to nearest even). A tensor with a finite value beyond the target's
    range (``|x| > 65504`` for float16) would become ``inf``; such a tensor is kept in float32
    instead (or its source dtype if that is float32 or wider and does not fit float32 either) and
    its first piece carries a note. A tensor of one piece is checked when that piece is loaded. A
    tensor of several pieces must have one dtype for all of them, so with ``prescan`` it is read
    once more, here, before its first piece is yielded; without it, each piece is checked as it is
    loaded and the first that does not fit raises :class:`CastOverflowError` (for callers that can
    start again, as :func:`streamconv.convert` does: overflow is rare, and the scan re-reads most
    of a model whose tensors span several chunks).

    Args:
        chunks: Pieces from :func:`chunk`.
        dtype: ``float16``, ``bfloat16``, ``float32`` or ``keep``.
        prescan: Scan tensors of several pieces before casting them.

    Returns:
        Pieces that say the dtype to store.

    Raises:
        InvalidOptionError: an unknown ``dtype``.
    """
    if dtype not in DTYPE_CHOICES:
        raise InvalidOptionError(
            f"{{dtype=}} is not a dtype; choose one of {', '.join(DTYPE_CHOICES)}", "dtype", dtype=dtype
        )
    target = by_name(dtype)
    decided: tuple[TensorRef, DType, str | None] | None = None
    for piece in chunks:
        source = by_numpy(piece.ref.dtype)
        if target is None or source == target or not source.is_float:
            yield piece
        elif piece.count == 1:
            yield dataclasses.replace(piece, store_as=target, mode="decide")
        elif not prescan:
            yield dataclasses.replace(piece, store_as=target, mode="check")
        else:
            if decided is None or decided[0] is not piece.ref:
                peak = _tensor_peak(piece.ref, piece.element_count) if target.max < source.max else 0.0
                store = target if peak <= target.max else fallback_dtype(source, peak)
                note = None if store == target else _overflow_note(piece.ref, target, store, peak)
                decided = (piece.ref, store, note)
            note = decided[2] if piece.index == 0 else None
            yield dataclasses.replace(piece, store_as=decided[1], mode="store", note=note)


def cast_array(data: np.ndarray, store: DType) -> np.ndarray:
    """``data`` in ``store``'s dtype, by the documented cast (numpy's, round to nearest even).

    The result may be read-only (without the compiled kernel, float32 -> float16 returns a view of
    Arrow's buffer).
    """
    return _cast(data, store)[0]


def _cast(data: np.ndarray, store: DType, scratch: str | None = None) -> tuple[np.ndarray, bool | None]:
    """The cast, and whether every result is finite and below ``store.max`` if the kernel said so.

    ``scratch`` names the thread buffer the compiled kernel casts into, instead of a new array.

    float32 and bfloat16 -> float16 go through the CPU's conversion instruction
    (streamconv/stages/_halfcast.c), which also reports the largest result. Without it: Arrow's kernel for
    float32 and ml_dtypes' direct cast for bfloat16. All give numpy's bits for every value that is
    not a NaN (bfloat16 -> float16 is rounded once, as a direct cast; tests/test_codec.py checks all
    65,536 bfloat16 values and the hard float32 ones); a NaN stays a NaN of the same sign, its
    payload bits may differ.
    """
    if store.numpy == _FLOAT16 and data.dtype in _HALF_SOURCES and data.flags.c_contiguous:
        if _HALFCAST is not None:
            out = np.empty(data.shape, _FLOAT16) if scratch is None else \
                thread_buffer(scratch, 2 * data.size)[: 2 * data.size].view(_FLOAT16).reshape(data.shape)
            return out, _HALFCAST(data, out) < _FLOAT16_MAX_BITS
        if data.dtype == _FLOAT32:
            return _arrow_float16(data), None
    with np.errstate(over="ignore"):  # a value beyond the target's range becomes inf: callers check
        return data.astype(store.numpy), None


_FLOAT32, _FLOAT16 = np.dtype("<f4"), np.dtype("<f2")
_HALF_SOURCES = (_FLOAT32, by_name("bfloat16").numpy)  # type: ignore[union-attr]
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


def _below_max(stored: np.ndarray, store: DType) -> bool:
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


def _overflow_note(ref: TensorRef, target: DType, store: DType, peak: float) -> str:
    return (
        f"tensor {ref.source_name!r} has values up to {peak:.6g}, beyond {target.name}'s "
        f"range; stored as {store.name} instead"
    )


def _tensor_peak(ref: TensorRef, step: int) -> float:
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
    values = data.astype(np.float32) if data.dtype == by_name("bfloat16").numpy else data  # type: ignore[union-attr]
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
