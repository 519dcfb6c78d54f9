"""int8 storage: which tensors are quantized, the quantization rule, and the stage that applies it.

The rule (docs/format.md, "int8 quantization"), for a 2-D floating tensor of ``cols`` columns:

- each row is cut into blocks of :data:`BLOCK` consecutive elements (the last block of a row holds
  ``cols % BLOCK`` when that is not 0); the values are taken as float32 (exact from float16 and
  bfloat16; float64 is rounded to float32 first);
- a block's scale is ``float16(absmax / 127)``, the float32 division rounded to nearest even;
- a code is ``clip(rint(x / float32(scale)), -127, 127)`` (float32 division, ties to even), and 0
  in a block whose scale is 0;
- a chunk's quantization error is ``sqrt(sum((x - code * scale)**2) / sum(x**2))`` (0 for an
  all-zero chunk); a tensor with a chunk beyond :data:`ERROR_BUDGET`, or a value that is not finite,
  or a scale beyond float16's range, is kept in float16 instead (:class:`QuantizationBudgetError`).

:func:`quantize_rows` is the rule; ``streamconv validate`` re-derives it from the documentation
(streamconv.tools.validate.weights), not by calling this module.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamconv.buffers import thread_buffer
from streamconv.dtypes import DType, by_name, by_numpy
from streamconv.errors import QuantizationBudgetError
from streamconv.sources.ref import TensorRef
from streamconv.stages.names import matches_any
from streamconv.stages.pieces import TensorChunk

__all__ = ["BLOCK", "ERROR_BUDGET", "MIN_ELEMENTS", "QuantizedChunk", "kept_by", "quantize", "quantize_rows",
           "keep_float_warnings", "quantizable", "record"]

#: Elements per block along a row (the input dimension of a linear layer's ``[out, in]`` weight),
#: chosen by measurement on the real all-MiniLM-L6-v2 (docs/benchmarks.md, "int8 storage").
BLOCK = 64
#: Smallest 2-D tensor quantized; smaller ones (token-type embeddings...) stay float16.
MIN_ELEMENTS = 16384
#: Largest relative RMS quantization error of a chunk before its tensor is kept in float16: 2.5x
#: the worst chunk measured, 0.0079 on the real MiniLM (encoder.layer.2.output.dense.weight); the
#: synthetic BERT-base, CLIP and Whisper gave 0.0060 at most. The rule's ceiling is 8/254 = 0.031
#: (a block of one value and 63 at half a step), so only such blocks, or non-finite values, fall back.
ERROR_BUDGET = 0.02
_INT8 = by_name("int8")
_FLOAT16 = by_name("float16")


def quantizable(shape: tuple[int, ...], dtype: DType) -> bool:
    """Whether a tensor of ``shape`` and ``dtype`` is a weight matrix the int8 policy quantizes."""
    return dtype.is_float and len(shape) == 2 and shape[1] >= BLOCK and math.prod(shape) >= MIN_ELEMENTS


def quantize_rows(values: np.ndarray, cols: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The rule (module docstring) on whole rows: ``(codes int8, scales float16, error)``.

    Args:
        values: A 1-D float array of whole rows of ``cols`` elements.
        cols: Row length.

    Returns:
        Codes in ``values``' order (a thread buffer: valid until this thread quantizes again), the
        scales row by row (``rows * ceil(cols / BLOCK)``) and the chunk's relative RMS error
        (``inf`` for non-finite values or scales).
    """
    rows = values.size // cols
    blocks = -(-cols // BLOCK)
    padded = blocks * BLOCK
    if _KERNEL is not None and padded == cols and values.dtype == np.float32 and values.flags.c_contiguous:
        codes = thread_buffer("quantize-codes", values.size)[: values.size].view(np.int8)
        scales = np.empty(rows * blocks, np.float16)
        sums = _KERNEL(values, codes, scales)
        if sums is None:
            return codes, scales, math.inf
        return codes, scales, math.sqrt(sums[1] / sums[0]) if sums[0] else 0.0
    if padded == cols and values.dtype == np.float32:
        x = values.reshape(rows, cols)
    else:  # a short last block: zeros after it change neither its absmax nor the error
        x = thread_buffer("quantize-x", 4 * rows * padded)[: 4 * rows * padded].view(np.float32).reshape(rows, padded)
        x[:, :cols] = values.reshape(rows, cols)
        x[:, cols:] = 0
    grid = x.reshape(rows, blocks, BLOCK)
    q = thread_buffer("quantize-q", 4 * rows * padded)[: 4 * rows * padded].view(np.float32).reshape(rows, blocks, BLOCK)
    absmax = np.abs(grid, out=q).max(axis=2)  # |x|, never max(x, -x): that gives -0.0 for a block of zeros
    with np.errstate(over="ignore", invalid="ignore"):
        scales = (absmax / np.float32(127)).astype(np.float16)
    wide = scales.astype(np.float32)
    if not np.isfinite(wide).all():
        return np.zeros(0, np.int8), scales, math.inf
    # A zero scale divides by 1 instead: its block's values are below 127 * 2**-25, so their codes are 0.
    safe = np.where(wide == 0, np.float32(1), wide)[:, :, None]
    np.divide(grid, safe, out=q)
    np.rint(q, out=q)
    np.clip(q, -127, 127, out=q)
    codes = thread_buffer("quantize-codes", rows * cols)[: rows * cols].view(np.int8).reshape(rows, cols)
    codes[...] = q.reshape(rows, padded)[:, :cols]
    # The error: q becomes code * scale - x.
    np.multiply(q, wide[:, :, None], out=q)
    np.subtract(q, grid, out=q)
    energy = float(np.dot(x.reshape(-1), x.reshape(-1)))
    error = float(np.dot(q.reshape(-1), q.reshape(-1)))
    return codes.reshape(-1), scales.reshape(-1), math.sqrt(error / energy) if energy else 0.0


def _load_kernel() -> Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[float, float] | None] | None:
    """The compiled rule (streamconv/stages/_halfcast.c, 64-element blocks), if built for this CPU:
    the same codes and scales as the numpy path, in one pass (its error sums in float32 per block)."""
    if BLOCK != 64:
        return None
    try:
        from streamconv.stages import _halfcast
    except ImportError:
        return None
    if not _halfcast.supported() or not hasattr(_halfcast, "quantize_int8"):
        return None
    return lambda values, codes, scales: _halfcast.quantize_int8(values, codes, scales.view(np.uint16))


_KERNEL = _load_kernel()


@dataclass(frozen=True)
class QuantizedChunk:
    """Whole rows of a 2-D tensor, stored as int8 codes with float16 block scales.

    The writer's piece protocol (streamconv.format.writer.Piece): :meth:`load` gives
    ``(codes, scales, block)`` instead of an array.
    """

    piece: TensorChunk

    @property
    def name(self) -> str:
        return self.piece.name

    @property
    def ref(self) -> TensorRef:
        return self.piece.ref

    @property
    def index(self) -> int:
        return self.piece.index

    @property
    def count(self) -> int:
        return self.piece.count

    @property
    def start(self) -> int:
        return self.piece.start

    @property
    def element_count(self) -> int:
        return self.piece.element_count

    @property
    def store_as(self) -> DType | None:
        return _INT8

    def load(self, *, scratch: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
        """Read the rows and quantize them: ``(codes, scales, BLOCK)``.

        Raises:
            QuantizationBudgetError: the chunk's error is beyond :data:`ERROR_BUDGET` (or not finite).
        """
        ref = self.piece.ref
        values = ref.read(self.start, self.piece.stop,
                          buffer=thread_buffer("read", self.element_count * ref.dtype.itemsize))
        if values.dtype != np.float32:
            values = values.astype(np.float32)  # exact from float16 and bfloat16
        codes, scales, error = quantize_rows(values, ref.shape[1])
        if not error <= ERROR_BUDGET:
            raise QuantizationBudgetError(ref.source_name, error, ERROR_BUDGET)
        return codes if scratch else codes.copy(), scales, BLOCK

    def note_for(self, stored: object) -> str | None:
        return None

    def __repr__(self) -> str:
        return f"QuantizedChunk({self.name!r}, {self.index + 1}/{self.count})"


def quantize(
    chunks: Iterable[TensorChunk], *, keep_float: Iterable[str] = (), fallback: Iterable[str] = (),
) -> Iterator[TensorChunk | QuantizedChunk]:
    """The int8 policy on the pieces of :func:`~streamconv.stages.pieces.cast` to ``float16``:
    weight matrices (:func:`quantizable`) become :class:`QuantizedChunk` pieces of whole rows (at most
    the pieces' size, at least one row); everything else passes unchanged (float16, integers kept).

    Args:
        chunks: Pieces cast to float16 (a tensor's pieces together and in order).
        keep_float: Glob patterns over source names of tensors kept in float16.
        fallback: Source names kept in float16 because their error was beyond the budget.

    Returns:
        The pieces to write; nothing is read.
    """
    keep, fell = list(keep_float), set(fallback)
    pending: list[TensorChunk] = []
    for piece in chunks:
        ref = piece.ref
        source = by_numpy(ref.dtype)
        if ref.source_name in fell or not quantizable(ref.shape, source) or kept_by(ref.source_name, keep):
            yield piece
            continue
        pending.append(piece)
        if piece.index == piece.count - 1:
            yield from _rows(pending)
            pending = []


def _rows(pieces: list[TensorChunk]) -> Iterator[QuantizedChunk]:
    """A tensor's pieces cut again on row boundaries, about as large."""
    ref, cols = pieces[0].ref, pieces[0].ref.shape[1]
    per = max(1, max(p.element_count for p in pieces) // cols) * cols
    count = max(1, -(-ref.numel // per))
    base = dataclasses.replace(pieces[0], store_as=_FLOAT16, mode="store", note=None)
    for index in range(count):
        start = index * per
        yield QuantizedChunk(dataclasses.replace(base, index=index, count=count, start=start,
                                                 stop=min(ref.numel, start + per)))


def kept_by(source_name: str, keep_float: Iterable[str]) -> str | None:
    """The first ``keep_float`` glob pattern that matches ``source_name``, or ``None``."""
    return next((p for p in keep_float if matches_any(source_name, [p])), None)


def record(refs: Sequence[TensorRef], stored: dict[str, str], keep_float: Sequence[str], fallback: dict[str, str]
           ) -> tuple[dict[str, Any], list[str]]:
    """metadata.json's ``quantization`` (the rule, and the weight matrices kept in float16 with why),
    and the conversion's warnings: a tensor kept for its error, a ``--keep-float`` matching nothing."""
    kept, warnings = [], []
    for ref in refs:
        if not quantizable(ref.shape, ref.stored_type) or stored.get(ref.name) == "int8":
            continue
        pattern = kept_by(ref.source_name, keep_float)
        reason = fallback.get(ref.source_name) or (f"--keep-float {pattern}" if pattern else "kept")
        kept.append({"name": ref.source_name, "reason": reason})
        if ref.source_name in fallback:
            warnings.append(f"tensor {ref.source_name!r} kept in float16: its {reason}")
    return {
        "codes": "int8", "scales": "float16", "block": BLOCK, "rounding": "nearest, ties to even",
        "scale": "max|block| / 127", "error_budget": ERROR_BUDGET, "min_elements": MIN_ELEMENTS,
        "quantized": sum(1 for d in stored.values() if d == "int8"), "kept_float16": kept,
    }, warnings + keep_float_warnings(refs, keep_float)


def keep_float_warnings(refs: Sequence[TensorRef], keep_float: Sequence[str]) -> list[str]:
    """One warning per ``--keep-float`` pattern that matches no weight matrix of the conversion."""
    matrices = [r.source_name for r in refs if quantizable(r.shape, r.stored_type)]
    return [f"--keep-float {p!r} matches no weight matrix (2-D, at least {MIN_ELEMENTS} elements); "
            "check the source names with `streamconv inspect --source-names`"
            for p in keep_float if not any(kept_by(n, [p]) for n in matrices)]
