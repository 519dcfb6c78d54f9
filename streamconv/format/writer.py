"""Write chunks as Parquet rows, one row per chunk, row group by row group.

The file is written under ``<name>.incomplete`` and renamed to its final name only when the
writer closes without an error; on an error the partial file is deleted. Chunks are encoded
(byte-plane split + zstd) by a small thread pool, a bounded number ahead of the one being
written, so memory stays at a few chunks.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamconv._version import __version__
from streamconv.constants import (
    DEFAULT_COMPRESSION,
    DEFAULT_WORKERS,
    WorkerPool,
    check_codec,
    check_workers,
)
from streamconv.dtypes import by_numpy
from streamconv.format import codec
from streamconv.format.hashing import FileHasher
from streamconv.format.schema import checksum, schema_for, version_for

__all__ = ["Piece", "WeightsWriter", "WriteSummary", "row_group_bytes_for"]

# Columns that keep Parquet statistics: ``name`` lets readers skip row groups when looking for one
# tensor. The data column has none (they would copy every value: 94 MB held for a 47 MB tensor).
STATISTICS_COLUMNS = ["name"]
# A row group closes once its encoded data reaches this size or this many rows: small tensors share
# a row group, a large chunk gets one of its own, and at most this much is buffered before writing.
ROW_GROUP_BYTES = 1024 * 1024
MAX_ROWS_PER_GROUP = 1024
# The Parquet writer keeps every row group's metadata in memory until the file is closed: ~11 KiB
# each (12 column chunks; measured writing 8,000 one-row groups, whatever the statistics, encodings
# or codecs), against ~1.4 KB in the footer. So for large models row groups grow to keep their
# count near this many: the 8.6 GB bf16 checkpoint gets 1,028 row groups, ~11 MiB of metadata,
# every model under ~2 GB keeps 1 MiB row groups. A buffered row group costs its own size, so past
# 16 MiB the count grows instead: a 70B-parameter model (140 GB in bf16, ~92 GB stored) gets ~5,500
# row groups, ~60 MiB of metadata. Most of the rest of the 8.6 GB peak (~175 MiB) is free space
# inside glibc's heaps. A fixed 256 KiB mmap threshold returned it (peak 129 MiB) but cost 7 million
# page faults and 30% more time on this VM, so it is not used.
TARGET_ROW_GROUPS = 2048
MAX_ROW_GROUP_BYTES = 16 * 1024 * 1024
# Chunks queued per worker thread. A queued chunk holds nothing until a worker loads it, and only
# its compressed payload once encoded; a deep queue keeps the workers busy while the main thread
# writes a row group (on BERT-base: 0.60 s with 1 per worker, 0.46 s with 8).
QUEUE_PER_WORKER = 8
# Payloads at least this large go to Parquet as they are (a zero-copy Arrow buffer each); smaller
# ones of a row group are joined into one buffer first, so a row group of many small tensors is not
# written as a thousand one-value arrays.
_ZERO_COPY_BYTES = 64 * 1024
# Arrow's writes reach the file through a buffer of this size; a larger write (every data page of a
# large chunk) goes straight through instead of being copied into it first.
_SINK_BUFFER = 64 * 1024


class TensorFacts(Protocol):
    """What the writer reads of a piece's tensor (a :class:`~streamconv.sources.ref.TensorRef` is one)."""

    @property
    def source_name(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype_name(self) -> str: ...
    @property
    def numel(self) -> int: ...
    @property
    def dtype(self) -> np.dtype: ...


class Piece(Protocol):
    """What the writer takes: a piece of one tensor's elements that loads them in their stored dtype.

    :class:`~streamconv.stages.pieces.TensorChunk` is one; the format side names only what it uses,
    so that it imports nothing from the pipeline.
    """

    @property
    def name(self) -> str: ...
    @property
    def ref(self) -> TensorFacts: ...
    @property
    def index(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def start(self) -> int: ...
    @property
    def element_count(self) -> int: ...
    @property
    def store_as(self) -> Any: ...
    def load(self, *, scratch: bool = False) -> Any: ...  # an array; int8: (codes, scales, block)
    def note_for(self, stored: np.ndarray) -> str | None: ...


#: The piece type a caller writes, handed back to its ``on_written``.
P = TypeVar("P", bound=Piece)


_NO_SCALES, _NO_SCALES_CHECKSUM = np.zeros(0, np.uint8), checksum(b"")  # a row without scales


class _Encoded(NamedTuple):
    dtype: str
    nbytes: int
    payload: np.ndarray  # uint8
    checksum: int
    note: str | None
    block: int = 0  # version 4: the quantization block, 0 when not quantized
    scales: np.ndarray = _NO_SCALES  # their payload, coded as data is
    scales_checksum: int = _NO_SCALES_CHECKSUM


@dataclass
class WriteSummary:
    """What a :class:`WeightsWriter` wrote.

    Attributes:
        tensor_count: Tensors written.
        chunk_count: Rows written.
        parameter_count: Elements over all tensors.
        raw_bytes: Bytes of the stored elements before compression.
        data_bytes: Bytes of the ``data`` column after compression.
        stored_dtypes: Stored dtype per tensor name.
    """

    tensor_count: int = 0
    chunk_count: int = 0
    parameter_count: int = 0
    raw_bytes: int = 0
    data_bytes: int = 0
    stored_dtypes: dict[str, str] = field(default_factory=dict)


def row_group_bytes_for(source_bytes: int) -> int:
    """Row-group size for a conversion of ``source_bytes``: 1 MiB, more for very large models."""
    return min(MAX_ROW_GROUP_BYTES, max(ROW_GROUP_BYTES, source_bytes // TARGET_ROW_GROUPS))


class WeightsWriter:
    """Writes a streamconv weights file.

    Args:
        path: Final path of the Parquet file.
        compression: ``zstd`` or ``none``.
        level: ``None`` for the coder tuned per byte plane, or a zstd level -7 to 22 for every plane.
        workers: Threads that encode chunks.
        row_group_bytes: Pending encoded bytes that close a row group.
        quantized: Write format version 4, whose rows may hold int8 codes with their scales.

    Example:
        >>> with WeightsWriter(out / "weights.parquet") as writer:
        ...     writer.write(cast(chunk(checkpoint), "float16"))
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        compression: str = DEFAULT_COMPRESSION,
        level: int | None = None,
        workers: int = DEFAULT_WORKERS,
        row_group_bytes: int = ROW_GROUP_BYTES,
        quantized: bool = False,
    ) -> None:
        check_codec(compression, level)
        check_workers(workers)
        self.path = Path(path)
        self.compression = compression
        self.level = level
        self.workers = workers
        self.row_group_bytes = row_group_bytes
        self.quantized, self.schema = quantized, schema_for(quantized)
        self.summary = WriteSummary()
        self._partial = self.path.with_name(self.path.name + ".incomplete")
        self.sha256: str | None = None  # hex digest of the file, once closed without an error
        self._writer: pq.ParquetWriter | None = None
        self._hasher: FileHasher | None = None
        self._sink: pa.BufferedOutputStream | None = None
        self._rows: list[tuple[Piece, _Encoded]] = []
        self._pending_bytes = 0

    def __enter__(self) -> WeightsWriter:
        schema = self.schema.with_metadata(
            {
                "streamconv.format_version": str(version_for(self.quantized)),
                "streamconv.version": __version__,
                "streamconv.compression": self.compression,
                "streamconv.byte_planes": "true",
            }
        )
        # A native sink: Arrow writes to the file without a Python call or a copy per write (through a
        # Python file object it took 0.3 s more CPU on BERT-large); the hasher reads the file back.
        self._sink = pa.BufferedOutputStream(pa.OSFile(str(self._partial), mode="wb"), _SINK_BUFFER)
        try:
            self._hasher = FileHasher(self._partial)
            self._writer = pq.ParquetWriter(
                self._sink,
                schema,
                # No Parquet codec: ``data`` carries its own, and the small columns of a row group are
                # tens of bytes, which zstd made larger and cost a fresh zstd context per column chunk.
                compression="none",
                use_dictionary=["name", "source_name", "dtype", "source_dtype"],
                write_statistics=STATISTICS_COLUMNS,
            )
        except BaseException:
            if self._hasher is not None:
                self._hasher.abandon()
            self._sink.close()
            self._partial.unlink(missing_ok=True)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._writer is not None and self._sink is not None and self._hasher is not None
        try:
            try:
                if exc_type is None:
                    self._flush()
                self._writer.close()
            finally:
                # Closed here, never by Arrow when the stream is destroyed: it would print a message
                # of its own after an interrupt or a full disk.
                self._sink.close()
            if exc_type is None:
                self.sha256 = self._hasher.hexdigest()
        except BaseException:
            self._hasher.abandon()
            self._partial.unlink(missing_ok=True)
            raise
        if exc_type is None:
            os.replace(self._partial, self.path)
        else:
            self._hasher.abandon()
            self._partial.unlink(missing_ok=True)

    def write(
        self,
        chunks: Iterable[P],
        on_written: Callable[[P, str | None], None] | None = None,
    ) -> WriteSummary:
        """Encode and write every chunk, in order.

        Args:
            chunks: Pieces from the stages; a tensor's pieces must come together and in order.
            on_written: Called with each piece and its note (a warning, or ``None``) once it is
                encoded (for progress bars and warnings).

        Returns:
            The running summary.
        """
        if self._writer is None:
            raise RuntimeError("use WeightsWriter as a context manager: `with WeightsWriter(...)`")
        for piece, encoded in self._encoded(chunks):
            self._add(piece, encoded)
            if on_written is not None:
                on_written(piece, encoded.note)
        return self.summary

    def _encode(self, piece: Piece) -> _Encoded:
        # Runs in a worker thread: the piece is read, cast and compressed here, and its array is
        # dropped on return, so the queue holds descriptions and payloads, never arrays.
        data = piece.load(scratch=True)  # encoded at once, before this thread loads again
        if isinstance(data, tuple):
            if not self.quantized:
                raise ValueError(f"{piece!r} is quantized; write it with WeightsWriter(..., quantized=True)")
            codes, scales, block = data
            payload, coded = (codec.encode(part, self.compression, self.level) for part in (codes, scales))
            return _Encoded("int8", codes.nbytes + scales.nbytes, payload, checksum(payload), None, block, coded,
                            checksum(coded))
        payload = codec.encode(data, self.compression, self.level)
        return _Encoded(by_numpy(data.dtype).name, data.nbytes, payload, checksum(payload), piece.note_for(data))

    def _encoded(self, chunks: Iterable[P]) -> Iterator[tuple[P, _Encoded]]:
        pool = WorkerPool(self.workers, thread_name_prefix="streamconv-encode")
        pending: deque[tuple[P, Future[_Encoded]]] = deque()
        try:
            for piece in chunks:
                future = pool.submit(self._encode, piece)
                pending.append((piece, future))
                if len(pending) > QUEUE_PER_WORKER * self.workers:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _add(self, piece: Piece, encoded: _Encoded) -> None:
        summary = self.summary
        if piece.index == 0:
            summary.tensor_count += 1
            summary.parameter_count += piece.ref.numel
            summary.stored_dtypes[piece.name] = encoded.dtype
        summary.chunk_count += 1
        summary.raw_bytes += encoded.nbytes
        summary.data_bytes += len(encoded.payload) + len(encoded.scales)
        self._rows.append((piece, encoded))
        self._pending_bytes += len(encoded.payload) + len(encoded.scales)
        if self._pending_bytes >= self.row_group_bytes or len(self._rows) >= MAX_ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        table = pa.table(_columns(self._rows, self.quantized), schema=self.schema)
        assert self._writer is not None
        self._writer.write_table(table, row_group_size=len(self._rows))
        assert self._hasher is not None
        self._hasher.grown()
        self._rows.clear()
        self._pending_bytes = 0


def _columns(rows: list[tuple[Piece, _Encoded]], quantized: bool) -> list[pa.Array | pa.ChunkedArray]:
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
