"""Export a converted output back to a Hugging Face checkpoint: safetensors under the source names.

Every safetensors header is computed first from the table of contents (names, shapes, dtypes give
the offsets), then the data is streamed chunk by chunk from the Parquet rows to its offset in the
file, so memory holds one row group, never a whole tensor. The checkpoint gets ``config.json`` and
every asset of the output; sentence-transformers Dense weights go back to ``<module>/model.safetensors``
under their names without the module prefix. The folder is built under a temporary name and
appears only when complete, with ``streamconv_export.json`` (the output exported and every file
written), by which a later ``export --force`` knows the folder as its own; :mod:`.export_checks`
checks every path and name from the output before anything is written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from streamconv import _files
from streamconv import progress as progress_bars
from streamconv._files import file_record
from streamconv._version import __version__
from streamconv.constants import EXPORT_DTYPES, canonical_dtype
from streamconv.dtypes import DType, by_code, by_name, by_numpy
from streamconv.errors import FormatError, InvalidOptionError
from streamconv.format.reader import TensorInfo, WeightsFile, read_metadata
from streamconv.format.schema import EXPORT_FORMAT, EXPORT_MARKER_FILENAME, METADATA_FILENAME
from streamconv.format.staging import check_output, clean_leftovers, output_path, staged_output
from streamconv.plans import FALLBACK, get_plan
from streamconv.stages.casting import cast_array, fallback_dtype, finite_peak, overflow_note, planned_dtype
from streamconv.tools import export_checks
from streamconv.units import parse_size

__all__ = ["EXPORT_DTYPES", "ExportResult", "export"]

#: Version of ``streamconv_export.json`` (docs/format.md).
EXPORT_MARKER_VERSION = 1
#: Largest root safetensors file before the checkpoint is sharded (transformers' own default).
DEFAULT_MAX_SHARD_SIZE = 5 * 1024**3
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass
class ExportResult:
    """What :func:`export` wrote.

    Attributes:
        output: The converted output read.
        target: The checkpoint folder written.
        dtype: ``keep``, ``float16`` or ``float32``.
        tensor_count: Tensors written.
        files: The safetensors files and assets written, with bytes and sha256.
        warnings: What the user should know (only some parts of the model were converted...).
        seconds: Wall time.
    """

    output: Path
    target: Path
    dtype: str
    tensor_count: int = 0
    files: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {**vars(self), "output": str(self.output), "target": str(self.target)}


@dataclass
class _File:
    """One safetensors file to write: its tensors (stored name -> name in the file) and offsets."""

    path: str
    names: dict[str, str] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)
    size: int = 0

    def add(self, info: TensorInfo, key: str, dtype: DType) -> None:
        nbytes = info.numel * dtype.itemsize
        self.names[info.name] = key
        self.header[key] = {"dtype": dtype.code, "shape": list(info.shape), "data_offsets": [self.size, self.size + nbytes]}
        self.size += nbytes

    def header_bytes(self) -> bytes:
        """8-byte length + JSON header padded with spaces to a multiple of 8, as safetensors requires."""
        raw = json.dumps({"__metadata__": {"format": "pt"}, **self.header}, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        return len(raw).to_bytes(8, "little") + raw


def export(
    output: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    dtype: str = "keep",
    max_shard_size: int | str | None = None,
    force: bool = False,
    progress: bool = False,
) -> ExportResult:
    """Write a converted output as a Hugging Face checkpoint folder that transformers loads.

    Args:
        output: A folder written by ``streamconv convert``.
        target: The checkpoint folder to create.
        dtype: ``keep`` (the stored dtypes: bit-exact after a ``--dtype keep`` conversion),
            ``float16`` or ``float32`` (float tensors only; also spelt ``fp16``, ``f32``...). As in :func:`streamconv.convert`, a
            tensor with finite values beyond the dtype's range (``|x| > 65504`` for float16) is
            written in float32 instead (or its stored dtype, if float32 cannot hold it either),
            with a warning.
        max_shard_size: Largest ``model.safetensors`` before sharding into
            ``model-0000N-of-0000M.safetensors`` + ``model.safetensors.index.json`` (default 5 GiB):
            bytes, or a size string as transformers writes it (``"5GB"`` = 5 * 10**9, ``"5GiB"``).
        force: Replace ``target`` if it is a checkpoint an earlier export wrote (its
            ``streamconv_export.json`` lists every file in it) or an empty folder, only once the new
            one is complete.
        progress: Show a bar over the bytes written on stderr (see :mod:`streamconv.progress`).

    Returns:
        The :class:`ExportResult`.

    Raises:
        OutputExistsError: ``target`` exists and ``force`` is false.
        OutputRefusedError: ``target`` holds something export did not write, or is (holds, or lies
            inside) ``output`` or the checkpoint ``output`` was converted from.
        FormatError, NotConvertedError: ``output`` is damaged or not a converted output; nothing is left.
        UnsafeInputError: a module or asset path in ``output``'s metadata.json leads outside it.

    Example:
        >>> streamconv.export("minilm-parquet", "minilm-hf")   # SentenceTransformer("minilm-hf") loads it
    """
    started = time.perf_counter()
    dtype = str(canonical_dtype(dtype))
    if dtype not in EXPORT_DTYPES:
        raise InvalidOptionError(f"{{dtype=}} is not an export dtype; choose one of {', '.join(EXPORT_DTYPES)}",
                                 "dtype", dtype=dtype)
    shard_size = DEFAULT_MAX_SHARD_SIZE if max_shard_size is None else parse_size(max_shard_size, "max_shard_size")
    source, target = Path(output).expanduser(), output_path(target, "target")
    metadata = read_metadata(source)
    check_output(target, _reads(source, metadata), force, "target", kind="export")
    # int8 codes are written as their values: float32 if asked for, float16 otherwise.
    weights = WeightsFile(source, dequantize="float32" if dtype == "float32" else "float16")
    folders, layout = _checked_layout(source, metadata, weights, dtype, shard_size)
    result = ExportResult(source, target, dtype, tensor_count=len(weights.entries), warnings=_part_warnings(metadata))
    # Folders that killed exports to this target left behind; a live run's are never touched.
    result.warnings.extend(f"removed {p.name}, left by an interrupted run" for p in clean_leftovers(target))
    total = sum(f.size for group in layout.values() for f in group)
    bar = progress_bars.bar(total, "bytes", "exporting", enabled=progress)
    assets = metadata.get("assets") or []
    with bar, staged_output(target, force, expected_bytes=total, option="target", kind="export") as staging:
        files = _write_weights(weights, folders, dtype, shard_size, staging, result.warnings, bar)
        if len(files[""]) > 1:
            _write_index(files[""], staging)
        for asset in assets:
            _copy_asset(source, staging, asset)
        written = [f.path for group in files.values() for f in group]
        written += [INDEX_FILE] if len(files[""]) > 1 else []
        result.files = [file_record(staging / p, staging) for p in written]
        result.files += [file_record(staging / a["path"], staging) for a in assets]
        _files.write_json({"format": EXPORT_FORMAT, "format_version": EXPORT_MARKER_VERSION,
                           "streamconv_version": __version__, "output": str(source.resolve()), "dtype": dtype,
                           "files": result.files}, staging / EXPORT_MARKER_FILENAME)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _reads(source: Path, metadata: dict[str, Any]) -> dict[str, Path]:
    """The folders export may never replace: the output exported and the checkpoint it was made from."""
    reads = {"the output being exported": source}
    recorded = metadata.get("source")
    path = recorded.get("path") if isinstance(recorded, dict) else None
    if isinstance(path, str) and path.strip():
        reads["the checkpoint the output was converted from"] = Path(path)
    return reads


def _checked_layout(source: Path, metadata: dict[str, Any], weights: WeightsFile, dtype: str,
                    shard_size: int) -> tuple[dict[str, str], dict[str, list[_File]]]:
    """The module folders and the files to write, once every path and name in them is checked."""
    plan = get_plan(str(metadata.get("model_type", FALLBACK)))()
    folders = export_checks.check_module_folders(source, plan.module_folders(metadata))
    export_checks.check_tensors(source, (entry.info for entry in weights.entries.values()))
    layout = _layout(weights, folders, dtype, shard_size)
    export_checks.check_names(source, {f.path: list(f.names.values()) for group in layout.values() for f in group})
    written = [f.path for group in layout.values() for f in group]
    written += [INDEX_FILE] if len(layout[""]) > 1 else []
    assets = metadata.get("assets") or []
    if not isinstance(assets, list):
        raise FormatError(source / METADATA_FILENAME, "its assets are not a list")
    export_checks.check_paths(source, [*written, EXPORT_MARKER_FILENAME], assets)
    return folders, layout


def _write_weights(weights: WeightsFile, folders: dict[str, str], dtype: str, shard_size: int, staging: Path,
                   warnings: list[str], bar: progress_bars.Progress) -> dict[str, list[_File]]:
    """Write the tensors; a tensor whose values do not fit ``dtype`` is written again wider (rare),
    by convert's rule (:func:`~streamconv.stages.casting.fallback_dtype`) and with its note."""
    files = _layout(weights, folders, dtype, shard_size)
    overflow = _write_tensors(weights, files, staging, bar)
    if not overflow:
        return files
    for path in (f.path for group in files.values() for f in group):
        (staging / path).unlink()
    kept = {name: _fallback(weights.entries[name].info, peak) for name, peak in overflow.items()}
    warnings += [overflow_note(weights.entries[n].info.source_name, dtype, kept[n], p) for n, p in overflow.items()]
    files = _layout(weights, folders, dtype, shard_size, kept)
    bar.reset()
    _write_tensors(weights, files, staging, bar)
    return files


def _part_warnings(metadata: dict[str, Any]) -> list[str]:
    """A warning when the output holds only some parts of its model's plan."""
    from streamconv.plans import PLANS

    plan = next((p for p in PLANS if p.name == metadata.get("model_type")), None)
    parts = list(metadata.get("parts") or [])
    if plan is None or set(plan.parts) <= set(parts):
        return []
    missing = [p for p in plan.parts if p not in parts]
    # Whether the source had those parts is not recorded (a vision-only checkpoint has no text
    # tower), so the warning says what was converted, not what was left out.
    return [
        f"the output holds only the {', '.join(parts)} part(s) of the {plan.name} plan, not {', '.join(missing)}: "
        f"if the source had them, a model class that needs them initialises them randomly; convert with "
        f"--parts {','.join(plan.parts)} to keep every part the source has"
    ]


def _target_dtype(info: TensorInfo, dtype: str) -> DType:
    stored = by_name("float16" if info.quantized else info.dtype)  # int8 codes: their float16 values
    assert stored is not None
    return planned_dtype(stored, dtype)


def _fallback(info: TensorInfo, peak: float) -> DType:
    """The dtype a tensor that overflows the export dtype is written in, by convert's rule."""
    stored = by_name(info.dtype)
    assert stored is not None
    return fallback_dtype(stored, peak)


def _layout(
    weights: WeightsFile, prefixes: dict[str, str], dtype: str, shard_size: int, kept: dict[str, DType] | None = None
) -> dict[str, list[_File]]:
    """The files to write: root shards under ``""``, and one per module folder (``prefixes``: tensor
    prefix -> folder, checked by :func:`export_checks.check_module_folders`).

    ``kept`` gives the dtype of tensors that do not fit ``dtype`` (by stored name).
    """
    files: dict[str, list[_File]] = {"": [_File(SINGLE_FILE)]}
    for entry in weights.entries.values():
        info = entry.info
        store = (kept or {}).get(info.name) or _target_dtype(info, dtype)
        prefix = next((p for p in prefixes if info.source_name.startswith(p)), None)
        if prefix is not None:
            module = files.setdefault(prefixes[prefix], [_File(f"{prefixes[prefix]}/{SINGLE_FILE}")])[0]
            module.add(info, info.source_name[len(prefix):], store)
            continue
        shards = files[""]
        if shards[-1].names and shards[-1].size + info.numel * store.itemsize > shard_size:
            shards.append(_File(""))
        shards[-1].add(info, info.source_name, store)
    count = len(files[""])
    if count > 1:
        for i, shard in enumerate(files[""], start=1):
            shard.path = f"model-{i:05d}-of-{count:05d}.safetensors"
    return files


def _write_tensors(
    weights: WeightsFile, files: dict[str, list[_File]], staging: Path, bar: progress_bars.Progress
) -> dict[str, float]:
    """Write every header, then every chunk at its place: one row group in memory at a time.

    Returns:
        The largest finite magnitude of each tensor with values beyond the range of the dtype it
        was written in (its values there are wrong: write again with a wider dtype), by name.
    """
    overflow: dict[str, float] = {}
    where: dict[str, tuple[_File, BinaryIO, int]] = {}
    handles: list[BinaryIO] = []
    try:
        for group in files.values():
            for file in group:
                path = staging / file.path
                path.parent.mkdir(parents=True, exist_ok=True)
                handle: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed below
                handles.append(handle)
                header = file.header_bytes()
                handle.write(header)
                handle.truncate(len(header) + file.size)
                for name in file.names:
                    where[name] = (file, handle, len(header))
        for info, offset, chunk in weights.chunks():
            file, target, base = where[info.name]
            header = file.header[file.names[info.name]]
            store = by_code(header["dtype"])
            data = _cast(chunk, store)
            if data is not chunk and store is not None and store.max < by_numpy(chunk.dtype).max:
                peak = finite_peak(chunk)
                if peak > store.max:
                    overflow[info.name] = max(peak, overflow.get(info.name, 0.0))
            target.seek(base + header["data_offsets"][0] + offset * data.dtype.itemsize)
            target.write(np.ascontiguousarray(data).view(np.uint8).data)
            bar.update(data.nbytes)
    finally:
        for handle in handles:
            handle.close()
    return overflow


def _cast(data: np.ndarray, store: DType | None) -> np.ndarray:
    assert store is not None
    with np.errstate(over="ignore"):  # values beyond the range are found and written again wider
        return cast_array(data, store)


def _write_index(shards: list[_File], staging: Path) -> None:
    index = {
        "metadata": {"total_size": sum(s.size for s in shards)},
        "weight_map": {key: shard.path for shard in shards for key in shard.header},
    }
    _files.write_json(index, staging / INDEX_FILE)


def _copy_asset(source: Path, staging: Path, asset: dict[str, Any]) -> None:
    """Copy one asset listed in metadata.json, checking its sha256 against the record."""
    path = _files.contained(source, asset.get("path"), named_in=source / METADATA_FILENAME)
    if not path.exists():
        raise FormatError(path, "an asset listed in metadata.json is missing")
    relative = path.relative_to(source).as_posix()
    target = staging / relative
    _files.copy_file(path, target, root=source)
    if asset.get("sha256") and _files.sha256_file(target) != asset["sha256"]:
        raise FormatError(path, "an asset differs from its sha256 in metadata.json")
