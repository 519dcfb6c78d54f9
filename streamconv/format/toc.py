"""One weights file's table of contents: read from its metadata columns, checked before any decoding.

Every tensor's chunks must tile its shape (indices, offsets and counts add up) before anything is
allocated, so a damaged shape is an error, never a huge allocation. :class:`WeightsPart` also
decodes a row group's chunks, checking each against its stored checksum first; an int8 chunk
(format 4) has its block checked with its rows, and its scales checked against its codes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamconv import _files
from streamconv.buffers import thread_buffer
from streamconv.constants import MAX_CHUNK_BYTES
from streamconv.dtypes import by_name
from streamconv.errors import FormatError, OutOfMemoryError
from streamconv.format import codec
from streamconv.format.arrow import STRINGS, distinct, first_rows, numbers, payloads, read_failure
from streamconv.format.entries import SCALES, Chunk, Entry, Expected, numel
from streamconv.format.index import Listed
from streamconv.format.quantized import decode_values, rows_problem
from streamconv.format.recycler import Recycler
from streamconv.format.schema import (
    FORMAT_VERSION,
    META_COLUMNS,
    MIN_ROW_BYTES,
    MIN_ROW_BYTES_V1,
    QUANT_COLUMNS,
    QUANT_SCHEMA,
    checksum,
    chunks_digest,
)
from streamconv.messages import quote
from streamconv.workers import Answer, DaemonWorkers

__all__ = ["OutputChanged", "WeightsPart"]

class OutputChanged(Exception):
    """A file is not the one the split index records (internal: :class:`~streamconv.format.reader.WeightsFile`
    reads again, then raises :class:`~streamconv.errors.OutputChangedError`)."""


class WeightsPart:
    """One open Parquet weights file: its format version, codec and checked table of contents.

    The file is opened once, as a regular file inside ``root`` (never a FIFO, never through a symlink
    leading out), and Arrow reads that very file (:func:`streamconv._files.same_file`), whatever is
    renamed over its path afterwards. ``listed`` is what a split index records of it: a file of
    another size or with other rows raises :class:`OutputChanged`. ``chunk_limit`` is the largest
    chunk accepted, in source bytes (the output's recorded chunk size).
    """

    def __init__(self, path: Path, index: int, entries: dict[str, Entry], expected: Expected, *,
                 root: Path | None = None, listed: Listed | None = None, chunk_limit: int = MAX_CHUNK_BYTES) -> None:
        self.path, self.index, self.entries = path, index, entries
        self.chunk_limit = chunk_limit
        self.started: list[str] = []  # tensors whose chunk 0 is in this file
        self._handle = _files.open_file(path, root=root)
        self.size = os.fstat(self._handle.fileno()).st_size
        if listed is not None and listed.bytes is not None and listed.bytes != self.size:
            raise OutputChanged(f"{path.name} is {self.size:,} bytes, the split index says {listed.bytes:,}")
        #: What to open to read this file again (verify's threads): the open file itself where possible.
        self.source: str | Path = _files.same_file(self._handle) or path
        try:
            # Without pre_buffer (on by default) reads go straight to the file, not through Arrow's
            # I/O threads and read cache: load's peak RSS on llama-bf16 1897 -> 1895 MiB.
            self.parquet = pq.ParquetFile(self.source, pre_buffer=False, read_dictionary=STRINGS)
            meta = self.parquet.schema_arrow.metadata or {}
        except (pa.ArrowException, OSError) as exc:
            raise read_failure(self.path, exc, "not a readable Parquet file", "opening it") from None
        version = meta.get(b"streamconv.format_version")
        if version is None or not version.isdigit():
            raise FormatError(self.path, "not a streamconv weights file (no streamconv.format_version)")
        self.version = int(version)
        if self.version > FORMAT_VERSION:
            raise FormatError(
                self.path,
                f"written in format version {self.version}, newer than this reader's {FORMAT_VERSION}; "
                "upgrade streamconv",
            )
        self.compression = meta.get(b"streamconv.compression", b"").decode("utf-8", "replace")
        if self.compression not in ("zstd", "none"):
            raise FormatError(self.path, f"unknown compression {quote(self.compression)}")
        self.has_checksums = self.version >= 2
        # Version 4: int8 chunks carry a block and scales (only int8 outputs have these columns).
        self.quantized = self.version >= 4 and "block" in self.parquet.schema_arrow.names
        self._check_schema()
        self.expected = self._table_of_contents(expected)
        if listed is not None and listed.chunks_xxh3 is not None and self._sums is not None \
                and chunks_digest(self._sums, self._scale_sums) != listed.chunks_xxh3:
            raise OutputChanged(f"{path.name} holds other rows than the split index records")

    def __del__(self) -> None:  # the handle lives as long as the part: verify's threads open it again by name
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()

    def _check_schema(self) -> None:
        """Every column a reader uses is there, with the type of :data:`QUANT_SCHEMA` (``data`` and
        ``scales`` may be binary)."""
        schema = self.parquet.schema_arrow
        for name in [*META_COLUMNS, "data", *(["data_bytes", "data_xxh3"] if self.has_checksums else []),
                     *(QUANT_COLUMNS if self.quantized else [])]:
            i = schema.get_field_index(name)
            if i < 0:
                raise FormatError(self.path, f"has no column {name!r} (or has it twice)")
            got, want = schema.field(i).type, QUANT_SCHEMA.field(name).type
            got = got.value_type if pa.types.is_dictionary(got) else got  # the string columns, read as stored
            if not (got == want or (name in ("data", "scales") and got == pa.binary())
                    or (want == pa.string() and got == pa.large_string())):
                raise FormatError(self.path, f"column {name!r} holds {got}, not {want}")

    def read_columns(self, group: int, columns: Sequence[str]) -> pa.Table:
        try:
            # One column: Arrow's threads have nothing to share out, and cost RSS (load: 1.5 MiB).
            table = self.parquet.read_row_group(group, columns=list(columns), use_threads=False)
        except (pa.ArrowException, OSError) as exc:
            raise read_failure(self.path, exc, f"row group {group} is damaged", f"reading row group {group}") from None
        for name in columns:
            if table.column(name).null_count:
                raise FormatError(self.path, f"row group {group}: column {name!r} holds a null")
        return table

    def group_rows(self, group: int) -> int:
        """Rows of ``group``, by the table of contents."""
        return int(self._group_ends[group + 1] - self._group_ends[group])

    def group_chunks(self, group: int) -> list[Chunk]:
        """The chunks of one row group, from the table of contents."""
        a, b = int(self._group_ends[group]), int(self._group_ends[group + 1])
        sums = self._sums[a:b].tolist() if self._sums is not None else [None] * (b - a)
        names = self._names
        chunks = [Chunk(names[i], c, o, n, x) for i, c, o, n, x in zip(
            self._name_ids[a:b].tolist(), self._index[a:b].tolist(), self._offset[a:b].tolist(),
            self._count[a:b].tolist(), sums, strict=True)]
        if self._scale_sums is None:
            return chunks
        return [c._replace(block=k, scales_checksum=x, scales_bytes=n) for c, k, x, n in zip(
            chunks, self._blocks[a:b].tolist(), self._scale_sums[a:b].tolist(), self._scale_bytes[a:b].tolist(),
            strict=True)]

    def _table_of_contents(self, expected: Expected) -> Expected:
        """Add this file's rows to the entries; returns what the next row (next file) must be.

        One read of the metadata columns of every row group; the data column is never touched. The
        rows are checked as columns (numpy), so memory is tens of bytes a row, and the number of rows
        is bounded by what the file's size can hold (:data:`MIN_ROW_BYTES`) before any is read.
        """
        metadata = self.parquet.metadata
        floor = MIN_ROW_BYTES if self.has_checksums else MIN_ROW_BYTES_V1
        if metadata.num_rows > self.size // floor:
            raise FormatError(self.path, f"declares {metadata.num_rows:,} rows, more than its {self.size:,} bytes "
                                         f"can hold (a row takes at least {floor} bytes)")
        sizes = ["data_bytes", "data_xxh3"] if self.has_checksums else ["data"]
        quant = ["block", "scales_bytes", "scales_xxh3"] if self.quantized else []
        try:
            # One thread: the rows are small, and Arrow's thread pool would stay resident (BERT-large:
            # load's peak RSS 739 -> 733 MiB).
            table = self.parquet.read(columns=[*META_COLUMNS, *sizes, *quant], use_threads=False).combine_chunks()
        except (pa.ArrowException, OSError) as exc:
            raise read_failure(self.path, exc, "the metadata columns are damaged", "reading its table of contents") \
                from None
        for name in table.column_names:
            column = table.column(name)
            nulls = column.null_count + (sum(c.values.null_count for c in column.chunks) if name == "shape" else 0)
            if nulls:
                raise FormatError(self.path, f"column {name!r} holds a null")
        group_rows = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        if sum(group_rows) != table.num_rows:
            raise FormatError(self.path, "the row groups do not add up to the rows")
        self._group_ends = np.concatenate([[0], np.cumsum(group_rows, dtype=np.int64)])
        group_of_row = np.repeat(np.arange(len(group_rows)), group_rows)
        if self.has_checksums:
            stored = numbers(table, "data_bytes")
            self._sums: np.ndarray | None = numbers(table, "data_xxh3")
        else:
            import pyarrow.compute as pc  # here: it costs every `streamconv convert` 20 ms

            stored = np.asarray(pc.binary_length(table.column("data")).to_pylist(), np.int64)
            self._sums = None
        self._scale_sums: np.ndarray | None = numbers(table, "scales_xxh3") if quant else None
        self._blocks = numbers(table, "block").astype(np.int64) if quant else np.zeros(len(stored), np.int64)
        self._scale_bytes = numbers(table, "scales_bytes") if quant else np.zeros(len(stored), np.int64)
        stored = stored + self._scale_bytes  # an int8 tensor's stored bytes count its scales
        self._name_ids, self._names = distinct(table, "name", self.path)
        self._index = numbers(table, "chunk_index").astype(np.int64)
        self._offset = numbers(table, "element_offset")
        self._count = numbers(table, "element_count")
        chunk_counts = numbers(table, "chunk_count")
        return self._check_rows(table, stored, chunk_counts, group_of_row, expected)

    def _check_rows(self, table: pa.Table, stored: np.ndarray, chunk_counts: np.ndarray, group_of_row: np.ndarray,
                    expected: Expected) -> Expected:
        """Check that the rows tile their tensors, in order, and build the entries of those they start.

        Each row must continue the tensor before it (same name, next chunk index, offset at the
        elements so far, same chunk count) or start one (chunk 0). The first wrong row is reported.
        """
        index, offset, count, name_ids = self._index, self._offset, self._count, self._name_ids
        rows = len(index)
        limit = max(1, self.chunk_limit)
        if rows and (count.min() < 0 or count.max() > limit):
            row = int(np.flatnonzero((count < 0) | (count > limit))[0])
            raise FormatError(self.path, f"tensor {quote(self._names[name_ids[row]])}: chunk {index[row]} "
                                         f"declares {count[row]:,} elements, more than a chunk of this output holds "
                                         f"({limit:,} bytes)" if count[row] > 0 else
                                         f"tensor {quote(self._names[name_ids[row]])}: chunk {index[row]} "
                                         "declares a negative element count")
        starts = np.flatnonzero(index == 0)
        lead = int(starts[0]) if len(starts) else rows  # rows continuing the previous file's last tensor
        bounds = [0, *starts.tolist(), rows] if lead else [*starts.tolist(), rows]
        before = np.cumsum(count) - count  # elements before each row (no overflow: counts are bounded)
        first = np.repeat(np.array(bounds[:-1], dtype=np.int64), np.diff(bounds))
        lead_entry = self.entries[expected[0]] if expected is not None and lead else None
        want_index = np.arange(rows) - first
        want_offset = before - before[first]
        want_name = name_ids[first]
        want_chunks = chunk_counts[first]
        if lead:
            if expected is None:
                raise FormatError(self.path, f"tensor {quote(self._names[name_ids[0]])}: chunk {index[0]} "
                                             "out of order or missing")
            assert lead_entry is not None
            want_index[:lead] += expected[1]
            want_offset[:lead] += expected[2]
            want_name[:lead] = self._names.index(expected[0]) if expected[0] in self._names else -1
            want_chunks[:lead] = lead_entry.row["chunk_count"]
        elif expected is not None and rows:
            self.finish_entry(self.entries[expected[0]], expected)
        order = (index != want_index) | (offset != want_offset) | (name_ids != want_name)
        disagree = chunk_counts != want_chunks
        bad = np.flatnonzero(order | disagree)
        first_bad = int(bad[0]) if len(bad) else rows
        # Tensors in order: each checked as it starts (name, dtype, shape), and once complete.
        heads = first_rows(table, starts, self._name_ids, self._names, self.path)
        # Per tensor (segment of rows), computed at once: elements, stored bytes, largest chunk, and
        # the first and last row group (rows and row groups are both in file order).
        cut = np.array(bounds[:-1], dtype=np.int64)
        elements, nbytes, largest = (np.add.reduceat(count, cut).tolist(), np.add.reduceat(stored, cut).tolist(),
                                     np.maximum.reduceat(count, cut).tolist()) if rows else ([], [], [])
        first_group = group_of_row[cut].tolist()
        last_group = group_of_row[np.minimum(np.array(bounds[1:]), first_bad) - 1].tolist() if rows else []
        for k in range(len(bounds) - 1):
            a, b = bounds[k], bounds[k + 1]
            if a >= first_bad:
                break
            if a == 0 and lead:
                assert lead_entry is not None and expected is not None
                entry, done = lead_entry, (expected[0], expected[1] + b, expected[2] + elements[k])
            else:
                head = heads[k - 1 if lead else k]
                if head["name"] in self.entries:
                    raise FormatError(self.path, f"tensor {quote(head['name'])} is stored twice")
                entry = self._new_entry(head)
                entry.block = int(self._blocks[a])
                self.entries[head["name"]] = entry
                self.started.append(head["name"])
                done = (head["name"], b - a, elements[k])
            if self.quantized or entry.block:
                self._check_blocks(entry, a, min(b, first_bad))
            per_chunk = max(1, self.chunk_limit // entry.source_itemsize)
            if largest[k] > per_chunk:
                row = a + int(np.argmax(count[a:b]))
                raise FormatError(self.path, f"tensor {quote(entry.row['name'])}: chunk {index[row]} holds "
                                             f"{count[row]:,} elements, more than the output's chunk size allows "
                                             f"({self.chunk_limit:,} bytes: {per_chunk:,} of {entry.row['source_dtype']})")
            for group in range(first_group[k], last_group[k] + 1):
                if not entry.groups or entry.groups[-1] != (self.index, group):
                    entry.groups.append((self.index, group))
            entry.stored_bytes += nbytes[k]
            if b < rows and b <= first_bad:  # the next tensor starts: this one must be complete
                self.finish_entry(entry, done)
            expected = done
        if first_bad < rows:
            row, name = first_bad, self._names[name_ids[first_bad]]
            what = "disagrees with chunk 0" if disagree[row] and not order[row] else "out of order or missing"
            raise FormatError(self.path, f"tensor {quote(name)}: chunk {index[row]} {what}")
        return expected

    def _check_blocks(self, entry: Entry, a: int, b: int) -> None:
        """Rows ``a:b`` of ``entry`` agree with its int8 block (:func:`~streamconv.format.quantized.rows_problem`)."""
        problem = rows_problem(entry.dtype.name, entry.shape, entry.block, int(self._index[a]), self._blocks[a:b],
                               self._offset[a:b], self._count[a:b], self._scale_bytes[a:b])
        if problem:
            raise FormatError(self.path, f"tensor {quote(entry.row['name'])}: {problem}")

    def _new_entry(self, row: dict[str, Any]) -> Entry:
        name, dtype = row["name"], by_name(row["dtype"])
        if dtype is None:
            raise FormatError(self.path, f"tensor {quote(name)} has unknown dtype {quote(row['dtype'])}")
        shape = tuple(row["shape"] or ())
        if any(d < 0 for d in shape) or row["chunk_count"] < 1:
            raise FormatError(self.path, f"tensor {quote(name)} has an impossible shape {list(shape)[:8]} "
                                         "or chunk count")
        return Entry(row, dtype, shape, self.path)

    def finish_entry(self, entry: Entry, expected: tuple[str, int, int]) -> None:
        _, chunks, elements = expected
        # Checked before any array is allocated: a damaged shape is an error, never a huge allocation.
        if chunks != entry.row["chunk_count"] or elements != numel(entry.shape):
            raise FormatError(
                self.path,
                f"tensor {quote(entry.row['name'])}: {chunks} of {entry.row['chunk_count']} chunks holding "
                f"{elements} elements, but its shape {list(entry.shape)[:8]} needs {numel(entry.shape)}",
            )

    def decode_group(
        self, group: int, table: pa.Table, wanted: set[str], pending: dict[str, np.ndarray], pool: DaemonWorkers,
        arrays: Recycler, dequantize: str | None = "float16",
    ) -> tuple[list[Answer[None]], list[str]]:
        """Start decoding a row group's chunks into their tensors' arrays, without waiting.

        Returns the jobs and the tensors complete once they are done. An int8 tensor decodes into
        ``dequantize``'s dtype (its codes for ``None``), its scales into ``pending[SCALES + name]``.
        """
        jobs, finished = [], []
        scales = payloads(table, "scales") if self.quantized else [None] * table.num_rows
        for payload, scale_payload, chunk in zip(payloads(table), scales, self.group_chunks(group), strict=True):
            name, index, offset, count = chunk.name, chunk.chunk_index, chunk.element_offset, chunk.element_count
            if name not in wanted:
                continue
            entry = self.entries[name]
            if index == 0:
                dtype, elements = entry.array_dtype(dequantize), numel(entry.shape)
                try:
                    pending[name] = arrays.take(elements, dtype)
                    if entry.block:
                        pending[SCALES + name] = np.empty(entry.scale_count(elements), np.float16)
                except MemoryError:
                    raise OutOfMemoryError(self.path, f"allocating tensor {quote(name)}",
                                           elements * dtype.itemsize) from None
            out = pending[name][offset:offset + count]
            if entry.block:
                first = entry.scale_count(offset)
                scales_out = pending[SCALES + name][first:first + entry.scale_count(count)]
                jobs.append(pool.submit(self.decode_quantized, entry, chunk, payload, scale_payload, out, scales_out))
            else:
                jobs.append(pool.submit(self.decode_chunk, name, index, payload, chunk.checksum, out))
            if index == entry.row["chunk_count"] - 1:
                finished.append(name)
        return jobs, finished

    def decode_quantized(self, entry: Entry, chunk: Chunk, payload: pa.Buffer, scales_payload: pa.Buffer | None,
                         out: np.ndarray, scales_out: np.ndarray) -> None:
        """Decode an int8 chunk's codes and scales, check them against each other, and write ``out``:
        the codes themselves (an int8 ``out``) or their values (float16 or float32)."""
        name, index, cols = entry.row["name"], chunk.chunk_index, entry.shape[1]
        try:
            codes = out if out.dtype == np.int8 else \
                thread_buffer("codes", chunk.element_count)[: chunk.element_count].view(np.int8)
        except MemoryError:
            raise OutOfMemoryError(self.path, f"decoding tensor {quote(name)}", chunk.element_count) from None
        self.decode_chunk(name, index, payload, chunk.checksum, codes)
        self.decode_chunk(name, index, scales_payload, chunk.scales_checksum, scales_out, "'s scales are")
        problem = decode_values(codes, scales_out, cols, entry.block, out)
        if problem:
            raise FormatError(self.path, f"tensor {quote(name)}: chunk {index}'s scales do not fit its codes ({problem})")

    def decode_chunk(self, name: str, chunk: int, payload: pa.Buffer | None, expected_sum: int | None,
                     out: np.ndarray, what: str = " is") -> None:
        """Decode one ``data`` (or, ``what`` saying so, ``scales``) value into ``out``, its checksum first."""
        if payload is None or (expected_sum is not None and checksum(memoryview(payload)) != expected_sum):
            raise FormatError(self.path, f"tensor {quote(name)}: chunk {chunk}{what} damaged (checksum mismatch)")
        try:
            codec.decode_into(payload, out, self.compression, self.version)
        except MemoryError:
            raise OutOfMemoryError(self.path, f"decoding tensor {quote(name)}", out.nbytes) from None
        except Exception as exc:  # zstd errors, size mismatches: all mean a damaged chunk
            raise FormatError(self.path, f"tensor {quote(name)}: chunk {chunk}{what} damaged ({exc})") from None
