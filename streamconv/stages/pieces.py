"""The stages on pieces of tensors: pure generators that take an iterable and return an iterator.

:func:`~streamconv.stages.names.select` and :func:`~streamconv.stages.names.rename` work on lazy
:class:`~streamconv.sources.ref.TensorRef` handles and read nothing. ``chunk`` cuts each tensor
into :class:`TensorChunk` values of at most ``chunk_size`` bytes, and ``cast`` says which dtype
each is stored in. A chunk is an immutable description: its bytes are read and cast only by
:meth:`TensorChunk.load`, which the writer's worker threads call.
Compose them::

    chunks = cast(chunk(rename(select(checkpoint, include=["encoder.*"]), RULES)), "float16")

Memory stays bounded by the writer's queue of chunks, whatever the size of the model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from streamconv.buffers import thread_buffer
from streamconv.constants import DEFAULT_CHUNK_SIZE, check_chunk_size, check_dtype
from streamconv.dtypes import DType, by_name, by_numpy
from streamconv.errors import CastOverflowError
from streamconv.sources.ref import TensorRef
from streamconv.stages.casting import (
    below_max,
    cast_array,
    cast_with_bound,
    fallback_dtype,
    finite_peak,
    overflow_note,
    tensor_peak,
)

__all__ = ["TensorChunk", "chunk", "cast"]

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
        stored, known_below = cast_with_bound(data, self.store_as, "cast" if scratch else None)
        source = by_numpy(data.dtype)
        if self.mode == "store" or self.store_as.max >= source.max:
            return stored
        if known_below if known_below is not None else below_max(stored, self.store_as):
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
        return overflow_note(self.ref.source_name, self.store_as.name, by_numpy(stored.dtype), finite_peak(stored))

    def __repr__(self) -> str:
        return f"TensorChunk({self.name!r}, {self.index + 1}/{self.count}, elements [{self.start}, {self.stop}))"

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
    check_chunk_size(chunk_size)
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
        dtype: ``float16``, ``bfloat16``, ``float32`` or ``keep``; ``int8`` casts to float16 (what
            :func:`streamconv.stages.quantize.quantize` does not quantize is stored so).
        prescan: Scan tensors of several pieces before casting them.

    Returns:
        Pieces that say the dtype to store.

    Raises:
        InvalidOptionError: an unknown ``dtype``.
    """
    check_dtype(dtype)
    target = by_name("float16" if dtype == "int8" else dtype)
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
                peak = tensor_peak(piece.ref, piece.element_count) if target.max < source.max else 0.0
                store = target if peak <= target.max else fallback_dtype(source, peak)
                note = None if store == target else overflow_note(piece.ref.source_name, target.name, store, peak)
                decided = (piece.ref, store, note)
            note = decided[2] if piece.index == 0 else None
            yield dataclasses.replace(piece, store_as=decided[1], mode="store", note=note)
