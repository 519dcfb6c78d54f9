"""Arrow at the reader's edge: columns read without ``pyarrow.compute`` (importing it costs every read
40 ms), each row's ``data`` as a slice of Arrow's buffer, and what an Arrow failure means.
"""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from streamconv.errors import FormatError, OutOfMemoryError, StreamconvError

__all__ = ["STRINGS", "distinct", "first_rows", "ints", "memory_ran_out", "numbers", "payloads", "read_failure"]

#: The string columns, read as the dictionaries Parquet stores them in (one string per distinct value).
STRINGS = ["name", "source_name", "dtype", "source_dtype"]
#: Arrow's words for an allocation that failed (a thread it could not start needs memory too).
_NO_MEMORY = re.compile(r"Failed to launch worker thread|bad_alloc|out of memory|Cannot allocate memory|"
                        r"malloc of size|failed to allocate|Resource temporarily unavailable", re.IGNORECASE)


def memory_ran_out(exc: BaseException) -> bool:
    """Whether ``exc`` means memory ran out (a ``MemoryError``, or Arrow saying so), not damage."""
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):  # Python's threads, likewise
        return True
    return isinstance(exc, MemoryError) or (isinstance(exc, (pa.ArrowException, OSError))
                                            and _NO_MEMORY.search(str(exc)) is not None)


def read_failure(path: Path, exc: BaseException, problem: str, doing: str) -> StreamconvError:
    """What a failed read of ``path`` is: :class:`OutOfMemoryError` when memory ran out, else a
    :class:`FormatError` saying ``problem`` with Arrow's message folded into the same line."""
    if memory_ran_out(exc):
        return OutOfMemoryError(path, doing)
    return FormatError(path, f"{problem} ({exc})")


def numbers(table: pa.Table, name: str) -> np.ndarray:
    """An integer column (no nulls: checked before) as one numpy array."""
    parts = [ints(c) for c in table.column(name).chunks if len(c)]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def ints(array: pa.Array) -> np.ndarray:
    """An integer array's values, read from its buffer (``to_numpy`` imports pandas where it is installed)."""
    kind = "u" if pa.types.is_unsigned_integer(array.type) else "i"
    values = np.frombuffer(array.buffers()[1], f"<{kind}{array.type.bit_width // 8}")
    return values[array.offset:array.offset + len(array)]


def distinct(table: pa.Table, name: str, path: Path) -> tuple[np.ndarray, list[str]]:
    """A string column as each row's index into the list of its distinct values.

    Read from the dictionary Parquet keeps (the reader asks for it), so no string is made per row;
    no ``pyarrow.compute`` either (importing it costs every read 40 ms).
    """
    seen: dict[str, int] = {}
    ids = []
    for chunk in (c for c in table.column(name).chunks if len(c)):
        if pa.types.is_dictionary(chunk.type):
            local = [seen.setdefault(value, len(seen)) for value in chunk.dictionary.to_pylist()]
            ids.append(np.asarray(local, np.int64)[ints(chunk.indices).astype(np.int64)])
        else:
            ids.append(np.fromiter((seen.setdefault(v, len(seen)) for v in chunk.to_pylist()), np.int64, len(chunk)))
    if None in seen:
        raise FormatError(path, f"column {name!r} holds a null")
    return (np.concatenate(ids) if ids else np.empty(0, np.int64)), list(seen)


def first_rows(table: pa.Table, rows: np.ndarray, name_ids: np.ndarray, names: list[str], path: Path
                ) -> list[dict[str, Any]]:
    """The metadata columns of ``rows`` (each tensor's chunk 0) as dicts, without a Python object per row."""
    if not len(rows):
        return []
    strings = {c: distinct(table, c, path) for c in ("source_name", "dtype", "source_dtype")}
    shapes = pa.concat_arrays(table.column("shape").chunks) if table.column("shape").num_chunks != 1 \
        else table.column("shape").chunk(0)
    ends = ints(shapes.offsets)  # into ``values``, the whole child array (``flatten`` imports compute)
    dims = ints(shapes.values) if len(shapes.values) else np.empty(0, np.int64)
    columns: dict[str, list[Any]] = {"name": [names[i] for i in name_ids[rows].tolist()]}
    for c, (ids, known) in strings.items():
        columns[c] = [known[i] for i in ids[rows].tolist()]
    starts, stops = ends[rows].tolist(), ends[rows + 1].tolist()
    flat = dims.tolist()
    columns["shape"] = [flat[a:b] for a, b in zip(starts, stops, strict=True)]
    for c in ("chunk_index", "chunk_count", "element_offset", "element_count"):
        columns[c] = numbers(table, c)[rows].tolist()
    keys = list(columns)
    return [dict(zip(keys, row, strict=True)) for row in zip(*columns.values(), strict=True)]


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
