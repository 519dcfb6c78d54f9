"""Read converted weights back: tensor records with their names, dtypes, shapes and arrays.

A weights file is opened once into a table of contents built from its metadata columns only (never
the ``data`` column), and every tensor's chunks are checked to tile its shape before anything is
decoded or allocated. Chunks are then decoded on worker threads, checked against their stored
checksum (format 2), and written straight into the tensor's final array.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamconv import codec
from streamconv.constants import (
    DEFAULT_WORKERS,
    FORMAT_VERSION,
    METADATA_FILENAME,
    WEIGHTS_FILENAME,
    WorkerPool,
)
from streamconv.dtypes import DType, by_name
from streamconv.errors import FormatError, NotConvertedError, TensorNotFoundError
from streamconv.records import NameKind, TensorInfo, TensorRecord
from streamconv.split import INDEX_FILENAME, read_index
from streamconv.writer import checksum

__all__ = [
    "TensorInfo",
    "TensorRecord",
    "describe",
    "iter_tensors",
    "load",
    "load_tensor",
    "read_metadata",
    "weights_path",
]

#: What the next row of the table of contents must be: (name, chunk index, element offset), or None.
_Expected = tuple[str, int, int] | None
_META_COLUMNS = ["name", "source_name", "dtype", "source_dtype", "shape", "chunk_index", "chunk_count",
                 "element_offset", "element_count"]


def weights_path(path: str | os.PathLike[str]) -> Path:
    """The weights of a converted output: ``path`` itself, ``path/weights.parquet``, or for a split
    output ``path/weights.parquet.index.json`` (which :class:`WeightsFile` reads with its files).

    Raises:
        NotConvertedError: no weights file there.
    """
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILENAME if (path / WEIGHTS_FILENAME).is_file() or not (path / INDEX_FILENAME).is_file() \
            else path / INDEX_FILENAME
    if not path.is_file():
        raise NotConvertedError(path, "converted weights")
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``metadata.json`` of a converted output folder (or of the folder of a weights file).

    Raises:
        NotConvertedError: no metadata.json.
        FormatError: it is not a JSON object.
    """
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    meta_path = folder / METADATA_FILENAME
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotConvertedError(meta_path, "metadata") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(meta_path, f"metadata is not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise FormatError(meta_path, "metadata is not a JSON object")
    return data


@dataclass
class _Entry:
    """A tensor of the table of contents, filled row by row, and the row groups holding it."""

    row: dict[str, Any]
    dtype: DType
    shape: tuple[int, ...]
    file: Path
    stored_bytes: int = 0
    groups: list[tuple[int, int]] = field(default_factory=list)  # (file index, row group)

    @property
    def info(self) -> TensorInfo:
        row = self.row
        return TensorInfo(row["name"], row["source_name"], self.dtype.name, row["source_dtype"], self.shape,
                          row["chunk_count"], self.stored_bytes, self.file)


class _WeightsPart:
    """One open Parquet weights file: its format version, codec and checked table of contents."""

    def __init__(self, path: Path, index: int, entries: dict[str, _Entry], expected: _Expected) -> None:
        self.path, self.index, self.entries = path, index, entries
        self.started: list[str] = []  # tensors whose chunk 0 is in this file
        try:
            self.parquet = pq.ParquetFile(self.path)
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
        self.expected = self._table_of_contents(expected)

    def _read(self, group: int, columns: Sequence[str]) -> pa.Table:
        try:
            return self.parquet.read_row_group(group, columns=list(columns))
        except (pa.ArrowException, OSError) as exc:
            raise FormatError(self.path, f"row group {group} is damaged ({exc})") from exc

    def _table_of_contents(self, expected: _Expected) -> _Expected:
        """Add this file's rows to the entries; returns what the next row (next file) must be.

        One read of the metadata columns of every row group; the data column is never touched.
        """
        sizes = ["data_bytes"] if self.has_checksums else ["data"]
        try:
            table = self.parquet.read(columns=[*_META_COLUMNS, *sizes])
        except (pa.ArrowException, OSError) as exc:
            raise FormatError(self.path, f"the metadata columns are damaged ({exc})") from exc
        stored = table.column(sizes[0])
        if not self.has_checksums:
            import pyarrow.compute as pc  # here: it costs every `streamconv convert` 20 ms

            stored = pc.binary_length(stored)
        rows = table.drop_columns(sizes).to_pylist()
        metadata = self.parquet.metadata
        group_of_row = [g for g in range(metadata.num_row_groups) for _ in range(metadata.row_group(g).num_rows)]
        if len(group_of_row) != len(rows):
            raise FormatError(self.path, "the row groups do not add up to the rows")
        for row, nbytes, group in zip(rows, stored.to_pylist(), group_of_row, strict=True):
            expected = self._check_row(self.entries, row, nbytes, group, expected)
        return expected

    def _check_row(
        self, entries: dict[str, _Entry], row: dict[str, Any], nbytes: int, group: int,
        expected: tuple[str, int, int] | None,
    ) -> tuple[str, int, int]:
        """Check one row against the tensor it continues; returns what the next row must be."""
        name = row["name"]
        if row["chunk_index"] == 0:
            if expected is not None:
                self._finish(entries[expected[0]], expected)
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

    def _new_entry(self, row: dict[str, Any]) -> _Entry:
        name, dtype = row["name"], by_name(row["dtype"])
        if dtype is None:
            raise FormatError(self.path, f"tensor {name!r} has unknown dtype {row['dtype']!r}")
        shape = tuple(row["shape"] or ())
        if any(d < 0 for d in shape) or row["chunk_count"] < 1:
            raise FormatError(self.path, f"tensor {name!r} has an impossible shape {list(shape)} or chunk count")
        return _Entry(row, dtype, shape, self.path)

    def _finish(self, entry: _Entry, expected: tuple[str, int, int]) -> None:
        _, chunks, elements = expected
        # Checked before any array is allocated: a damaged shape is an error, never a huge allocation.
        if chunks != entry.row["chunk_count"] or elements != _numel(entry.shape):
            raise FormatError(
                self.path,
                f"tensor {entry.row['name']!r}: {chunks} of {entry.row['chunk_count']} chunks holding {elements} "
                f"elements, but its shape {list(entry.shape)} needs {_numel(entry.shape)}",
            )

    def _decode_group(
        self, table: pa.Table, wanted: set[str], pending: dict[str, np.ndarray], pool: ThreadPoolExecutor
    ) -> list[str]:
        """Decode a row group's chunks into their tensors' arrays; returns the tensors completed."""
        names = table.column("name").to_pylist()
        index = table.column("chunk_index").to_pylist()
        offsets = table.column("element_offset").to_pylist()
        counts = table.column("element_count").to_pylist()
        sums = table.column("data_xxh3").to_pylist() if self.has_checksums else [None] * len(names)
        data = table.column("data").combine_chunks()
        jobs, finished = [], []
        for row, name in enumerate(names):
            if name not in wanted:
                continue
            entry = self.entries[name]
            if index[row] == 0:
                pending[name] = np.empty(_numel(entry.shape), dtype=entry.dtype.numpy)
            out = pending[name][offsets[row]:offsets[row] + counts[row]]
            jobs.append(pool.submit(self._decode, name, index[row], data[row].as_buffer(), sums[row], out))
            if index[row] == entry.row["chunk_count"] - 1:
                finished.append(name)
        for job in jobs:
            job.result()
        return finished

    def _decode(self, name: str, chunk: int, payload: pa.Buffer, expected_sum: int | None, out: np.ndarray) -> None:
        if expected_sum is not None and checksum(memoryview(payload)) != expected_sum:
            raise FormatError(self.path, f"tensor {name!r}: chunk {chunk} is damaged (checksum mismatch)")
        try:
            codec.decode_into(payload, out, self.compression, self.version)
        except Exception as exc:  # zstd errors, size mismatches: all mean a damaged chunk
            raise FormatError(self.path, f"tensor {name!r}: chunk {chunk} is damaged ({exc})") from exc


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for d in shape:
        total *= d
    return total


class WeightsFile:
    """A converted output's weights: ``weights.parquet``, or the files its split index lists.

    Every file is opened and its table of contents checked; a tensor may continue from one file into
    the next (a tensor larger than a file), and is listed in the index under the file holding its
    first chunk. ``path`` is an output folder, its weights file, or its split index.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = weights_path(path)
        listed = read_index(self.path) if self.path.name == INDEX_FILENAME else [(self.path, None)]
        self.entries: dict[str, _Entry] = {}
        self.parts: list[_WeightsPart] = []
        expected: _Expected = None
        for file, tensors in listed:
            part = _WeightsPart(file, len(self.parts), self.entries, expected)
            if tensors is not None and part.started != tensors:
                raise FormatError(file, f"holds other tensors than {INDEX_FILENAME} lists")
            self.parts.append(part)
            expected = part.expected
        if expected is not None:
            self.parts[-1]._finish(self.entries[expected[0]], expected)

    @property
    def files(self) -> list[Path]:
        """The Parquet files, in order."""
        return [part.path for part in self.parts]

    def _groups(self, names: Sequence[str] | None) -> tuple[set[str], list[tuple[int, int]]]:
        wanted = [self.entries[n] for n in names] if names is not None else list(self.entries.values())
        return {e.row["name"] for e in wanted}, sorted({g for e in wanted for g in e.groups})

    def _table(self, part: _WeightsPart, group: int) -> pa.Table:
        return part._read(group, ["name", "chunk_index", "element_offset", "element_count", "data",
                                  *(["data_xxh3"] if part.has_checksums else [])])

    def records(self, names: Sequence[str] | None = None, workers: int = DEFAULT_WORKERS) -> Iterator[TensorRecord]:
        """Decode the tensors (all, or those named), in file order, one at a time."""
        wanted, groups = self._groups(names)
        pending: dict[str, np.ndarray] = {}
        with WorkerPool(workers, thread_name_prefix="streamconv-decode") as pool:
            for part, table in self._prefetched(groups):
                for name in part._decode_group(table, wanted, pending, pool):
                    entry = self.entries[name]
                    yield TensorRecord(**vars(entry.info), array=pending.pop(name).reshape(entry.shape))

    def _prefetched(self, groups: list[tuple[int, int]]) -> Iterator[tuple[_WeightsPart, pa.Table]]:
        """The row groups' tables, the next read (without the GIL) while the current one decodes."""
        parts = [(self.parts[file], group) for file, group in groups]
        with WorkerPool(1, thread_name_prefix="streamconv-read") as reader:
            future = reader.submit(self._table, *parts[0]) if parts else None
            for i, (part, _) in enumerate(parts):
                assert future is not None
                table = future.result()
                future = reader.submit(self._table, *parts[i + 1]) if i + 1 < len(parts) else None
                yield part, table

    def chunks(self, names: Sequence[str] | None = None, workers: int = DEFAULT_WORKERS
               ) -> Iterator[tuple[TensorInfo, int, np.ndarray]]:
        """Decode chunk by chunk, in file order: ``(info, element offset, 1-D array)``.

        Memory holds one row group's chunks, never a whole tensor.
        """
        wanted, groups = self._groups(names)
        with WorkerPool(workers, thread_name_prefix="streamconv-decode") as pool:
            for part, table in self._prefetched(groups):
                cols = [table.column(c).to_pylist() for c in ("name", "chunk_index", "element_offset", "element_count")]
                sums = table.column("data_xxh3").to_pylist() if part.has_checksums else [None] * table.num_rows
                data = table.column("data").combine_chunks()
                jobs = []
                for row, (name, index, offset, count) in enumerate(zip(*cols, strict=True)):
                    if name in wanted:
                        out = np.empty(count, dtype=self.entries[name].dtype.numpy)
                        job = pool.submit(part._decode, name, index, data[row].as_buffer(), sums[row], out)
                        jobs.append((self.entries[name].info, offset, out, job))
                for info, offset, out, job in jobs:
                    job.result()
                    yield info, offset, out


def describe(path: str | os.PathLike[str]) -> list[TensorInfo]:
    """Every tensor's name, source name, dtypes, shape, chunks and stored bytes, in file order.

    Only the metadata columns are read (a format-1 file has no ``data_bytes`` column, so its
    ``data`` column is read for the sizes).

    Raises:
        NotConvertedError, FormatError: no weights file, or a damaged one.
    """
    return [entry.info for entry in WeightsFile(path).entries.values()]


def _check_names(names: str) -> None:
    if names not in ("stored", "source"):
        raise ValueError(f"names={names!r}: choose 'stored' or 'source'")


def iter_tensors(
    path: str | os.PathLike[str], *, names: NameKind = "stored", workers: int = DEFAULT_WORKERS
) -> Iterator[TensorRecord]:
    """Yield a :class:`TensorRecord` for every tensor, one at a time, in file order.

    Memory holds one row group and the tensors it completes. The records are the same whatever
    ``names``; it says which name a record unpacks as (``for name, array in iter_tensors(...)``).

    Args:
        path: A folder written by ``streamconv convert``, its ``weights.parquet``, or the split index.
        names: ``stored`` or ``source`` (the source checkpoint's names, a Hugging Face state dict's).
        workers: Threads that decompress chunks.

    Raises:
        FormatError: the file is not a streamconv weights file or is damaged.

    Example:
        >>> for name, array in streamconv.iter_tensors("whisper-parquet", names="source"): ...
    """
    _check_names(names)
    for record in WeightsFile(path).records(workers=workers):
        yield dataclasses.replace(record, names=names) if names != "stored" else record


def load(path: str | os.PathLike[str], *, names: NameKind = "stored") -> dict[str, np.ndarray]:
    """Load every tensor into a dict of numpy arrays (needs memory for the whole model).

    Args:
        path: A converted output folder, its weights file, or its split index.
        names: ``stored`` keys the dict by stored names, ``source`` by the source checkpoint's
            names (a Hugging Face state dict).

    Example:
        >>> streamconv.load("minilm-parquet")["embeddings.word_embeddings.weight"].shape  # (30522, 384)
    """
    _check_names(names)
    return {record.key: record.array for record in iter_tensors(path, names=names)}


def load_tensor(path: str | os.PathLike[str], name: str, *, names: NameKind = "stored") -> np.ndarray:
    """Read one tensor, touching only the row groups that hold it.

    Args:
        path: A converted output folder, its weights file, or its split index.
        name: The stored tensor name (or its source name, with ``names="source"``).

    Raises:
        TensorNotFoundError: no tensor has that name.
    """
    _check_names(names)
    weights = WeightsFile(path)
    if names == "source":
        name = next((n for n, e in weights.entries.items() if e.row["source_name"] == name), "\0" + name)
    if name not in weights.entries:
        raise TensorNotFoundError(weights.path, name.lstrip("\0"))
    return next(weights.records([name])).array
