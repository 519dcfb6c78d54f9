"""The pipeline's stages: pure generators that take an iterable and return an iterator.

``select`` and ``rename`` work on lazy :class:`~streamconv.source.TensorRef` handles and read
nothing. ``chunk`` cuts each tensor into lazy :class:`TensorChunk` pieces of at most
``chunk_size`` bytes, and ``cast`` converts pieces; a piece's bytes are read and cast when its
``data`` is first asked for (by the writer's worker threads). Compose them::

    chunks = cast(chunk(rename(select(checkpoint, include=["encoder.*"]), RULES)), "float16")

Memory stays bounded by a few chunks whatever the size of the model.
"""

from __future__ import annotations

import fnmatch
import math
import re
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence

import ml_dtypes
import numpy as np

from streamconv.constants import DEFAULT_CHUNK_SIZE, DTYPE_CHOICES, DTYPE_NAMES, NUMPY_DTYPES
from streamconv.errors import CastOverflowError, InvalidOptionError, PlanError
from streamconv.source import TensorRef

__all__ = ["TensorChunk", "RenameRule", "select", "rename", "chunk", "cast", "matches_any"]

#: A rename rule: a regular expression and its replacement, as for :func:`re.sub`.
RenameRule = tuple[str, str]


Loader = Callable[[], tuple[np.ndarray, "str | None"]]


class TensorChunk:
    """A contiguous piece of one tensor's flattened (C-order) elements.

    A piece is lazy: its data is read and converted the first time :attr:`data` (or
    :attr:`note`) is asked for, so the writer's worker threads, not the generator that made the
    piece, do the reading, casting and compressing, in parallel.

    Args:
        ref: The tensor this piece belongs to (name, source name, shape, source dtype).
        index: Position of this piece among the tensor's pieces, from 0.
        count: How many pieces the tensor has.
        start: Index of the first element of this piece in the flattened tensor.
        data: The elements, for a piece built from data in hand.
        note: A warning about this piece, for a piece built from data in hand.
        stop: One past the last element, for a lazy piece.
        load: For a lazy piece, a function returning ``(data, note)``.
    """

    __slots__ = ("ref", "index", "count", "start", "stop", "_load", "_data", "_note")

    def __init__(
        self,
        ref: TensorRef,
        index: int,
        count: int,
        start: int,
        data: np.ndarray | None = None,
        note: str | None = None,
        *,
        stop: int | None = None,
        load: Loader | None = None,
    ) -> None:
        if (data is None) == (load is None) or (load is not None and stop is None):
            raise ValueError("give a TensorChunk either data, or a load function and stop")
        self.ref, self.index, self.count, self.start = ref, index, count, start
        self.stop: int = start + len(data) if data is not None else stop  # type: ignore[assignment]
        self._load, self._data, self._note = load, data, note

    @property
    def name(self) -> str:
        """The name the tensor is stored under."""
        return self.ref.name

    @property
    def element_count(self) -> int:
        """Number of elements in this piece (known without loading it)."""
        return self.stop - self.start

    @property
    def data(self) -> np.ndarray:
        """The elements, 1-D, in the dtype to store (loaded on first access)."""
        self._resolve()
        if self._data is None:
            raise RuntimeError(f"{self!r}: its data was released after it was written")
        return self._data

    @property
    def note(self) -> str | None:
        """A warning for the user, e.g. a tensor kept in float32 because it overflows float16."""
        self._resolve()
        return self._note

    def then(self, step: Callable[[np.ndarray], tuple[np.ndarray, str | None]]) -> TensorChunk:
        """A lazy piece whose data is ``step`` applied to this piece's data."""
        return TensorChunk(
            self.ref, self.index, self.count, self.start, stop=self.stop, load=lambda: step(self.data)
        )

    def release(self) -> tuple[np.dtype, int]:
        """Load the piece if needed, drop its data, and return the data's dtype and byte size.

        For consumers that keep pieces after using them (the writer's queue): the note stays,
        the elements go. Reading :attr:`data` afterwards is an error.
        """
        data = self.data
        self._data = None
        return data.dtype, data.nbytes

    def _resolve(self) -> None:
        if self._load is not None:
            self._data, self._note = self._load()
            self._load = None

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
    """Cut each tensor into lazy pieces of at most ``chunk_size`` bytes.

    A tensor smaller than ``chunk_size`` is one piece; an empty tensor is one empty piece. A
    piece's bytes are read only when its data is asked for.

    Args:
        refs: Tensor handles.
        chunk_size: Largest piece, in bytes of the source dtype (at least one element).

    Returns:
        The pieces, tensor after tensor, in element order.
    """
    if chunk_size < 1:
        raise InvalidOptionError(f"chunk size must be positive, got {chunk_size}")
    for ref in refs:
        per_chunk = max(1, chunk_size // ref.dtype.itemsize)
        count = max(1, math.ceil(ref.numel / per_chunk))
        for index in range(count):
            start = index * per_chunk
            stop = min(ref.numel, start + per_chunk)
            yield TensorChunk(ref, index, count, start, stop=stop, load=functools.partial(_read, ref, start, stop))


def _read(ref: TensorRef, start: int, stop: int) -> tuple[np.ndarray, None]:
    return ref.read(start, stop), None


def cast(chunks: Iterable[TensorChunk], dtype: str, *, prescan: bool = True) -> Iterator[TensorChunk]:
    """Cast floating-point pieces to ``dtype``; integer and bool pieces pass unchanged.

    The cast is numpy's (round to nearest even). A tensor with a finite value beyond the target's
    range (``|x| > 65504`` for float16) would become ``inf``; such a tensor is kept in float32
    instead (or its source dtype if that is float32 or wider and does not fit float32 either) and
    its first piece carries a ``note``. A tensor of one piece is checked when that piece is
    loaded. A tensor of several pieces must have one dtype for all of them, so with ``prescan``
    it is read once more, here, before its first piece is yielded; without it, each piece is
    checked as it is cast and the first that does not fit raises :class:`CastOverflowError`
    (for callers that can start again, as :func:`streamconv.convert` does: overflow is rare,
    and the scan re-reads most of a model whose tensors span several chunks).

    Args:
        chunks: Pieces from :func:`chunk`.
        dtype: ``float16``, ``bfloat16``, ``float32`` or ``keep``.
        prescan: Scan tensors of several pieces before casting them.

    Returns:
        Lazy pieces whose data is in the stored dtype.

    Raises:
        CastOverflowError: with ``prescan=False``, when a piece is loaded.
    """
    if dtype not in DTYPE_CHOICES:
        raise InvalidOptionError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    if dtype == "keep":
        yield from chunks
        return
    target = NUMPY_DTYPES[dtype]
    decided: tuple[TensorRef, np.dtype, str | None] | None = None
    for piece in chunks:
        source = piece.ref.dtype
        if source == target or not _is_float(source):
            yield piece
        elif piece.count == 1:
            yield piece.then(functools.partial(_cast_whole, ref=piece.ref, target=target))
        elif not prescan:
            yield piece.then(functools.partial(_cast_checked, ref=piece.ref, target=target))
        else:
            if decided is None or decided[0] is not piece.ref:
                peak = _tensor_peak(piece.ref, piece.element_count) if _may_overflow(source, target) else 0.0
                decided = (piece.ref, *_decide(piece.ref, source, target, peak))
            store, note = decided[1], decided[2] if piece.index == 0 else None
            yield piece.then(functools.partial(_cast_to, store=store, note=note))


def _cast_whole(data: np.ndarray, ref: TensorRef, target: np.dtype) -> tuple[np.ndarray, str | None]:
    peak = _finite_peak(data) if _may_overflow(data.dtype, target) else 0.0
    store, note = _decide(ref, data.dtype, target, peak)
    return _cast_to(data, store, note)


def _cast_checked(data: np.ndarray, ref: TensorRef, target: np.dtype) -> tuple[np.ndarray, str | None]:
    peak = _finite_peak(data) if _may_overflow(data.dtype, target) else 0.0
    if peak > _finfo_max(target):
        raise CastOverflowError(ref.source_name, peak, DTYPE_NAMES[target])
    return _cast_to(data, target, None)


def _cast_to(data: np.ndarray, store: np.dtype, note: str | None) -> tuple[np.ndarray, str | None]:
    if data.dtype == store:
        return data, note
    # Direct, also for bfloat16 -> float16: ml_dtypes casts it 2.5x faster than via float32, with
    # the same bits for every non-NaN value (tests/test_codec.py checks all 65,536); NaNs stay NaNs
    # of the same sign but become the canonical quiet NaN instead of keeping payload bits.
    return data.astype(store), note


def _decide(ref: TensorRef, source: np.dtype, target: np.dtype, peak: float) -> tuple[np.dtype, str | None]:
    """The dtype to store and a warning, given the tensor's largest finite magnitude."""
    if peak <= _finfo_max(target):
        return target, None
    store = _fallback(source, peak)
    return store, (
        f"tensor {ref.source_name!r} has values up to {peak:.6g}, beyond {DTYPE_NAMES[target]}'s "
        f"range; stored as {DTYPE_NAMES[store]} instead"
    )


def _may_overflow(source: np.dtype, target: np.dtype) -> bool:
    return _finfo_max(target) < _finfo_max(source)


def _tensor_peak(ref: TensorRef, step: int) -> float:
    """Largest finite magnitude of a whole tensor, read piece by piece."""
    step = max(1, step)
    return max(
        (_finite_peak(ref.read(start, min(start + step, ref.numel))) for start in range(0, ref.numel, step)),
        default=0.0,
    )


def _is_float(dtype: np.dtype) -> bool:
    return dtype in DTYPE_NAMES and DTYPE_NAMES[dtype].startswith(("float", "bfloat"))


def _finite_peak(data: np.ndarray) -> float:
    if data.size == 0:
        return 0.0
    values = data.astype(np.float32) if data.dtype == NUMPY_DTYPES["bfloat16"] else data
    lo, hi = float(values.min()), float(values.max())
    if math.isfinite(lo) and math.isfinite(hi):
        return max(-lo, hi)
    finite = values[np.isfinite(values)]
    return float(np.abs(finite).max()) if finite.size else 0.0


def _finfo_max(dtype: np.dtype) -> float:
    return float(ml_dtypes.finfo(dtype).max)


def _fallback(source: np.dtype, peak: float) -> np.dtype:
    float32 = NUMPY_DTYPES["float32"]
    if source.itemsize < 4 or (source.itemsize > 4 and peak <= _finfo_max(float32)):
        return float32
    return source
