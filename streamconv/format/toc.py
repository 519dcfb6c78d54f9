"""One weights file's table of contents: read from its metadata columns, checked before any decoding.

Every tensor's chunks must tile its shape (indices, offsets and counts add up) before anything is
allocated, so a damaged shape is an error, never a huge allocation. :class:`WeightsPart` also
decodes a row group's chunks, checking each against its stored checksum first.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamconv.buffers import thread_buffer
from streamconv.dtypes import DType, by_name
from streamconv.errors import FormatError
from streamconv.format import codec
from streamconv.format.quantized import block_count, check_scales, dequantize_into
from streamconv.format.records import TensorInfo
from streamconv.format.schema import FORMAT_VERSION, META_COLUMNS, checksum

__all__ = ["Chunk", "Entry", "Expected", "META_COLUMNS", "SCALES", "WeightsPart", "Recycler", "numel", "payloads"]

#: (tensor name, next chunk index, next element offset) while reading rows; None between tensors.
Expected = tuple[str, int, int] | None
#: Arrays smaller than this come from malloc's heap, which reuses freed memory already.
RECYCLE_BYTES = 1 << 20
#: How many tensors ahead :class:`Recycler` looks for one that could reuse a dropped array.
RECYCLE_AHEAD = 16
#: Key prefix, in a reader's pending arrays, of a quantized tensor's scales.
SCALES = "\0scales:"
class Chunk(NamedTuple):
    """One row of a row group, from the table of contents: all a reader needs besides ``data``."""

    name: str
    chunk_index: int
    element_offset: int
    element_count: int
    checksum: int | None
    block: int = 0  # version 4: the int8 quantization block, 0 when not quantized
    scales_checksum: int | None = None
    scales_bytes: int = 0


@dataclass
class Entry:
    """A tensor of the table of contents, filled row by row, and the row groups holding it."""

    row: dict[str, Any]
    dtype: DType
    shape: tuple[int, ...]
    file: Path
    stored_bytes: int = 0
    groups: list[tuple[int, int]] = field(default_factory=list)  # (file index, row group)
    block: int = 0  # int8 quantization block of every chunk; 0 when not quantized

    @property
    def info(self) -> TensorInfo:
        row = self.row
        return TensorInfo(row["name"], row["source_name"], self.dtype.name, row["source_dtype"], self.shape,
                          row["chunk_count"], self.stored_bytes, self.file, self.block)

    def array_dtype(self, dequantize: str | None) -> np.dtype:
        """The dtype a reader decodes into: the stored one, or for int8 codes ``dequantize``'s."""
        return self.dtype.numpy if not self.block or dequantize is None else np.dtype(dequantize)

    @property
    def scale_count(self) -> int:
        """Scales of a quantized tensor (0 otherwise)."""
        return self.shape[0] * block_count(self.shape[1], self.block) if self.block else 0


class WeightsPart:
    """One open Parquet weights file: its format version, codec and checked table of contents."""

    def __init__(self, path: Path, index: int, entries: dict[str, Entry], expected: Expected) -> None:
        self.path, self.index, self.entries = path, index, entries
        self.started: list[str] = []  # tensors whose chunk 0 is in this file
        try:
            # Without pre_buffer (on by default) reads go straight to the file, not through Arrow's
            # I/O threads and read cache: load's peak RSS on llama-bf16 1897 -> 1895 MiB.
            self.parquet = pq.ParquetFile(self.path, pre_buffer=False)
            meta = self.parquet.schema_arrow.metadata or {}
        except (pa.ArrowException, OSError) as exc:
            raise FormatError(self.path, f"not a readable Parquet file ({exc})") from exc
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
        self.compression = meta.get(b"streamconv.compression", b"").decode()
        if self.compression not in ("zstd", "none"):
            raise FormatError(self.path, f"unknown compression {self.compression!r}")
        self.has_checksums = self.version >= 2
        names = self.parquet.schema_arrow.names
        # Version 4: int8 chunks carry a block and scales (only int8 outputs have these columns).
        self.quantized = self.version >= 4 and "block" in names
        if self.quantized and not {"scales", "scales_bytes", "scales_xxh3"} <= set(names):
            raise FormatError(self.path, "has a block column but its scales columns are missing; convert it again")
        self.expected = self._table_of_contents(expected)

    def read_columns(self, group: int, columns: Sequence[str]) -> pa.Table:
        try:
            # One column: Arrow's threads have nothing to share out, and cost RSS (load: 1.5 MiB).
            return self.parquet.read_row_group(group, columns=list(columns), use_threads=False)
        except (pa.ArrowException, OSError) as exc:
            raise FormatError(self.path, f"row group {group} is damaged ({exc})") from exc

    def _table_of_contents(self, expected: Expected) -> Expected:
        """Add this file's rows to the entries; returns what the next row (next file) must be.

        One read of the metadata columns of every row group; the data column is never touched.
        """
        sizes = ["data_bytes", "data_xxh3"] if self.has_checksums else ["data"]
        quant = ["block", "scales_xxh3", "scales_bytes"] if self.quantized else []
        try:
            # One thread: the rows are small, and Arrow's thread pool would stay resident (BERT-large:
            # load's peak RSS 739 -> 733 MiB).
            table = self.parquet.read(columns=[*META_COLUMNS, *sizes, *quant], use_threads=False)
        except (pa.ArrowException, OSError) as exc:
            raise FormatError(self.path, f"the metadata columns are damaged ({exc})") from exc
        stored = table.column(sizes[0])
        if not self.has_checksums:
            import pyarrow.compute as pc  # here: it costs every `streamconv convert` 20 ms

            stored = pc.binary_length(stored)
        sums = table.column("data_xxh3").to_pylist() if self.has_checksums else [None] * table.num_rows
        none: list[Any] = [None] * table.num_rows
        blocks, scale_sums, scale_sizes = ([table.column(c).to_pylist() for c in quant] if quant
                                           else [[0] * table.num_rows, none, [0] * table.num_rows])
        rows = table.drop_columns(sizes + quant).to_pylist()
        metadata = self.parquet.metadata
        group_of_row = [g for g in range(metadata.num_row_groups) for _ in range(metadata.row_group(g).num_rows)]
        if len(group_of_row) != len(rows):
            raise FormatError(self.path, "the row groups do not add up to the rows")
        self.chunks: list[list[Chunk]] = [[] for _ in range(metadata.num_row_groups)]
        for row, nbytes, group, expected_sum, block, scale_sum, scale_size in zip(
                rows, stored.to_pylist(), group_of_row, sums, blocks, scale_sums, scale_sizes, strict=True):
            expected = self._check_row(self.entries, row, nbytes + scale_size, group, expected)
            chunk = Chunk(row["name"], row["chunk_index"], row["element_offset"], row["element_count"], expected_sum,
                          block, scale_sum, scale_size)
            if self.quantized:
                self._check_quantized(self.entries[row["name"]], chunk)
            self.chunks[group].append(chunk)
        return expected

    def _check_quantized(self, entry: Entry, chunk: Chunk) -> None:
        """A version-4 row's block agrees with its tensor's, and an int8 chunk holds whole rows with scales."""
        name = entry.row["name"]
        if chunk.chunk_index == 0:
            entry.block = chunk.block
            if chunk.block < 0 or (chunk.block and (entry.dtype.name != "int8" or len(entry.shape) != 2
                                                    or entry.shape[1] < 1)):
                raise FormatError(self.path, f"tensor {name!r}: block {chunk.block} for a {entry.dtype.name} tensor "
                                             f"of shape {list(entry.shape)}; only 2-D int8 tensors are quantized")
        if chunk.block != entry.block:
            raise FormatError(self.path, f"tensor {name!r}: chunk {chunk.chunk_index} has block {chunk.block}, "
                                         f"chunk 0 {entry.block}")
        if not chunk.block:
            return
        cols = entry.shape[1]
        if chunk.element_offset % cols or chunk.element_count % cols:
            raise FormatError(self.path, f"tensor {name!r}: int8 chunk {chunk.chunk_index} does not hold whole rows")
        if chunk.element_count and not chunk.scales_bytes:
            raise FormatError(self.path, f"tensor {name!r}: int8 chunk {chunk.chunk_index} has no scales "
                                         "(damaged); convert it again")

    def _check_row(
        self, entries: dict[str, Entry], row: dict[str, Any], nbytes: int, group: int,
        expected: tuple[str, int, int] | None,
    ) -> tuple[str, int, int]:
        """Check one row against the tensor it continues; returns what the next row must be."""
        name = row["name"]
        if row["chunk_index"] == 0:
            if expected is not None:
                self.finish_entry(entries[expected[0]], expected)
            if name in entries:
                raise FormatError(self.path, f"tensor {name!r} is stored twice")
            entries[name] = self._new_entry(row)
            self.started.append(name)
            expected = (name, 0, 0)
        if expected is None or name != expected[0] or row["chunk_index"] != expected[1] \
                or row["element_offset"] != expected[2]:
            raise FormatError(self.path, f"tensor {name!r}: chunk {row['chunk_index']} out of order or missing")
        entry = entries[name]
        if row["chunk_count"] != entry.row["chunk_count"] or row["element_count"] < 0:
            raise FormatError(self.path, f"tensor {name!r}: chunk {row['chunk_index']} disagrees with chunk 0")
        if not entry.groups or entry.groups[-1] != (self.index, group):
            entry.groups.append((self.index, group))
        entry.stored_bytes += nbytes
        return name, expected[1] + 1, expected[2] + row["element_count"]

    def _new_entry(self, row: dict[str, Any]) -> Entry:
        name, dtype = row["name"], by_name(row["dtype"])
        if dtype is None:
            raise FormatError(self.path, f"tensor {name!r} has unknown dtype {row['dtype']!r}")
        shape = tuple(row["shape"] or ())
        if any(d < 0 for d in shape) or row["chunk_count"] < 1:
            raise FormatError(self.path, f"tensor {name!r} has an impossible shape {list(shape)} or chunk count")
        return Entry(row, dtype, shape, self.path)

    def finish_entry(self, entry: Entry, expected: tuple[str, int, int]) -> None:
        _, chunks, elements = expected
        # Checked before any array is allocated: a damaged shape is an error, never a huge allocation.
        if chunks != entry.row["chunk_count"] or elements != numel(entry.shape):
            raise FormatError(
                self.path,
                f"tensor {entry.row['name']!r}: {chunks} of {entry.row['chunk_count']} chunks holding {elements} "
                f"elements, but its shape {list(entry.shape)} needs {numel(entry.shape)}",
            )

    def decode_group(
        self, group: int, table: pa.Table, wanted: set[str], pending: dict[str, np.ndarray], pool: ThreadPoolExecutor,
        arrays: Recycler, dequantize: str | None = "float16",
    ) -> tuple[list[Future[None]], list[str]]:
        """Start decoding a row group's chunks into their tensors' arrays, without waiting.

        Returns the jobs and the tensors complete once they are done.
        """
        jobs, finished = [], []
        scales = payloads(table, "scales") if self.quantized else [None] * table.num_rows
        for payload, scale_payload, chunk in zip(payloads(table), scales, self.chunks[group], strict=True):
            name, index, offset, count = chunk.name, chunk.chunk_index, chunk.element_offset, chunk.element_count
            if name not in wanted:
                continue
            entry = self.entries[name]
            if index == 0:
                pending[name] = arrays.take(numel(entry.shape), entry.array_dtype(dequantize))
                if entry.block:
                    pending[SCALES + name] = np.empty(entry.scale_count, np.float16)
            out = pending[name][offset:offset + count]
            if entry.block:
                first = offset // entry.shape[1] * block_count(entry.shape[1], entry.block)
                scales_out = pending[SCALES + name][first:first + count // entry.shape[1]
                                                    * block_count(entry.shape[1], entry.block)]
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
        codes = out if out.dtype == np.int8 else \
            thread_buffer("codes", chunk.element_count)[: chunk.element_count].view(np.int8)
        self.decode_chunk(name, index, payload, chunk.checksum, codes)
        if scales_payload is None or (chunk.scales_checksum is not None
                                      and checksum(memoryview(scales_payload)) != chunk.scales_checksum):
            raise FormatError(self.path, f"tensor {name!r}: chunk {index}'s scales are damaged (checksum mismatch)")
        try:
            codec.decode_into(scales_payload, scales_out, self.compression, self.version)
        except Exception as exc:  # zstd errors, size mismatches: damaged scales
            raise FormatError(self.path, f"tensor {name!r}: chunk {index}'s scales are damaged ({exc})") from exc
        problem = check_scales(codes, scales_out, cols, entry.block)
        if problem:
            raise FormatError(self.path, f"tensor {name!r}: chunk {index}'s scales do not fit its codes ({problem})")
        if out.dtype != np.int8:
            dequantize_into(codes, scales_out, cols, entry.block, out)

    def decode_chunk(self, name: str, chunk: int, payload: pa.Buffer, expected_sum: int | None, out: np.ndarray) -> None:
        if expected_sum is not None and checksum(memoryview(payload)) != expected_sum:
            raise FormatError(self.path, f"tensor {name!r}: chunk {chunk} is damaged (checksum mismatch)")
        try:
            codec.decode_into(payload, out, self.compression, self.version)
        except Exception as exc:  # zstd errors, size mismatches: all mean a damaged chunk
            raise FormatError(self.path, f"tensor {name!r}: chunk {chunk} is damaged ({exc})") from exc


class Recycler:
    """Arrays for whole tensors, reusing a tensor's array for a later one of the same byte size once
    nothing else in the process refers to it (its reference count says so).

    ``iter_tensors``' caller typically drops each tensor before asking for the next; without this
    every tensor is decoded into memory fresh from the kernel, which here costs almost as much as
    decoding (llama-bf16: 1.7 s of kernel time against the decode floor's 0.3 s, on 2.1 s of
    decoding; the floor reuses its buffers). An array is kept only while one of the next
    :data:`RECYCLE_AHEAD` tensors has its size: a model's layers repeat their sizes, so what is kept
    is at most about a layer, never the model. ``take`` is called in the order ``sizes`` lists.
    """

    def __init__(self, sizes: list[int]) -> None:
        self.sizes, self.taken = sizes, 0
        self.kept: dict[int, list[np.ndarray]] = {}

    def take(self, count: int, dtype: np.dtype) -> np.ndarray:
        """An array of ``count`` elements of ``dtype``, contents undefined."""
        nbytes = count * dtype.itemsize
        self.taken += 1
        soon = {n for n in self.sizes[self.taken:self.taken + RECYCLE_AHEAD] if n >= RECYCLE_BYTES}
        kept = self.kept.pop(nbytes, [])
        free = next((i for i in range(len(kept)) if sys.getrefcount(kept[i]) == _UNSHARED), None)
        buffer = kept.pop(free) if free is not None else np.empty(nbytes, np.uint8)
        self.kept = {n: arrays for n, arrays in self.kept.items() if n in soon}
        if nbytes in soon:  # the last few: a caller holding every tensor must not make this quadratic
            self.kept[nbytes] = [*kept, buffer][-RECYCLE_AHEAD:]
        return buffer.view(dtype)


def _unshared() -> int:
    """What ``sys.getrefcount(items[i])`` says of an array that only the list ``items`` holds."""
    items = [np.empty(0)]
    return sys.getrefcount(items[0])


_UNSHARED = _unshared()


def payloads(table: pa.Table, column: str = "data") -> list[pa.Buffer]:
    """Every row's ``data`` (or ``scales``) value, as a slice of the column's own Arrow buffer
    (nothing copied).

    ``combine_chunks`` would copy the column, and ``array[row].as_buffer()`` copies each value.
    """
    sliced: list[pa.Buffer] = []
    for chunk in (c for c in table.column(column).chunks if len(c)):
        _, offsets, values = chunk.buffers()
        width = "<i8" if pa.types.is_large_binary(chunk.type) else "<i4"
        ends = np.frombuffer(offsets, width)[chunk.offset:chunk.offset + len(chunk) + 1].tolist()
        values = values if values is not None else pa.py_buffer(b"")
        sliced.extend(values.slice(start, end - start) for start, end in pairwise(ends))
    return sliced


def numel(shape: tuple[int, ...]) -> int:
    total = 1
    for d in shape:
        total *= d
    return total
