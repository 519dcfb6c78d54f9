"""Check a converted output on its own: every chunk, every file, and metadata.json against them.

:func:`verify` needs neither the source checkpoint nor torch. It reads the weights one row group at
a time on worker threads (zstd, xxhash and hashlib release the GIL), checks each chunk's stored
checksum (format 2) and decodes it into a scratch array that is dropped at once, so memory holds a
few row groups whatever the model's size. It hashes every file ``metadata.json`` lists (weights
and assets) and compares the counts in ``metadata.json`` with the table of contents. Everything
found is collected, never only the first problem.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamconv import _files
from streamconv.constants import DEFAULT_WORKERS, check_workers
from streamconv.errors import (
    FormatError,
    NotConvertedError,
    OutOfMemoryError,
    UnsafeInputError,
)
from streamconv.format import codec
from streamconv.format.arrow import memory_ran_out, payloads
from streamconv.format.reader import WeightsFile, read_metadata, weights_path
from streamconv.format.schema import INDEX_FILENAME, METADATA_FILENAME, WEIGHTS_FILENAME, checksum
from streamconv.messages import one_line
from streamconv.workers import Answer, DaemonWorkers

__all__ = ["VerifyReport", "verify"]

_HASH_BLOCK = 1 << 20
_COLUMNS = ["name", "chunk_index", "element_count", "data"]


@dataclass
class VerifyReport:
    """What :func:`verify` found.

    Attributes:
        output: The output folder (or the weights file, for one verified without ``metadata.json``).
        passed: True if nothing is wrong (``unchecked`` may still list what could not be checked).
        format_version: Format version of the weights (the oldest, for several files).
        tensor_count: Tensors in the table of contents.
        chunk_count: Chunks read and decoded.
        checked_bytes: Bytes of stored chunk data read.
        damaged: Stored tensor name -> what is wrong with it (one line per damaged chunk).
        problems: Everything else that is wrong: files missing or differing from metadata.json, a
            table of contents that cannot be read, counts that do not match.
        unchecked: What could not be checked, and why (an older format, no "files" in metadata.json).
        files: Every file checked: ``{path, bytes, sha256, kind, ok}``.
        seconds: Wall time.
    """

    output: Path
    passed: bool = True
    format_version: int | None = None
    tensor_count: int = 0
    chunk_count: int = 0
    checked_bytes: int = 0
    damaged: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, the output as a string."""
        return {**vars(self), "output": str(self.output)}


def verify(output: str | Path, *, workers: int = DEFAULT_WORKERS) -> VerifyReport:
    """Re-read a converted output and report every damaged tensor and every mismatch.

    Args:
        output: A folder written by ``streamconv convert``, or a weights file of its own (a
            :class:`~streamconv.format.writer.WeightsWriter` file without ``metadata.json``: what only
            ``metadata.json`` records is listed in ``unchecked``).
        workers: Threads that read, checksum and decode.

    Returns:
        A :class:`VerifyReport`; ``passed`` is False if anything is wrong.

    Raises:
        NotConvertedError: there are no weights under ``output`` at all.
        PartOfSplitError: ``output`` is one file of a split output.
        OutOfMemoryError: memory ran out (a sound output is never reported damaged for that).
    """
    check_workers(workers)
    try:
        return _verify(Path(output), workers)
    except OutOfMemoryError:
        raise
    except (MemoryError, RuntimeError) as exc:  # a worker thread that could not start, an allocation
        if memory_ran_out(exc):
            raise OutOfMemoryError(Path(output), "verifying it") from None
        raise


def _verify(given: Path, workers: int) -> VerifyReport:
    start = time.perf_counter()
    folder = given if given.is_dir() else given.parent
    report = VerifyReport(folder)
    # A weights file given alone, with no metadata.json beside it (a WeightsWriter file): its chunks
    # and table of contents are checked, nothing that only metadata.json records.
    bare = not given.is_dir() and (given.name not in (METADATA_FILENAME, WEIGHTS_FILENAME, INDEX_FILENAME)
                                   or not (folder / METADATA_FILENAME).exists())
    if bare:
        report.output = given
        report.unchecked.append("no metadata.json: file sizes, sha256 and counts are not checked "
                                "(a weights file written without `streamconv convert`)")
    metadata = {} if bare else _metadata(folder, report)
    try:
        path: Path | None = weights_path(given if bare else folder)  # no weights at all: NotConvertedError
    except UnsafeInputError as exc:
        path = None
        report.problems.append(f"weights: {exc}")
    with DaemonWorkers(workers, "streamconv-verify") as pool:
        hashes = _hash_listed(folder, metadata, report, pool)
        weights: WeightsFile | None = None
        try:
            weights = WeightsFile(path) if path is not None else None
        except (FormatError, NotConvertedError, UnsafeInputError) as exc:
            report.problems.append(f"weights: {exc}")
        if weights is not None:
            _check_chunks(weights, report, pool, workers)
            _check_counts(weights, metadata, report)
        for job in hashes:
            job.get()
    report.passed = not (report.damaged or report.problems)
    report.seconds = time.perf_counter() - start
    return report


def _metadata(folder: Path, report: VerifyReport) -> dict[str, Any]:
    try:
        return read_metadata(folder)
    except NotConvertedError:
        report.problems.append("metadata.json is missing")
    except (FormatError, UnsafeInputError) as exc:
        report.problems.append(f"metadata.json: {exc.problem}")
    return {}


def _hash_listed(folder: Path, metadata: dict[str, Any], report: VerifyReport, pool: DaemonWorkers
                 ) -> list[Answer[None]]:
    """Start hashing every weights file and asset metadata.json lists; the jobs fill ``report``."""
    listed: list[tuple[str, dict[str, Any]]] = []
    for kind in ("files", "assets"):
        entries = metadata.get(kind)
        if not isinstance(entries, list):
            if metadata and kind == "files":
                report.unchecked.append("metadata.json lists no weights files (format 1): "
                                        "their sizes and sha256 are not checked")
            continue
        listed.extend((kind, e) for e in entries if isinstance(e, dict))
    jobs = []
    for kind, entry in listed:
        record: dict[str, Any] = {"path": str(entry.get("path")), "kind": "weights" if kind == "files" else "asset",
                                  "bytes": None, "sha256": None, "ok": False}
        report.files.append(record)
        jobs.append(pool.submit(_check_file, folder, entry, record, report))
    return jobs


def _check_file(folder: Path, entry: dict[str, Any], record: dict[str, Any], report: VerifyReport) -> None:
    """Size and sha256 of one listed file against metadata.json (runs on a worker thread)."""
    name = record["path"]
    try:
        path = _files.contained(folder, entry.get("path"), named_in=folder / METADATA_FILENAME)
        if not path.exists():
            report.problems.append(f"{name}: listed in metadata.json but missing")
            return
        digest = _files.sha256_file(path, root=folder)
        size = path.stat().st_size
    except UnsafeInputError as exc:
        report.problems.append(f"{name}: {exc.problem}")
        return
    except MemoryError:
        raise OutOfMemoryError(folder / name, "hashing it") from None
    except OSError as exc:
        report.problems.append(f"{name}: cannot be read ({exc.strerror or exc})")
        return
    record["bytes"], record["sha256"] = size, digest
    wrong = []
    if "bytes" in entry and entry["bytes"] != size:
        wrong.append(f"{size} bytes, metadata.json says {entry['bytes']}")
    if "sha256" in entry and entry["sha256"] != record["sha256"]:
        wrong.append("sha256 differs from metadata.json")
    if "sha256" not in entry:
        report.unchecked.append(f"{name}: metadata.json has no sha256 for it")
    record["ok"] = not wrong
    if wrong:
        report.problems.append(f"{name}: {'; '.join(wrong)}")


def _check_chunks(weights: WeightsFile, report: VerifyReport, pool: DaemonWorkers, workers: int) -> None:
    """Read, checksum and decode every chunk, ``2 * workers`` row groups in flight at most."""
    if any(not part.has_checksums for part in weights.parts):
        report.unchecked.append("format 1: chunks have no checksums; decoded sizes only")
    report.format_version = min(part.version for part in weights.parts)
    report.tensor_count = len(weights.entries)
    local = threading.local()
    pending: list[Answer[tuple[int, int, dict[str, list[str]]]]] = []
    for file, group in _all_groups(weights):
        pending.append(pool.submit(_check_group, weights, file, group, local))
        if len(pending) >= 2 * workers:
            _collect(pending.pop(0), report)
    for job in pending:
        _collect(job, report)


def _all_groups(weights: WeightsFile) -> Iterator[tuple[int, int]]:
    for part in weights.parts:
        for group in range(part.parquet.metadata.num_row_groups):
            yield part.index, group


def _collect(job: Answer[tuple[int, int, dict[str, list[str]]]], report: VerifyReport) -> None:
    chunks, nbytes, damaged = job.get()
    report.chunk_count += chunks
    report.checked_bytes += nbytes
    for name, lines in damaged.items():
        report.damaged.setdefault(name, []).extend(lines)


def _check_group(weights: WeightsFile, file: int, group: int, local: threading.local
                 ) -> tuple[int, int, dict[str, list[str]]]:
    """Check one row group's chunks: ``(chunks, stored bytes, damaged tensor -> lines)``.

    Each thread opens its own reader of each file; the decoded chunk is dropped at once.
    """
    part = weights.parts[file]
    readers: dict[int, pq.ParquetFile] = local.__dict__.setdefault("readers", {})
    damaged: dict[str, list[str]] = {}
    columns = [*_COLUMNS, *(["data_xxh3"] if part.has_checksums else []), *(["scales"] if part.quantized else [])]
    try:
        # The file the table of contents was read from (never its path again: it may have been replaced).
        # No Arrow threads, no read-ahead: under a memory limit a thread Arrow cannot start is
        # "Failed to launch worker thread", which is no damage (docs/reliability.md, "Memory").
        reader = readers.get(file) or readers.setdefault(file, pq.ParquetFile(part.source, pre_buffer=False))
        table = reader.read_row_group(group, columns=columns, use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        if memory_ran_out(exc):
            raise OutOfMemoryError(part.path, f"reading row group {group}") from None
        names = sorted(n for n, e in weights.entries.items() if (file, group) in e.groups)
        for name in names or [f"(row group {group})"]:
            damaged.setdefault(name, []).append(f"{part.path.name}: row group {group} unreadable ({one_line(str(exc))})")
        return 0, 0, damaged
    nulls = [c for c in columns if table.column(c).null_count]
    if nulls or table.num_rows != part.group_rows(group):
        wrong = f"column {nulls[0]!r} holds a null" if nulls else \
            f"{table.num_rows} rows, its table of contents {part.group_rows(group)}"
        names = sorted(n for n, e in weights.entries.items() if (file, group) in e.groups)
        for name in names or [f"(row group {group})"]:
            damaged.setdefault(name, []).append(f"{part.path.name}: row group {group} is damaged ({wrong})")
        return 0, 0, damaged
    names, index, counts = (table.column(c).to_pylist() for c in _COLUMNS[:3])
    sums = table.column("data_xxh3").to_pylist() if part.has_checksums else [None] * len(names)
    scales = payloads(table, "scales") if part.quantized else [None] * len(names)
    chunks = part.group_chunks(group) if part.quantized else []
    nbytes = 0
    for row, (name, payload) in enumerate(zip(names, payloads(table), strict=True)):
        nbytes += payload.size
        entry = weights.entries.get(name)
        if entry is not None and entry.block:  # int8 codes: their scales are checked against them too
            nbytes += chunks[row].scales_bytes
            problem = _check_quantized(part, entry, chunks[row], payload, scales[row])
        else:
            problem = _check_chunk(weights, part, name, counts[row], payload, sums[row])
        if problem:
            damaged.setdefault(name, []).append(f"{part.path.name}: chunk {index[row]} {problem}")
    return len(names), nbytes, damaged


def _check_chunk(weights: WeightsFile, part: Any, name: str, count: int, payload: pa.Buffer,
                 expected: int | None) -> str | None:
    entry = weights.entries.get(name)
    if entry is None:
        return "belongs to no tensor of the table of contents"
    if expected is not None and checksum(memoryview(payload)) != expected:
        return "is damaged (checksum mismatch)"
    if not 0 <= count <= max(1, part.chunk_limit // entry.source_itemsize):
        return f"declares {count:,} elements, more than a chunk of this output holds"
    try:
        out = np.empty(count, entry.dtype.numpy)
        codec.decode_into(payload, out, part.compression, part.version)
    except MemoryError:
        raise OutOfMemoryError(part.path, f"decoding tensor {_files.quote(name)}",
                               count * entry.dtype.numpy.itemsize) from None
    except Exception as exc:  # any decoding failure means a damaged chunk
        return f"is damaged ({one_line(str(exc))})"
    return None


def _check_quantized(part: Any, entry: Any, chunk: Any, payload: pa.Buffer, scales: pa.Buffer | None) -> str | None:
    """An int8 chunk decoded as a reader does: codes, scales, and the scales checked against the codes."""
    try:
        part.decode_quantized(entry, chunk, payload, scales, np.empty(chunk.element_count, np.int8),
                              np.empty(entry.scale_count(chunk.element_count), np.float16))
    except MemoryError:
        raise OutOfMemoryError(part.path, f"decoding tensor {_files.quote(entry.row['name'])}",
                               chunk.element_count) from None
    except FormatError as exc:
        return f"is damaged ({exc.problem.split(': ', 1)[-1]})"
    return None


def _check_counts(weights: WeightsFile, metadata: dict[str, Any], report: VerifyReport) -> None:
    found = {
        "tensor_count": len(weights.entries),
        "chunk_count": sum(e.row["chunk_count"] for e in weights.entries.values()),
        "parameter_count": sum(math.prod(e.shape) for e in weights.entries.values()),
    }
    for key, value in found.items():
        if key in metadata and metadata[key] != value:
            report.problems.append(f"metadata.json says {key} {metadata[key]}, the weights hold {value}")
    listed = [f.get("path") for f in metadata.get("files") or [] if isinstance(f, dict)]
    if listed:
        for path in weights.files:
            if path.name not in listed:
                report.problems.append(f"{path.name}: holds weights but metadata.json does not list it")


def exit_code(report: VerifyReport) -> int:
    """0 if the output passed, else the exit code of damaged data (3)."""
    return 0 if report.passed else FormatError.exit_code
