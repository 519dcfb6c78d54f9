"""Read converted weights back: tensor records with their names, dtypes, shapes and arrays.

A weights file is opened once into a table of contents built from its metadata columns only (never
the ``data`` column), and every tensor's chunks are checked to tile its shape before anything is
decoded or allocated. Chunks are then decoded on worker threads, checked against their stored
checksum (format 2), and written straight from the Arrow buffer into the tensor's final array.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from streamconv import _files
from streamconv.constants import DEFAULT_WORKERS, MAX_CHUNK_BYTES
from streamconv.errors import (
    FormatError,
    NotConvertedError,
    OutOfMemoryError,
    OutputChangedError,
    PartOfSplitError,
    TensorNotFoundError,
    UnsafeInputError,
)
from streamconv.format.arrow import payloads
from streamconv.format.contents import check_metadata
from streamconv.format.entries import SCALES, Entry, Expected, numel
from streamconv.format.index import Listed, read_index
from streamconv.format.quantized import DEQUANTIZE_CHOICES
from streamconv.format.records import NameKind, TensorInfo, TensorRecord
from streamconv.format.recycler import Recycler
from streamconv.format.schema import INDEX_FILENAME, METADATA_FILENAME, WEIGHTS_FILENAME
from streamconv.format.toc import OutputChanged, WeightsPart
from streamconv.messages import quote
from streamconv.workers import Answer, DaemonWorkers

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

#: Chunks decoding or queued per worker, across row groups, before the oldest group is waited for.
#: 1 keeps both workers busy; 2 cost load 4 MiB more peak RSS (llama-bf16) for no measured speed.
CHUNKS_IN_FLIGHT = 1
#: Bytes of tensors :meth:`WeightsFile.records` may have started decoding ahead of the one it
#: yields (while the caller still holds that one). A tensor that would take the read-ahead past
#: this waits until the caller asks for the next tensor: a large tensor is never decoded beside
#: another the caller holds, while small ones keep both workers busy.
READ_AHEAD_BYTES = 64 * 1024 * 1024


def weights_path(path: str | os.PathLike[str]) -> Path:
    """The weights of a converted output: ``path`` itself, ``path/weights.parquet``, or for a split
    output ``path/weights.parquet.index.json`` (which :class:`WeightsFile` reads with its files).

    Raises:
        NotConvertedError: no weights file there.
    """
    path = Path(path)
    if path.is_dir():
        folder = path
        path = path / WEIGHTS_FILENAME if (path / WEIGHTS_FILENAME).exists() or not (path / INDEX_FILENAME).exists() \
            else path / INDEX_FILENAME
        if not path.exists():
            raise NotConvertedError(path, "converted weights")
        return _files.regular(path, root=folder)
    if not path.exists():
        raise NotConvertedError(path, "converted weights")
    return _files.regular(path)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``metadata.json`` of a converted output folder (or of the folder of a weights file).

    Read under the JSON cap, strictly, and checked once against the table of its keys' types
    (:data:`streamconv.format.contents.METADATA_TYPES`).

    Raises:
        NotConvertedError: no metadata.json.
        FormatError: it is not strict JSON, not an object, or a known key has the wrong type.
        UnsafeInputError: it is not a regular file, leads outside the folder, or is over the cap.
    """
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    meta_path = folder / METADATA_FILENAME
    try:
        data = _files.read_json(meta_path, root=folder, error=lambda file, reason: FormatError(file, f"metadata is {reason}"))
    except FileNotFoundError:
        raise NotConvertedError(meta_path, "metadata") from None
    return check_metadata(meta_path, data)


#: Times a split output is read again when its files turn out to belong to two outputs (one replaced
#: with ``--force`` while it was read) before :class:`OutputChangedError` is raised.
READ_ATTEMPTS = 3
_PART_NAME = re.compile(r"weights-(\d{5})-of-(\d{5})\.parquet")


def _before_parts(listed: list[Listed]) -> None:
    """Called between reading a split index and opening its files (tests swap files here)."""


class WeightsFile:
    """A converted output's weights: ``weights.parquet``, or the files its split index lists.

    Every file is opened and its table of contents checked; a tensor may continue from one file into
    the next (a tensor larger than a file), and is listed in the index under the file holding its
    first chunk. ``path`` is an output folder, its weights file, its split index, or a weights file
    of its own (a :class:`~streamconv.format.writer.WeightsWriter` file, no ``metadata.json``).
    ``dequantize`` says what int8 codes decode to: ``float16`` (default) or ``float32`` values, or
    ``None`` for the codes themselves.

    Raises:
        NotConvertedError: no weights there; :class:`PartOfSplitError`: one file of a split output.
        FormatError: a damaged or hostile file. OutputChangedError: the files kept changing while read.
        UnsafeInputError: a file is not a regular one, or leads outside its folder.
    """

    def __init__(self, path: str | os.PathLike[str], dequantize: str | None = "float16") -> None:
        if dequantize not in DEQUANTIZE_CHOICES:
            raise ValueError(f"dequantize={dequantize!r}: choose 'float16', 'float32' or None (the int8 codes)")
        self.dequantize = dequantize
        given = Path(path)
        self.path = weights_path(given)
        folder = self.path.parent
        # The files of an output stay inside it; a weights file given by its own path may be a link.
        root = folder if given.is_dir() or self.path.name in (WEIGHTS_FILENAME, INDEX_FILENAME) else None
        part = _PART_NAME.fullmatch(self.path.name)
        if part is not None:
            raise PartOfSplitError(self.path, int(part.group(1)), int(part.group(2)),
                                   folder if (folder / INDEX_FILENAME).exists() else None)
        # The output's chunk size bounds every chunk: from its metadata.json, if this is its weights
        # (a metadata.json that cannot be read is the business of those who read it: the cap holds).
        limit = MAX_CHUNK_BYTES
        if self.path.name in (WEIGHTS_FILENAME, INDEX_FILENAME) and (folder / METADATA_FILENAME).exists():
            try:
                recorded = read_metadata(folder).get("chunk_size")
            except (FormatError, UnsafeInputError):
                recorded = None
            limit = min(limit, recorded) if isinstance(recorded, int) and recorded > 0 else limit
        for attempt in range(READ_ATTEMPTS):
            try:
                self._read(folder, root, limit)
                return
            except OutputChanged as changed:
                if attempt == READ_ATTEMPTS - 1:
                    raise OutputChangedError(self.path, str(changed)) from None

    def _read(self, folder: Path, root: Path | None, limit: int) -> None:
        listed = read_index(self.path) if self.path.name == INDEX_FILENAME else [Listed(self.path, [], None, None)]
        if self.path.name == INDEX_FILENAME:
            _before_parts(listed)
        self.entries: dict[str, Entry] = {}
        self.parts: list[WeightsPart] = []
        expected: Expected = None
        for record in listed:
            split = self.path.name == INDEX_FILENAME
            try:
                part = WeightsPart(record.path, len(self.parts), self.entries, expected, root=folder if split else root,
                                   listed=record if split else None, chunk_limit=limit)
            except FileNotFoundError:
                if split:  # listed a moment ago, gone now: replaced
                    raise OutputChanged(f"{record.path.name} disappeared") from None
                raise NotConvertedError(record.path, "converted weights") from None
            if split and part.started != record.tensors:
                raise OutputChanged(f"{record.path.name} holds other tensors than {INDEX_FILENAME} lists")
            self.parts.append(part)
            expected = part.expected
        if expected is not None:
            self.parts[-1].finish_entry(self.entries[expected[0]], expected)

    @property
    def files(self) -> list[Path]:
        """The Parquet files, in order."""
        return [part.path for part in self.parts]

    def _groups(self, names: Sequence[str] | None) -> tuple[set[str], list[tuple[int, int]]]:
        wanted = [self.entries[n] for n in names] if names is not None else list(self.entries.values())
        return {e.row["name"] for e in wanted}, sorted({g for e in wanted for g in e.groups})

    def _table(self, part: WeightsPart, group: int) -> pa.Table:
        # Only the data column (and an int8 file's scales): the rest of each row is in the table of
        # contents, read once.
        table = part.read_columns(group, ["data", "scales"] if part.quantized else ["data"])
        if table.num_rows != part.group_rows(group):
            raise FormatError(part.path, f"row group {group} is damaged (its data column has {table.num_rows} rows, "
                                         f"its other columns {part.group_rows(group)})")
        return table

    def records(self, names: Sequence[str] | None = None, workers: int = DEFAULT_WORKERS) -> Iterator[TensorRecord]:
        """Decode the tensors (all, or those named), in file order, one at a time.

        Chunks of the next row groups are decoded while the oldest group finishes, up to
        :data:`CHUNKS_IN_FLIGHT` per worker: a row group may hold a single chunk (a 2 GB model's
        1 MiB row groups), and waiting for each group would leave all workers but one idle. The
        next row group is read on a thread of its own (:meth:`_prefetched`), and tensors start
        decoding ahead of the one yielded only up to :data:`READ_AHEAD_BYTES`.
        """
        wanted, groups = self._groups(names)
        pending: dict[str, np.ndarray] = {}
        in_flight: deque[tuple[list[Answer[None]], list[str]]] = deque()
        queued = 0
        arrays = Recycler([numel(e.shape) * e.array_dtype(self.dequantize).itemsize for e in self.entries.values()
                           if e.row["name"] in wanted])
        with DaemonWorkers(workers, "streamconv-decode") as pool:
            for part, group, table in self._prefetched(groups):
                segments = self._segments(part, group, wanted, pending, bool(in_flight))
                for i, segment in enumerate(segments):
                    if i:  # yield what is started before starting more than the budget allows
                        while in_flight:
                            yield from self._finished(*in_flight.popleft(), pending)
                        queued = 0
                    if segment:
                        in_flight.append(part.decode_group(group, table, segment, pending, pool, arrays,
                                                           self.dequantize))
                        queued += len(in_flight[-1][0])
                while queued > CHUNKS_IN_FLIGHT * workers:
                    jobs, finished = in_flight.popleft()
                    queued -= len(jobs)
                    yield from self._finished(jobs, finished, pending)
            while in_flight:
                yield from self._finished(*in_flight.popleft(), pending)

    def _segments(self, part: WeightsPart, group: int, wanted: set[str], pending: dict[str, np.ndarray],
                  busy: bool) -> list[set[str]]:
        """``group``'s wanted tensors in file order, split before each tensor whose start would take
        the bytes started and not yet yielded past :data:`READ_AHEAD_BYTES` (the caller then yields
        everything before it). Only the last tensor of a group continues into the next one, so after
        a split nothing is left pending."""
        chunks = [(name, index) for name, index, *_ in part.group_chunks(group) if name in wanted]
        ahead = sum(a.nbytes for a in pending.values())  # scales included
        segments: list[set[str]] = [set()]
        for name, index in chunks:
            if index == 0:
                entry = self.entries[name]
                size = numel(entry.shape) * entry.array_dtype(self.dequantize).itemsize
                if ahead + size > READ_AHEAD_BYTES and (busy or ahead or segments[-1]):
                    segments.append(set())
                    ahead = 0
                ahead += size
            segments[-1].add(name)
        return segments

    def _finished(self, jobs: list[Answer[None]], finished: list[str], pending: dict[str, np.ndarray]
                  ) -> Iterator[TensorRecord]:
        for job in jobs:
            job.get()
        for name in finished:
            entry = self.entries[name]
            scales = pending.pop(SCALES + name).reshape(entry.shape[0], -1) if entry.block else None
            yield TensorRecord(**vars(entry.info), array=pending.pop(name).reshape(entry.shape), scales=scales)

    def _prefetched(self, groups: list[tuple[int, int]]) -> Iterator[tuple[WeightsPart, int, pa.Table]]:
        """The row groups' tables, the next read (without the GIL) while the current one decodes."""
        parts = [(self.parts[file], group) for file, group in groups]
        with DaemonWorkers(1, "streamconv-read") as reader:
            future = reader.submit(self._table, *parts[0]) if parts else None
            for i, (part, group) in enumerate(parts):
                assert future is not None
                table = future.get()
                future = reader.submit(self._table, *parts[i + 1]) if i + 1 < len(parts) else None
                yield part, group, table

    def chunks(self, names: Sequence[str] | None = None, workers: int = DEFAULT_WORKERS
               ) -> Iterator[tuple[TensorInfo, int, np.ndarray]]:
        """Decode chunk by chunk, in file order: ``(info, element offset, 1-D array)``.

        Memory holds one row group's chunks, never a whole tensor.
        """
        wanted, groups = self._groups(names)
        with DaemonWorkers(workers, "streamconv-decode") as pool:
            for part, group, table in self._prefetched(groups):
                jobs = []
                scales = payloads(table, "scales") if part.quantized else [None] * table.num_rows
                for payload, scale_payload, chunk in zip(payloads(table), scales, part.group_chunks(group), strict=True):
                    name, count = chunk.name, chunk.element_count
                    if name in wanted:
                        entry = self.entries[name]
                        dtype = entry.array_dtype(self.dequantize)
                        try:
                            out = np.empty(count, dtype=dtype)
                            scale_out = np.empty(entry.scale_count(count), np.float16)
                        except MemoryError:
                            raise OutOfMemoryError(part.path, f"decoding tensor {quote(name)}",
                                                   count * dtype.itemsize) from None
                        job = pool.submit(part.decode_quantized, entry, chunk, payload, scale_payload, out, scale_out) \
                            if entry.block else pool.submit(part.decode_chunk, name, chunk.chunk_index, payload,
                                                            chunk.checksum, out)
                        jobs.append((entry.info, chunk.element_offset, out, job))
                for info, offset, out, job in jobs:
                    job.get()
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
    path: str | os.PathLike[str], *, names: NameKind = "stored", workers: int = DEFAULT_WORKERS,
    dequantize: str | None = "float16",
) -> Iterator[TensorRecord]:
    """Yield a :class:`TensorRecord` for every tensor, one at a time, in file order.

    Memory holds a few row groups, the tensors they complete, and arrays of tensors the caller has
    dropped that a tensor soon to come will be decoded into (never one still referred to; see
    :class:`streamconv.format.recycler.Recycler`). The records are the same whatever
    ``names``; it says which name a record unpacks as (``for name, array in iter_tensors(...)``).

    Args:
        path: A folder written by ``streamconv convert``, its ``weights.parquet``, or the split index.
        names: ``stored`` or ``source`` (the source checkpoint's names, a Hugging Face state dict's).
        workers: Threads that decompress chunks.
        dequantize: What an int8 tensor (``--dtype int8``) reads as: ``float16`` (default) or
            ``float32`` values, or ``None`` for its int8 codes; its record's ``scales`` has the
            scales in every case.

    Raises:
        FormatError: the file is not a streamconv weights file or is damaged.

    Example:
        >>> for name, array in streamconv.iter_tensors("whisper-parquet", names="source"): ...
    """
    _check_names(names)
    for record in WeightsFile(path, dequantize).records(workers=workers):
        yield dataclasses.replace(record, names=names) if names != "stored" else record


def load(path: str | os.PathLike[str], *, names: NameKind = "stored", dequantize: str | None = "float16"
         ) -> dict[str, np.ndarray]:
    """Load every tensor into a dict of numpy arrays (needs memory for the whole model).

    Args:
        path: A converted output folder, its weights file, or its split index.
        names: ``stored`` keys the dict by stored names, ``source`` by the source checkpoint's
            names (a Hugging Face state dict).
        dequantize: int8 tensors as ``float16`` (default) or ``float32`` values, or ``None`` for
            their codes (:func:`iter_tensors` gives their scales too).

    Example:
        >>> streamconv.load("minilm-parquet")["embeddings.word_embeddings.weight"].shape  # (30522, 384)
    """
    _check_names(names)
    records = WeightsFile(path, dequantize).records()
    return {record.source_name if names == "source" else record.name: record.array for record in records}


def load_tensor(path: str | os.PathLike[str], name: str, *, names: NameKind = "stored",
                dequantize: str | None = "float16") -> np.ndarray:
    """Read one tensor, touching only the row groups that hold it.

    Args:
        path: A converted output folder, its weights file, or its split index.
        name: The stored tensor name (or its source name, with ``names="source"``).
        dequantize: An int8 tensor as ``float16`` (default) or ``float32`` values, or ``None``
            for its codes.

    Raises:
        TensorNotFoundError: no tensor has that name.
    """
    _check_names(names)
    weights = WeightsFile(path, dequantize)
    if names == "source":
        name = next((n for n, e in weights.entries.items() if e.row["source_name"] == name), "\0" + name)
    if name not in weights.entries:
        raise TensorNotFoundError(weights.path, name.lstrip("\0"))
    return next(weights.records([name])).array
