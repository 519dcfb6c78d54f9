"""Read converted weights back as numpy arrays.

``iter_tensors`` streams one tensor at a time; ``load_tensor`` reads only the row groups whose
``name`` statistics can hold the tensor asked for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from streamconv import codec
from streamconv.constants import FORMAT_VERSION, METADATA_FILENAME, NUMPY_DTYPES, WEIGHTS_FILENAME
from streamconv.errors import FormatError, NotConvertedError, TensorNotFoundError

__all__ = ["describe", "iter_tensors", "load", "load_tensor", "read_metadata", "weights_path"]


def weights_path(path: str | os.PathLike[str]) -> Path:
    """The weights file of a converted output: ``path`` itself, or ``path/weights.parquet``."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILENAME
    if not path.is_file():
        raise NotConvertedError(path, "converted weights")
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``metadata.json`` of a converted output folder."""
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    meta_path = folder / METADATA_FILENAME
    try:
        return json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotConvertedError(meta_path, "metadata") from None
    except json.JSONDecodeError as exc:
        raise FormatError(meta_path, f"metadata is not JSON ({exc})") from exc


def _open(path: str | os.PathLike[str]) -> tuple[Path, pq.ParquetFile, str]:
    file = weights_path(path)
    try:
        parquet = pq.ParquetFile(file)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError subclasses for bad files
        raise FormatError(file, f"not a readable Parquet file ({exc})") from exc
    meta = parquet.schema_arrow.metadata or {}
    version = meta.get(b"streamconv.format_version")
    if version is None:
        raise FormatError(file, "not a streamconv weights file (no streamconv.format_version)")
    if int(version) > FORMAT_VERSION:
        raise FormatError(
            file, f"written in format version {int(version)}, newer than this reader's {FORMAT_VERSION}; "
            "upgrade streamconv"
        )
    return file, parquet, meta[b"streamconv.compression"].decode()


class _Assembler:
    """Collects one tensor's chunks and checks that they tile it exactly."""

    def __init__(self, file: Path, name: str, dtype: str, shape: list[int], chunk_count: int) -> None:
        self.file, self.name, self.shape, self.chunk_count = file, name, tuple(shape), chunk_count
        if dtype not in NUMPY_DTYPES:
            raise FormatError(file, f"tensor {name!r} has unknown dtype {dtype!r}")
        self.dtype = NUMPY_DTYPES[dtype]
        self.out = np.empty(int(np.prod(self.shape, dtype=np.int64)), dtype=self.dtype)
        self.seen = 0
        self.filled = 0

    def add(self, row: dict[str, Any], compression: str) -> None:
        if row["chunk_index"] != self.seen or row["element_offset"] != self.filled:
            raise FormatError(self.file, f"tensor {self.name!r}: chunks out of order or missing")
        try:
            values = codec.decode(row["data"], self.dtype, row["element_count"], compression)
        except Exception as exc:  # zstd errors, size mismatches
            raise FormatError(self.file, f"tensor {self.name!r}: chunk {self.seen} is damaged ({exc})") from exc
        end = self.filled + len(values)
        if end > self.out.size:
            raise FormatError(self.file, f"tensor {self.name!r}: chunks hold more elements than its shape")
        self.out[self.filled:end] = values
        self.filled, self.seen = end, self.seen + 1

    def result(self) -> np.ndarray:
        if self.seen != self.chunk_count or self.filled != self.out.size:
            raise FormatError(self.file, f"tensor {self.name!r}: {self.chunk_count - self.seen} chunk(s) missing")
        return self.out.reshape(self.shape)


def _assemble(file: Path, rows: Iterator[dict[str, Any]], compression: str) -> Iterator[tuple[str, np.ndarray]]:
    current: _Assembler | None = None
    for row in rows:
        if row["chunk_index"] == 0:
            if current is not None:
                yield current.name, current.result()
            current = _Assembler(file, row["name"], row["dtype"], row["shape"], row["chunk_count"])
        elif current is None or row["name"] != current.name:
            raise FormatError(file, f"tensor {row['name']!r}: chunk {row['chunk_index']} without chunk 0")
        current.add(row, compression)
    if current is not None:
        yield current.name, current.result()


def iter_tensors(path: str | os.PathLike[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, array)`` for every tensor, one at a time, in file order.

    Memory holds one row group and one tensor at a time.

    Args:
        path: A folder written by ``streamconv convert``, or its ``weights.parquet``.

    Returns:
        An iterator of names and arrays in the stored dtype and original shape.

    Raises:
        FormatError: the file is not a streamconv weights file or is damaged.
    """
    file, parquet, compression = _open(path)

    def rows() -> Iterator[dict[str, Any]]:
        for group in range(parquet.num_row_groups):
            yield from parquet.read_row_group(group).to_pylist()

    yield from _assemble(file, rows(), compression)


def load(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load every tensor into a dict of numpy arrays (needs memory for the whole model).

    Example:
        >>> weights = streamconv.load("minilm-parquet")
        >>> weights["embeddings.word_embeddings.weight"].shape
        (30522, 384)
    """
    return dict(iter_tensors(path))


def load_tensor(path: str | os.PathLike[str], name: str) -> np.ndarray:
    """Read one tensor, touching only the row groups that can hold it.

    Args:
        path: A converted output folder or its weights file.
        name: The stored tensor name.

    Raises:
        TensorNotFoundError: no tensor has that name.
    """
    import pyarrow.compute as pc  # here, not at the top: it costs `streamconv convert` 20 ms to import

    file, parquet, compression = _open(path)
    name_column = parquet.schema_arrow.get_field_index("name")
    groups = []
    for group in range(parquet.num_row_groups):
        stats = parquet.metadata.row_group(group).column(name_column).statistics
        if stats is None or not stats.has_min_max or stats.min <= name <= stats.max:
            groups.append(group)
    rows: list[dict[str, Any]] = []
    for group in groups:
        table = parquet.read_row_group(group)
        rows.extend(table.filter(pc.equal(table["name"], name)).to_pylist())
    if not rows:
        raise TensorNotFoundError(file, name)
    rows.sort(key=lambda r: r["chunk_index"])
    return next(_assemble(file, iter(rows), compression))[1]


def describe(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One entry per tensor: name, source name, shape, dtypes, chunks, elements, stored bytes.

    Nothing is decompressed; one row group is held in memory at a time.
    """
    import pyarrow.compute as pc  # see load_tensor

    _, parquet, _ = _open(path)
    tensors: dict[str, dict[str, Any]] = {}
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group)
        stored = pc.binary_length(table["data"]).to_pylist()
        for row, nbytes in zip(table.drop_columns(["data"]).to_pylist(), stored, strict=True):
            entry = tensors.setdefault(
                row["name"],
                {
                    "name": row["name"],
                    "source_name": row["source_name"],
                    "shape": row["shape"],
                    "dtype": row["dtype"],
                    "source_dtype": row["source_dtype"],
                    "chunks": 0,
                    "stored_bytes": 0,
                },
            )
            entry["chunks"] += 1
            entry["stored_bytes"] += nbytes
    return list(tensors.values())
