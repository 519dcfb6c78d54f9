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
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from streamconv._version import __version__
from streamconv.constants import (
    DEFAULT_COMPRESSION,
    DEFAULT_WORKERS,
    check_codec,
    check_workers,
)
from streamconv.dtypes import by_numpy
from streamconv.format import codec
from streamconv.format.columns import Encoded, row_group_columns
from streamconv.format.hashing import FileHasher
from streamconv.format.schema import checksum, schema_for, version_for
from streamconv.workers import Answer, DaemonWorkers

__all__ = ["Piece", "WeightsWriter", "WriteSummary", "encode_loaded", "row_group_bytes_for"]

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
        chunks_xxh3: :func:`~streamconv.format.schema.chunks_digest` of the rows written, in order:
            the file's identity, which a split index records (a reader checks it for free).
    """

    tensor_count: int = 0
    chunk_count: int = 0
    parameter_count: int = 0
    raw_bytes: int = 0
    data_bytes: int = 0
    stored_dtypes: dict[str, str] = field(default_factory=dict)
    chunks_xxh3: int = 0


def row_group_bytes_for(source_bytes: int) -> int:
    """Row-group size for a conversion of ``source_bytes``: 1 MiB, more for very large models."""
    return min(MAX_ROW_GROUP_BYTES, max(ROW_GROUP_BYTES, source_bytes // TARGET_ROW_GROUPS))


def encode_loaded(data: Any, compression: str, level: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The payloads stored for a loaded piece: its ``data``, and a quantized piece's (``(codes,
    scales, block)``) ``scales`` (``None`` otherwise); the writer's rule, which a dry run's estimate
    follows too. int8 codes may be nibble-split (format version 5); nothing else is."""
    if isinstance(data, tuple):
        codes, scales, _ = data
        return codec.encode(codes, compression, level, nibbles=True), codec.encode(scales, compression, level)
    return codec.encode(data, compression, level), None


class WeightsWriter:
    """Writes a streamconv weights file.

    Args:
        path: Final path of the Parquet file.
        compression: ``zstd`` or ``none``.
        level: ``None`` for the coder tuned per byte plane, or a zstd level -7 to 22 for every plane.
        workers: Threads that encode chunks.
        row_group_bytes: Pending encoded bytes that close a row group.
        quantized: Write format version 5, whose rows may hold int8 codes with their scales.

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
        self._rows: list[tuple[Piece, Encoded]] = []
        self._pending_bytes = 0
        self._digest = xxhash.xxh3_64()

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
        # The name as bytes: Arrow encodes a str as strict UTF-8, which a folder name need not be.
        self._sink = pa.BufferedOutputStream(pa.OSFile(os.fsencode(self._partial), mode="wb"), _SINK_BUFFER)
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

    def _encode(self, piece: Piece) -> Encoded:
        # Runs in a worker thread: the piece is read, cast and compressed here, and its array is
        # dropped on return, so the queue holds descriptions and payloads, never arrays.
        data = piece.load(scratch=True)  # encoded at once, before this thread loads again
        if isinstance(data, tuple) and not self.quantized:
            raise ValueError(f"{piece!r} is quantized; write it with WeightsWriter(..., quantized=True)")
        payload, coded = encode_loaded(data, self.compression, self.level)
        if coded is not None:
            codes, scales, block = data
            return Encoded("int8", codes.nbytes + scales.nbytes, payload, checksum(payload), None, block, coded,
                            checksum(coded))
        return Encoded(by_numpy(data.dtype).name, data.nbytes, payload, checksum(payload), piece.note_for(data))

    def _encoded(self, chunks: Iterable[P]) -> Iterator[tuple[P, Encoded]]:
        # On an error or an interrupt the queued chunks are skipped and the running ones are not
        # waited for: the workers only read and encode; this thread writes.
        pending: deque[tuple[P, Answer[Encoded]]] = deque()
        with DaemonWorkers(self.workers, "streamconv-encode") as pool:
            for piece in chunks:
                pending.append((piece, pool.submit(self._encode, piece)))
                if len(pending) > QUEUE_PER_WORKER * self.workers:
                    done, answer = pending.popleft()
                    yield done, answer.get()
            while pending:
                done, answer = pending.popleft()
                yield done, answer.get()

    def _add(self, piece: Piece, encoded: Encoded) -> None:
        summary = self.summary
        if piece.index == 0:
            summary.tensor_count += 1
            summary.parameter_count += piece.ref.numel
            summary.stored_dtypes[piece.name] = encoded.dtype
        summary.chunk_count += 1
        summary.raw_bytes += encoded.nbytes
        summary.data_bytes += len(encoded.payload) + len(encoded.scales)
        self._digest.update(encoded.checksum.to_bytes(8, "little"))
        if self.quantized:  # its rows' identity holds their scales too (schema.chunks_digest)
            self._digest.update(encoded.scales_checksum.to_bytes(8, "little"))
        summary.chunks_xxh3 = self._digest.intdigest()
        self._rows.append((piece, encoded))
        self._pending_bytes += len(encoded.payload) + len(encoded.scales)
        if self._pending_bytes >= self.row_group_bytes or len(self._rows) >= MAX_ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        table = pa.table(row_group_columns(self._rows, self.quantized), schema=self.schema)
        assert self._writer is not None
        self._writer.write_table(table, row_group_size=len(self._rows))
        assert self._hasher is not None
        self._hasher.grown()
        self._rows.clear()
        self._pending_bytes = 0

