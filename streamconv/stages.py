"""The pipeline's stages: pure generators that take an iterable and return an iterator.

``select`` and ``rename`` work on lazy :class:`~streamconv.source.TensorRef` handles and read
nothing. ``chunk`` reads each tensor in pieces of at most ``chunk_size`` bytes and yields
:class:`TensorChunk` objects holding the data; ``cast`` converts those pieces. Compose them::

    chunks = cast(chunk(rename(select(checkpoint, include=["encoder.*"]), RULES)), "float16")

Memory stays bounded by a few chunks whatever the size of the model.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from streamconv.constants import DEFAULT_CHUNK_SIZE, DTYPE_CHOICES, DTYPE_NAMES, NUMPY_DTYPES
from streamconv.errors import InvalidOptionError, PlanError
from streamconv.source import TensorRef

__all__ = ["TensorChunk", "RenameRule", "select", "rename", "chunk", "cast", "matches_any"]

#: A rename rule: a regular expression and its replacement, as for :func:`re.sub`.
RenameRule = tuple[str, str]


@dataclass(frozen=True)
class TensorChunk:
    """A contiguous piece of one tensor's flattened (C-order) elements.

    Attributes:
        ref: The tensor this piece belongs to (name, source name, shape, source dtype).
        index: Position of this piece among the tensor's pieces, from 0.
        count: How many pieces the tensor has.
        start: Index of the first element of this piece in the flattened tensor.
        data: The elements, 1-D; its dtype is the dtype to store.
        note: Set by :func:`cast` on a tensor's first piece when the requested dtype could not be
            used (a warning for the user).
    """

    ref: TensorRef
    index: int
    count: int
    start: int
    data: np.ndarray
    note: str | None = None

    @property
    def name(self) -> str:
        """The name the tensor is stored under."""
        return self.ref.name


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
    """Read each tensor in pieces of at most ``chunk_size`` bytes.

    A tensor smaller than ``chunk_size`` is one piece; an empty tensor is one empty piece. Only
    one piece is read at a time.

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
            yield TensorChunk(ref=ref, index=index, count=count, start=start, data=ref.read(start, stop))


def cast(chunks: Iterable[TensorChunk], dtype: str) -> Iterator[TensorChunk]:
    """Cast floating-point pieces to ``dtype``; integer and bool pieces pass unchanged.

    The cast is numpy's (round to nearest even). A tensor with a finite value beyond the target's
    range (``|x| > 65504`` for float16) would become ``inf``; such a tensor is kept in float32
    instead (or its source dtype if that is narrower or it does not fit float32 either) and its
    first piece carries a ``note``. For a tensor of several pieces, the whole tensor is scanned
    before its first piece is cast, so all its pieces share one dtype.

    Args:
        chunks: Pieces from :func:`chunk`.
        dtype: ``float16``, ``bfloat16``, ``float32`` or ``keep``.

    Returns:
        The pieces, with data in the stored dtype.
    """
    if dtype not in DTYPE_CHOICES:
        raise InvalidOptionError(
            f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}"
        )
    if dtype == "keep":
        yield from chunks
        return
    target = NUMPY_DTYPES[dtype]
    decided: tuple[TensorRef, np.dtype] | None = None
    for piece in chunks:
        source = piece.data.dtype
        if source == target or not _is_float(source):
            yield piece
            continue
        note = None
        if decided is None or decided[0] is not piece.ref:
            peak = _peak_beyond(piece, target)
            store = target if peak is None else _fallback(source, peak)
            if peak is not None:
                note = (
                    f"tensor {piece.ref.source_name!r} has values up to {peak:.6g}, beyond "
                    f"{DTYPE_NAMES[target]}'s range; stored as {DTYPE_NAMES[store]} instead"
                )
            decided = (piece.ref, store)
        store = decided[1]
        data = piece.data if store == source else _astype(piece.data, store)
        cast_piece = TensorChunk(piece.ref, piece.index, piece.count, piece.start, data, note)
        del piece  # free the source-dtype buffer now, not when the consumer asks for the next piece
        yield cast_piece


def _is_float(dtype: np.dtype) -> bool:
    return dtype in DTYPE_NAMES and DTYPE_NAMES[dtype].startswith(("float", "bfloat"))


def _astype(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if data.dtype == NUMPY_DTYPES["bfloat16"] and dtype != NUMPY_DTYPES["float32"]:
        # bfloat16 -> float32 is exact, so this equals a direct cast and works in every numpy.
        data = data.astype(np.float32)
    return data.astype(dtype)


def _peak_beyond(piece: TensorChunk, target: np.dtype) -> float | None:
    """The largest finite magnitude in the piece's tensor if it exceeds ``target``'s range."""
    limit = float(_finfo_max(target))
    if piece.count == 1:
        peak = _finite_peak(piece.data)
    else:
        # Scan the whole tensor once, piece by piece, so every piece gets the same dtype.
        step, total = max(1, len(piece.data)), piece.ref.numel
        peak = _finite_peak(piece.data)
        for start in range(0, total, step):
            if start != piece.start:
                peak = max(peak, _finite_peak(piece.ref.read(start, min(start + step, total))))
    return peak if peak > limit else None


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
    if dtype == NUMPY_DTYPES["bfloat16"]:
        import ml_dtypes

        return float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    return float(np.finfo(dtype).max)


def _fallback(source: np.dtype, peak: float) -> np.dtype:
    float32 = NUMPY_DTYPES["float32"]
    if source.itemsize < 4 or (source.itemsize > 4 and peak <= _finfo_max(float32)):
        return float32
    return source
