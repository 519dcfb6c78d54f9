"""The Arrow columns of one row group as the writer writes it, built from numpy buffers without a
copy of the large payloads (and without ``pa.array``, which imports pandas or numpy.ma).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from streamconv.format.schema import checksum

__all__ = ["Encoded", "row_group_columns"]

# Payloads at least this large go to Parquet as they are (a zero-copy Arrow buffer each); smaller
# ones of a row group are joined into one buffer first, so a row group of many small tensors is not
# written as a thousand one-value arrays.
_ZERO_COPY_BYTES = 64 * 1024
_NO_SCALES, _NO_SCALES_CHECKSUM = np.zeros(0, np.uint8), checksum(b"")  # a row without scales


class Encoded(NamedTuple):
    """One chunk once encoded: what its row holds besides the piece's own facts."""

    dtype: str
    nbytes: int
    payload: np.ndarray  # uint8
    checksum: int
    note: str | None
    block: int = 0  # version 4: the quantization block, 0 when not quantized
    scales: np.ndarray = _NO_SCALES  # their payload, coded as data is
    scales_checksum: int = _NO_SCALES_CHECKSUM


def row_group_columns(rows: Sequence[tuple[Any, Encoded]], quantized: bool) -> list[pa.Array | pa.ChunkedArray]:
    """The columns of one row group, in SCHEMA order, built without a copy of the large payloads."""
    pieces = [piece for piece, _ in rows]
    encoded = [enc for _, enc in rows]
    sizes = np.fromiter((len(e.payload) for e in encoded), np.int64, len(rows))
    shapes = [piece.ref.shape for piece in pieces]
    shape_offsets = np.zeros(len(rows) + 1, np.int32)
    np.cumsum([len(shape) for shape in shapes], out=shape_offsets[1:])
    dims = np.fromiter((d for shape in shapes for d in shape), np.int64, int(shape_offsets[-1]))
    columns = [
        _strings([p.name for p in pieces]),
        _strings([p.ref.source_name for p in pieces]),
        _strings([e.dtype for e in encoded]),
        _strings([p.ref.dtype_name for p in pieces]),
        pa.ListArray.from_arrays(_numeric(shape_offsets), _numeric(dims), type=pa.list_(pa.int64())),
        _numeric(np.fromiter((p.index for p in pieces), np.int32, len(rows))),
        _numeric(np.fromiter((p.count for p in pieces), np.int32, len(rows))),
        _numeric(np.fromiter((p.start for p in pieces), np.int64, len(rows))),
        _numeric(np.fromiter((p.element_count for p in pieces), np.int64, len(rows))),
        _data_column([e.payload for e in encoded]),
        _numeric(sizes),
        _numeric(np.fromiter((e.checksum for e in encoded), np.uint64, len(rows))),
    ]
    if quantized:  # version 4: block, scales, scales_bytes, scales_xxh3
        columns += [_numeric(np.fromiter((e.block for e in encoded), np.int32, len(rows))),
                    _data_column([e.scales for e in encoded]),
                    _numeric(np.fromiter((len(e.scales) for e in encoded), np.int64, len(rows))),
                    _numeric(np.fromiter((e.scales_checksum for e in encoded), np.uint64, len(rows)))]
    return columns


def _strings(values: list[str]) -> pa.Array:
    # from_buffers, not pa.array: pa.array(list) imports pandas when it is installed, to ask whether
    # the list is a pandas object (hundreds of ms and tens of MiB in every conversion).
    encoded = [value.encode() for value in values]
    offsets = np.zeros(len(encoded) + 1, np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return pa.StringArray.from_buffers(len(encoded), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded)))


def _numeric(values: np.ndarray) -> pa.Array:
    # from_buffers, not pa.array: pa.array(ndarray) imports numpy.ma (12 ms of every CLI run).
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _data_column(payloads: list[np.ndarray]) -> pa.ChunkedArray:
    """The ``data`` column: each large payload wrapped as it is, runs of small ones joined."""
    chunks, run = [], list[np.ndarray]()
    for payload in payloads:
        if len(payload) < _ZERO_COPY_BYTES:
            run.append(payload)
            continue
        if run:
            chunks.append(_binary(run))
            run = []
        chunks.append(_binary([payload]))
    if run:
        chunks.append(_binary(run))
    return pa.chunked_array(chunks, pa.large_binary())


def _binary(payloads: list[np.ndarray]) -> pa.Array:
    offsets = np.zeros(len(payloads) + 1, np.int64)
    np.cumsum([len(p) for p in payloads], out=offsets[1:])
    values = pa.py_buffer(payloads[0] if len(payloads) == 1 else b"".join(p.data for p in payloads))
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(payloads), [None, pa.py_buffer(offsets), values])
