"""The one-call API: checkpoint in, Parquet weights + metadata + assets out."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from streamconv import codec
from streamconv._version import __version__
from streamconv.assets import COMMON_ASSETS, planned_assets, write_assets, write_json
from streamconv.constants import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_COMPRESSION,
    DEFAULT_DTYPE,
    DEFAULT_WORKERS,
    DEFAULT_ZSTD_LEVEL,
    DTYPE_CHOICES,
    DTYPE_NAMES,
    FORMAT_VERSION,
    METADATA_FILENAME,
    NUMPY_DTYPES,
    SAFETENSORS_DTYPES,
    WEIGHTS_FILENAME,
    progress_bars_disabled,
)
from streamconv.errors import CastOverflowError, InvalidOptionError, PlanError, UnsupportedDtypeError
from streamconv.output import check_output, clean_leftovers, staged_output
from streamconv.plans import ModelInfo, Plan, choose_plan
from streamconv.plans.registry import FALLBACK
from streamconv.source import Checkpoint, TensorRef, open_checkpoint
from streamconv.stages import TensorChunk, cast, chunk, matches_any, rename, select
from streamconv.writer import WeightsWriter, check_codec, row_group_bytes_for

__all__ = ["ConversionResult", "ModelConverter", "convert", "plan_tensors"]

# Bytes of sample data compressed by a dry run to estimate the output size.
DRY_RUN_SAMPLE_BYTES = 8 * 1024 * 1024


@dataclass
class ConversionResult:
    """What a conversion wrote (or, for a dry run, would write).

    Attributes:
        source: The checkpoint as given (path or repo id).
        output_dir: The output folder.
        weights_path: The Parquet weights file.
        metadata_path: ``metadata.json``.
        model_type: The plan used.
        detected: True if the plan's detection claims the checkpoint (False for ``generic``, and
            for a plan forced with ``model_type`` on a checkpoint that says nothing of itself).
        parts: The plan parts converted.
        source_layout: Which layout of the plan's family the checkpoint has
            (``WhisperForConditionalGeneration``...; ``as saved`` for one-layout plans).
        dtype: The dtype policy (``float16``, ``keep``...).
        compression: ``zstd`` or ``none``.
        level: The zstd level.
        tensor_count: Tensors written.
        chunk_count: Parquet rows written.
        parameter_count: Elements over all tensors.
        source_bytes: Bytes of the converted tensors in the source.
        output_bytes: Size of the weights file (an estimate for a dry run).
        ratio: ``source_bytes / output_bytes``.
        seconds: Wall time of the conversion.
        warnings: Things the user should know (fp16 overflow kept in float32, unmatched patterns,
            generic used as fallback, an asset that could not be copied or built).
        assets: Files written next to the weights, with sha256 (for a dry run: the files that would
            be copied, or built for a tokenizer.json, without sha256).
        dry_run: True if nothing was written.
        tensors: For a dry run, the planned tensors (name, source name, shape, dtypes, bytes).
    """

    source: str
    output_dir: Path
    weights_path: Path
    metadata_path: Path
    model_type: str
    detected: bool
    parts: list[str]
    source_layout: str
    dtype: str
    compression: str
    level: int
    tensor_count: int = 0
    chunk_count: int = 0
    parameter_count: int = 0
    source_bytes: int = 0
    output_bytes: int = 0
    ratio: float = 0.0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    assets: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False
    tensors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (paths as strings)."""
        data = dataclasses.asdict(self)
        for key in ("output_dir", "weights_path", "metadata_path"):
            data[key] = str(data[key])
        if not self.dry_run:
            del data["tensors"]
        return data


def convert(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    model_type: str = "auto",
    parts: Sequence[str] | None = None,
    dtype: str = DEFAULT_DTYPE,
    compression: str = DEFAULT_COMPRESSION,
    level: int = DEFAULT_ZSTD_LEVEL,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    force: bool = False,
    dry_run: bool = False,
    revision: str | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: bool = False,
    tqdm_class: Any = None,
    strict: bool = False,
) -> ConversionResult:
    """Convert a safetensors checkpoint into a streamconv output folder.

    The output folder holds ``weights.parquet``, ``metadata.json`` and the assets: config,
    tokenizer (built from the slow-tokenizer files when the checkpoint has no ``tokenizer.json``),
    processor and plan files. It is built under a temporary name and appears only when complete.

    Args:
        source: A checkpoint folder, a ``.safetensors`` file, or a hub repo id.
        output: The output folder to create.
        model_type: ``auto`` or a plan name (see :func:`streamconv.plans.plan_names`). A plan
            the checkpoint contradicts is refused; one no plan claims is converted with ``generic``
            and a warning.
        parts: Plan parts to convert (``vision``, ``text``...); the plan's defaults if ``None``.
        dtype: ``float16``, ``bfloat16``, ``float32`` or ``keep``. Integer and bool tensors are
            never cast; a tensor with values outside float16's range is kept in float32.
        compression: ``zstd`` or ``none``.
        level: zstd level (default 3).
        include: Glob patterns over source tensor names; keep only tensors matching one.
        exclude: Glob patterns over source tensor names; drop tensors matching one.
        chunk_size: Largest chunk (one Parquet row) in source bytes.
        force: Replace ``output`` if it exists.
        dry_run: Plan and estimate only; write nothing.
        revision: Hub revision, for hub sources.
        workers: Threads that compress chunks.
        progress: Show a tqdm progress bar in bytes on stderr (unless
            ``STREAMCONV_DISABLE_PROGRESS_BARS`` is set).
        tqdm_class: The tqdm class to use for the bar (``tqdm.tqdm`` by default).
        strict: Fail, instead of warning, when an asset cannot be copied or built (a tokenizer
            that cannot be converted, a config file that is not JSON).

    Returns:
        The :class:`ConversionResult`.

    Raises:
        StreamconvError: a subclass for every bad input; nothing is left under ``output``.

    Example:
        >>> result = streamconv.convert("all-MiniLM-L6-v2", "minilm-parquet", dtype="float16")
        >>> result.ratio
        2.3562
    """
    started = time.perf_counter()
    if dtype not in DTYPE_CHOICES:
        raise InvalidOptionError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    if chunk_size < 1:
        raise InvalidOptionError(f"chunk size must be at least 1 byte, got {chunk_size}")
    check_codec(compression, level)
    output = Path(output).expanduser()
    checkpoint = open_checkpoint(source, revision=revision)
    model = ModelInfo.from_checkpoint(checkpoint)
    plan_cls, detected = choose_plan(model, model_type)
    plan = plan_cls()
    if not dry_run:
        check_output(output, checkpoint.root, force)
    refs, warnings = plan_tensors(checkpoint, plan, parts=parts, include=include, exclude=exclude)
    chosen_parts = list(parts or plan.default_parts)
    if model_type == "auto" and not detected:
        warnings.insert(
            0,
            f"no model plan recognised this checkpoint ({model.describe()}); converted with the "
            f"{FALLBACK} plan, every tensor under its own name; pass --type to choose a plan",
        )

    result = ConversionResult(
        source=checkpoint.source,
        output_dir=output,
        weights_path=output / WEIGHTS_FILENAME,
        metadata_path=output / METADATA_FILENAME,
        model_type=plan.name,
        detected=detected,
        parts=chosen_parts,
        source_layout=plan.layout(checkpoint).name,
        dtype=dtype,
        compression=compression,
        level=level,
        tensor_count=len(refs),
        parameter_count=sum(r.numel for r in refs),
        source_bytes=sum(r.nbytes for r in refs),
        warnings=warnings,
        dry_run=dry_run,
    )
    asset_names = [*COMMON_ASSETS, *plan.asset_files(checkpoint)]
    if dry_run:
        _estimate(result, refs, chunk_size)
        result.assets = planned_assets(checkpoint.root, asset_names)
    else:
        # Folders that killed runs on this output left behind; a live run's are never touched.
        result.warnings.extend(f"removed {p.name}, left by an interrupted run" for p in clean_leftovers(output))
        plan_warnings = list(result.warnings)
        expected = sum(r.numel * _planned_dtype(r, dtype).itemsize for r in refs)  # for a full disk

        def attempt(prescan: bool) -> None:
            result.warnings = list(plan_warnings)
            with staged_output(output, force, expected_bytes=expected) as staging:
                result.assets, asset_warnings = write_assets(checkpoint.root, staging, asset_names, strict=strict)
                result.warnings.extend(asset_warnings)
                _write(result, checkpoint, plan, refs, staging, chunk_size, workers, progress, tqdm_class, started, prescan)

        try:
            attempt(prescan=False)
        except CastOverflowError:
            # A tensor of several chunks does not fit the target dtype and some of its chunks are
            # written already: start again, scanning such tensors before casting them (rare).
            attempt(prescan=True)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def plan_tensors(
    checkpoint: Checkpoint,
    plan: Plan,
    *,
    parts: Sequence[str] | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> tuple[list[TensorRef], list[str]]:
    """The tensors a conversion will write, renamed, with every check done before any data is read.

    The plan's tensors are renamed by the checkpoint's layout onto the plan's canonical names,
    selected by the parts' patterns, checked against the parts' required patterns, filtered by
    ``include``/``exclude`` (over source names), then renamed by the plan's table.

    Args:
        checkpoint: The opened checkpoint.
        plan: The plan to convert it with.
        parts: Plan parts (the plan's defaults if ``None``).
        include: Glob patterns over source names; keep only tensors matching one.
        exclude: Glob patterns over source names; drop tensors matching one.

    Returns:
        The handles, and warnings (patterns that matched nothing).

    Raises:
        PlanError: unknown part, tensors the plan requires are missing, a rename collision, or
            nothing left to convert.
        UnsupportedDtypeError: a kept tensor has a dtype streamconv cannot store.
    """
    unknown = [p for p in parts or () if p not in plan.parts]
    if unknown:
        raise PlanError(
            f"model type {plan.name!r} has no part {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(plan.parts)}"
        )
    rules = plan.selection(parts)
    candidates = plan.tensors(checkpoint)
    canonical = list(rename(candidates, plan.layout(checkpoint).renames))
    kept = list(select(canonical, include=rules.include, exclude=rules.exclude))
    missing = [p for p in rules.required if not any(matches_any(r.name, [p]) for r in kept)]
    if missing:
        raise PlanError(
            f"{checkpoint.root}: this checkpoint lacks tensors the {plan.name!r} plan needs for parts "
            f"{','.join(parts or plan.default_parts)}: none matches {', '.join(missing)} "
            f"(it has {_name_groups(canonical)}); "
            f"choose other --parts ({', '.join(plan.parts)}) or another --type"
        )
    warnings = []
    for pattern in [*include, *exclude]:
        if not any(matches_any(r.source_name, [pattern]) for r in kept):
            where = "no tensor" if not any(matches_any(r.source_name, [pattern]) for r in candidates) else (
                "only tensors outside the converted parts"
            )
            warnings.append(f"pattern {pattern!r} matched {where}")
    # The user's patterns match source names: filter the candidates, which still carry them.
    wanted = {r.source_name for r in select(candidates, include=include, exclude=exclude)}
    kept = [r for r in kept if r.source_name in wanted]
    if not kept:
        raise PlanError(
            f"{checkpoint.root}: no tensor left to convert after --include/--exclude; "
            "loosen the patterns (they match source tensor names, see `streamconv convert --dry-run`)"
        )
    refs = list(rename(kept, rules.renames))
    unsupported = [r for r in refs if r.dtype_code not in SAFETENSORS_DTYPES]
    if unsupported:
        raise UnsupportedDtypeError(
            unsupported[0].path, {r.source_name: r.dtype_code for r in unsupported}, list(SAFETENSORS_DTYPES)
        )
    return refs, warnings


def _name_groups(refs: list[TensorRef], limit: int = 12) -> str:
    """The tensors' top-level names, ``text_model.*, logit_scale``, for error messages."""
    groups = list(dict.fromkeys(r.name.split(".")[0] + (".*" if "." in r.name else "") for r in refs))
    shown = ", ".join(groups[:limit])
    return f"{shown} and {len(groups) - limit} more" if len(groups) > limit else shown or "no tensors"


def _write(
    result: ConversionResult,
    checkpoint: Checkpoint,
    plan: Plan,
    refs: list[TensorRef],
    staging: Path,
    chunk_size: int,
    workers: int,
    progress: bool,
    tqdm_class: Any,
    started: float,
    prescan: bool,
) -> None:
    bar = _progress_bar(result.source_bytes, progress, tqdm_class)
    try:
        chunks = cast(chunk(refs, chunk_size), result.dtype, prescan=prescan)
        writer = WeightsWriter(
            staging / WEIGHTS_FILENAME,
            compression=result.compression,
            level=result.level,
            workers=workers,
            row_group_bytes=row_group_bytes_for(result.source_bytes),
        )

        def on_written(piece: TensorChunk) -> None:
            if piece.note:
                result.warnings.append(piece.note)
            if bar is not None:
                bar.update(piece.ref.dtype.itemsize * piece.element_count)

        with writer:
            summary = writer.write(chunks, on_written=on_written)
    finally:
        if bar is not None:
            bar.close()
    result.chunk_count = summary.chunk_count
    result.output_bytes = (staging / WEIGHTS_FILENAME).stat().st_size
    result.ratio = round(result.source_bytes / result.output_bytes, 4) if result.output_bytes else 0.0
    result.seconds = round(time.perf_counter() - started, 3)
    stored: dict[str, int] = {}
    for name in summary.stored_dtypes.values():
        stored[name] = stored.get(name, 0) + 1
    write_json(_metadata(result, checkpoint, plan, refs, stored, chunk_size), staging / METADATA_FILENAME)


def _progress_bar(total: int, progress: bool, tqdm_class: Any) -> Any:
    if not progress or progress_bars_disabled():
        return None
    if tqdm_class is None:
        from tqdm.auto import tqdm

        tqdm_class = tqdm
    return tqdm_class(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="converting")


def _metadata(
    result: ConversionResult,
    checkpoint: Checkpoint,
    plan: Plan,
    refs: list[TensorRef],
    stored: dict[str, int],
    chunk_size: int,
) -> dict[str, Any]:
    config = checkpoint.config or {}
    # The checkpoint's weight files, and any other file the plan read (sentence-transformers Dense).
    source_files = dict.fromkeys([*checkpoint.weight_files, *(r.path for r in refs)])
    return {
        "format": "streamconv",
        "format_version": FORMAT_VERSION,
        "streamconv_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {
            "id": checkpoint.source,
            "revision": checkpoint.revision,
            "files": [
                {"path": p.relative_to(checkpoint.root).as_posix(), "bytes": p.stat().st_size}
                for p in source_files
            ],
        },
        "model_type": plan.name,
        "model_type_detected": result.detected,
        "parts": result.parts,
        "source_layout": result.source_layout,
        "config_model_type": config.get("model_type"),
        "architectures": config.get("architectures"),
        "dtype": result.dtype,
        "stored_dtypes": stored,
        "compression": {"codec": result.compression, "level": result.level, "byte_planes": True},
        "chunk_size": chunk_size,
        "weights_file": WEIGHTS_FILENAME,
        "tensor_count": result.tensor_count,
        "chunk_count": result.chunk_count,
        "parameter_count": result.parameter_count,
        "source_bytes": result.source_bytes,
        "output_bytes": result.output_bytes,
        "ratio": result.ratio,
        "warnings": result.warnings,
        "seconds": result.seconds,
        "assets": result.assets,
        **plan.metadata(checkpoint),
    }


def _estimate(result: ConversionResult, refs: list[TensorRef], chunk_size: int) -> None:
    """Fill a dry run's result: the planned tensors and an output size from a compressed sample."""
    raw_total = 0
    for ref in refs:
        stored = _planned_dtype(ref, result.dtype)
        nbytes = ref.numel * stored.itemsize
        raw_total += nbytes
        result.tensors.append(
            {
                "name": ref.name,
                "source_name": ref.source_name,
                "shape": list(ref.shape),
                "source_dtype": ref.dtype_name,
                "dtype": DTYPE_NAMES[stored],
                "bytes": nbytes,
            }
        )
    result.chunk_count = sum(1 for _ in chunk(refs, chunk_size))  # lazy pieces: nothing is read
    sample_raw = sample_encoded = 0
    per_tensor = max(1, DRY_RUN_SAMPLE_BYTES // max(1, min(len(refs), 16)))
    for ref in sorted(refs, key=lambda r: r.nbytes, reverse=True)[:16]:
        count = min(ref.numel, max(1, per_tensor // ref.dtype.itemsize))
        if count == 0:
            continue
        piece = TensorChunk(ref, 0, 1, 0, ref.read(0, count))
        data = next(cast(iter([piece]), result.dtype)).data
        sample_raw += data.nbytes
        sample_encoded += len(codec.encode(data, result.compression, result.level))
    ratio = sample_encoded / sample_raw if sample_raw else 1.0
    result.output_bytes = int(raw_total * ratio)
    result.ratio = round(result.source_bytes / result.output_bytes, 4) if result.output_bytes else 0.0


def _planned_dtype(ref: TensorRef, dtype: str) -> np.dtype:
    if dtype == "keep" or not ref.dtype_name.startswith(("float", "bfloat")):
        return ref.dtype
    return NUMPY_DTYPES[dtype]


class ModelConverter:
    """The old system's shape: defaults set once, then ``convert(model, output_dir, model_type)``.

    Args:
        **defaults: Keyword arguments of :func:`convert` applied to every call
            (``dtype="float16"``, ``compression="zstd"``, ``force=True``...).

    Example:
        >>> converter = ModelConverter(dtype="float16")
        >>> converter.convert("openai/clip-vit-base-patch32", "models/clip", model_type="auto")
    """

    def __init__(self, **defaults: Any) -> None:
        bad = sorted(set(defaults) - set(convert.__kwdefaults__ or {}))
        if bad:
            raise InvalidOptionError(f"unknown option(s) {', '.join(bad)} for ModelConverter")
        self.defaults = defaults

    def convert(
        self, model_name_or_path: str | os.PathLike[str], output_dir: str | os.PathLike[str], model_type: str = "auto", **options: Any
    ) -> ConversionResult:
        """Convert one model with the converter's defaults, overridden by ``options``."""
        return convert(model_name_or_path, output_dir, model_type=model_type, **{**self.defaults, **options})
