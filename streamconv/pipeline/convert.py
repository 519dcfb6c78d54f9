"""The one-call API: checkpoint in, Parquet weights + metadata + assets out."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamconv import progress
from streamconv._files import write_json
from streamconv.dtypes import by_name
from streamconv.errors import CastOverflowError, MissingDependencyError, QuantizationBudgetError
from streamconv.format.schema import METADATA_FILENAME, WEIGHTS_FILENAME
from streamconv.format.split_writer import SplitWeightsWriter
from streamconv.format.staging import check_output, clean_leftovers, find_leftovers, output_path, staged_output
from streamconv.format.writer import WeightsWriter, WriteSummary, encode_loaded, row_group_bytes_for
from streamconv.pipeline.assets import planned_assets, write_assets
from streamconv.pipeline.options import ConvertOptions
from streamconv.pipeline.result import ConversionResult
from streamconv.plans import FALLBACK, ModelInfo, Plan, Resolution, choose_plan
from streamconv.sources.checkpoint import Checkpoint, open_checkpoint
from streamconv.sources.read_ahead import read_ahead
from streamconv.sources.ref import TensorRef
from streamconv.sources.remote import HubFile
from streamconv.stages import quantize as int8
from streamconv.stages.casting import planned_dtype
from streamconv.stages.pieces import TensorChunk, cast, chunk
from streamconv.units import format_bytes

__all__ = ["ConversionResult", "ModelConverter", "convert"]

# Bytes of sample data compressed by a dry run to estimate the output size.
DRY_RUN_SAMPLE_BYTES = 8 * 1024 * 1024
# The install line for validation; the same as the validate step's own (streamconv.tools.validate.model).
VALIDATE_INSTALL = "pip install torch 'streamconv[validate]'"


def convert(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: ConvertOptions | None = None,
    **overrides: Any,
) -> ConversionResult:
    """Convert a safetensors checkpoint into a streamconv output folder.

    The output folder holds ``weights.parquet``, ``metadata.json`` and the assets: config,
    tokenizer (built from the slow-tokenizer files when the checkpoint has no ``tokenizer.json``),
    processor and plan files. It is built under a temporary name and appears only when complete.

    Args:
        source: A checkpoint folder, a ``.safetensors`` file, or a hub repo id.
        output: The output folder to create.
        options: A :class:`~streamconv.pipeline.options.ConvertOptions` (the defaults if ``None``).
        **overrides: Fields of :class:`~streamconv.pipeline.options.ConvertOptions` to set
            (``dtype="keep"``, ``parts=["vision", "text"]``, ``force=True``...).

    Returns:
        The :class:`~streamconv.pipeline.result.ConversionResult`.

    A dry run (``dry_run=True``) writes nothing and stops at the errors the real run would meet
    before writing (an existing output without ``force``; with ``strict``, an asset problem); the
    warnings the real run would give are in its result, but for those only the data can tell (a
    tensor beyond float16's range).

    Raises:
        InvalidOptionError: a bad option, before anything is read.
        MissingDependencyError: ``validate=True`` without torch or transformers, before anything is read.
        StreamconvError: a subclass for every bad input; nothing is left under ``output``.

    Example:
        >>> result = streamconv.convert("all-MiniLM-L6-v2", "minilm-parquet", dtype="float16")
        >>> result.ratio
        2.3562
    """
    options = ConvertOptions.build(options, overrides)
    if options.validate:
        _require_validation_packages()  # before anything is written: a rerun would need --force
    started = time.perf_counter()
    output = output_path(output)
    checkpoint = open_checkpoint(source, revision=options.revision, download=options.download)
    try:
        return _convert(source, checkpoint, output, options, started)
    finally:
        if checkpoint.hub is not None:
            checkpoint.hub.close()  # the temporary .bin shards of a hub source, if any


def _convert(source: str | os.PathLike[str], checkpoint: Checkpoint, output: Path, options: ConvertOptions,
             started: float) -> ConversionResult:
    """The conversion of an opened checkpoint; ``source`` as the caller gave it (a path or a repo id)."""
    model = ModelInfo.from_checkpoint(checkpoint)
    plan_cls, detected = choose_plan(model, options.model_type, options.parts)
    plan = plan_cls()
    resolution = plan.resolve(checkpoint, options.parts, options.include, options.exclude)
    # A dry run stops where the real run would. A lone weights file is the source, not its folder:
    # an output beside it is not inside the source.
    given = Path(source).expanduser()
    check_output(output, {"the source checkpoint": given if given.is_file() else checkpoint.root}, options.force)
    result = _new_result(checkpoint, output, plan, detected, resolution, options)
    if options.model_type == "auto" and not detected:
        result.warnings.insert(
            0,
            f"no model plan recognised this checkpoint ({model.describe()}); converted with the "
            f"{FALLBACK} plan, every tensor under its own name; pass --type to choose a plan",
        )
    if options.dry_run:
        _dry_run(result, checkpoint, plan, resolution.refs, options)
        result.seconds = round(time.perf_counter() - started, 3)
        result.hub = checkpoint.hub.record() if checkpoint.hub is not None else None
        return result
    _write_output(result, checkpoint, plan, resolution, options, started)
    if options.validate:
        _validate(result, options)
    return result


def _write_output(result: ConversionResult, checkpoint: Checkpoint, plan: Plan, resolution: Resolution,
                  options: ConvertOptions, started: float) -> None:
    """Write the output folder under a staging name, then put it in place."""
    output = result.output_dir
    # Folders that killed runs on this output left behind; a live run's are never touched.
    result.warnings.extend(f"removed {p.name}, left by an interrupted run" for p in clean_leftovers(output))
    expected = sum(r.numel * _planned_dtype(r, options.dtype, options.keep_float).itemsize
                   for r in resolution.refs)  # for a full disk
    with staged_output(output, options.force, expected_bytes=expected) as staging:
        _write_assets(result, checkpoint, plan, staging, options.strict)
        _write_weights(result, checkpoint, resolution.refs, staging, options)
        result.seconds = round(time.perf_counter() - started, 3)
        result.hub = checkpoint.hub.record() if checkpoint.hub is not None else None
        # The checkpoint's weight files, and any other file the plan read (sentence-transformers Dense).
        source_files = list(dict.fromkeys([*checkpoint.weight_files, *(r.path for r in resolution.refs)]))
        write_json(result.metadata(checkpoint, source_files), staging / METADATA_FILENAME)


def _require_validation_packages() -> None:
    """Refuse ``validate=True`` without torch or transformers, as validation would after the writing."""
    for package in ("torch", "transformers"):
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):  # a parent that fails, or a module without a spec
            found = False
        if not found:
            raise MissingDependencyError(package, "to validate against the original model", VALIDATE_INSTALL)


def _dry_run(
    result: ConversionResult, checkpoint: Checkpoint, plan: Plan, refs: tuple[TensorRef, ...], options: ConvertOptions
) -> None:
    """What the real run would write and warn about, writing nothing (an error it would meet is raised)."""
    _estimate(result, refs, options)
    result.warnings.extend(int8.keep_float_warnings(refs, options.keep_float))
    result.assets, warnings = planned_assets(
        checkpoint.root, plan.asset_files(checkpoint), strict=options.strict, expected=plan.expected_assets
    )
    result.warnings.extend(warnings)
    result.warnings.extend(
        f"would remove {p.name}, left by an interrupted run" for p in find_leftovers(result.output_dir)
    )


def _validate(result: ConversionResult, options: ConvertOptions) -> None:
    """Validate the written output and record the report in its metadata.json (imports torch)."""
    from streamconv.tools.validate import record_validation, validate

    report = validate(result.output_dir, progress=options.progress)
    record_validation(result.output_dir, report)
    result.validation = report.to_dict()


def _new_result(
    checkpoint: Checkpoint, output: Path, plan: Plan, detected: bool, resolution: Resolution, options: ConvertOptions
) -> ConversionResult:
    return ConversionResult(
        source=checkpoint.source,
        output_dir=output,
        model_type=plan.name,
        detected=detected,
        parts=list(resolution.parts),
        source_layout=resolution.layout.name,
        dtype=options.dtype,
        compression=options.compression,
        level=options.level,
        chunk_size=options.chunk_size,
        tensor_count=len(resolution.refs),
        parameter_count=sum(r.numel for r in resolution.refs),
        source_bytes=sum(r.nbytes for r in resolution.refs),
        warnings=list(resolution.warnings),
        plan_metadata=plan.metadata(checkpoint),
        dry_run=options.dry_run,
        include=list(options.include),
        exclude=list(options.exclude),
    )


def _write_assets(result: ConversionResult, checkpoint: Checkpoint, plan: Plan, staging: Path, strict: bool) -> None:
    result.assets, warnings = write_assets(
        checkpoint.root, staging, plan.asset_files(checkpoint), strict=strict, expected=plan.expected_assets
    )
    result.warnings.extend(warnings)


def _write_weights(result: ConversionResult, checkpoint: Checkpoint, refs: tuple[TensorRef, ...], folder: Path,
                   options: ConvertOptions) -> None:
    """Write the weights file(s); only this step starts again when a late chunk overflows the dtype."""
    bar = progress.bar(result.source_bytes, "bytes", "converting", enabled=options.progress,
                       tqdm_class=options.tqdm_class)
    hub = checkpoint.hub
    if hub is not None and hub.files:
        def show_fetched() -> None:
            bar.note(f"fetched {format_bytes(hub.stats.bytes_fetched)} at {format_bytes(hub.stats.rate())}/s")
    else:
        def show_fetched() -> None:
            pass
    warnings = list(result.warnings)
    prescan, fallback = False, dict[str, str]()
    try:
        while True:
            try:
                with _hub_read_ahead(refs, options.chunk_size):
                    summary = _write_once(result, refs, folder, options, bar, show_fetched, prescan, fallback)
                break
            except CastOverflowError:
                # A tensor of several chunks does not fit the target dtype and some of its chunks are
                # written already: write the file again, scanning such tensors before casting (rare).
                prescan = True
            except QuantizationBudgetError as exc:
                # A chunk's int8 error is beyond the budget: write again with its tensor in float16 (rare).
                fallback[exc.tensor] = f"int8 error {exc.error:.3g} beyond the budget of {int8.ERROR_BUDGET}"
            result.warnings = list(warnings)
            bar.reset()
    finally:
        bar.close()
    if options.dtype == "int8":
        result.quantization, notes = int8.record(refs, summary.stored_dtypes, options.keep_float, fallback)
        result.warnings.extend(notes)
    result.chunk_count = summary.chunk_count
    result.output_bytes = sum(f["bytes"] for f in result.files)
    result.ratio = round(result.source_bytes / result.output_bytes, 4) if result.output_bytes else 0.0
    stored: dict[str, int] = {}
    for name in summary.stored_dtypes.values():
        stored[name] = stored.get(name, 0) + 1
    result.stored_dtypes = stored


def _write_once(
    result: ConversionResult, refs: tuple[TensorRef, ...], folder: Path, options: ConvertOptions,
    bar: progress.Progress, show_fetched: Any, prescan: bool, fallback: dict[str, str],
) -> WriteSummary:
    def on_written(piece: TensorChunk | int8.QuantizedChunk, note: str | None) -> None:
        if note:
            result.warnings.append(note)
        show_fetched()
        bar.update(piece.ref.dtype.itemsize * piece.element_count)

    writer_options: dict[str, Any] = dict(
        compression=options.compression,
        level=options.level,
        workers=options.workers,
        row_group_bytes=row_group_bytes_for(result.source_bytes),
        quantized=options.dtype == "int8",
    )
    chunks: Any = cast(chunk(refs, options.chunk_size), options.dtype, prescan=prescan)
    if options.dtype == "int8":
        chunks = int8.quantize(chunks, keep_float=options.keep_float, fallback=fallback)
    if options.max_file_size is not None:
        split = SplitWeightsWriter(folder, options.max_file_size, **writer_options)
        summary = split.write(chunks, on_written)
        result.files = [{k: f[k] for k in ("path", "bytes", "sha256")} for f in split.files]
        return summary
    with WeightsWriter(folder / WEIGHTS_FILENAME, **writer_options) as writer:
        summary = writer.write(chunks, on_written)
    # The writer hashed the file as it wrote it: no second pass over the output.
    result.files = [{"path": WEIGHTS_FILENAME, "bytes": writer.path.stat().st_size, "sha256": writer.sha256}]
    return summary


@contextlib.contextmanager
def _hub_read_ahead(refs: tuple[TensorRef, ...], chunk_size: int) -> Iterator[None]:
    """For tensors read by ranges from the hub: fetch their chunks' bytes in the background, in the
    order the writer reads them (:func:`streamconv.sources.read_ahead.read_ahead`); else nothing."""
    if not any(isinstance(r.remote, HubFile) for r in refs):
        yield
        return
    ranges = (
        (piece.ref.remote, piece.ref.offset + piece.start * piece.ref.dtype.itemsize,
         piece.ref.offset + piece.stop * piece.ref.dtype.itemsize)
        for piece in chunk(refs, chunk_size)
        if isinstance(piece.ref.remote, HubFile)
    )
    with read_ahead(ranges):
        yield


def _estimate(result: ConversionResult, refs: tuple[TensorRef, ...], options: ConvertOptions) -> None:
    """Fill a dry run's result: the planned tensors and an output size from a compressed sample."""
    raw_total = 0
    for ref in refs:
        stored = _planned_dtype(ref, options.dtype, options.keep_float)
        nbytes = ref.numel * stored.itemsize + (ref.numel // int8.BLOCK * 2 if stored.name == "int8" and
                                                 ref.stored_type.is_float else 0)
        raw_total += nbytes
        result.tensors.append(
            {
                "name": ref.name,
                "source_name": ref.source_name,
                "shape": list(ref.shape),
                "source_dtype": ref.dtype_name,
                "dtype": stored.name,
                "bytes": nbytes,
            }
        )
    result.chunk_count = sum(1 for _ in chunk(refs, options.chunk_size))  # descriptions: nothing is read
    sample_raw = sample_encoded = 0
    per_tensor = max(1, DRY_RUN_SAMPLE_BYTES // max(1, min(len(refs), 16)))
    for ref in sorted(refs, key=lambda r: r.nbytes, reverse=True)[:16]:
        count = min(ref.numel, max(1, per_tensor // ref.dtype.itemsize))
        if count == 0:
            continue
        piece: Any = next(cast([TensorChunk(ref, 0, 1, 0, count)], options.dtype))
        if options.dtype == "int8":  # whole rows, quantized as the writer would (codes and scales)
            piece = next(int8.quantize([piece], keep_float=options.keep_float))
        loaded = piece.load()
        payload, scales = encode_loaded(loaded, options.compression, options.level)
        sample_raw += sum(part.nbytes for part in loaded[:2]) if isinstance(loaded, tuple) else loaded.nbytes
        sample_encoded += payload.size + (scales.size if scales is not None else 0)
    ratio = sample_encoded / sample_raw if sample_raw else 1.0
    result.output_bytes = int(raw_total * ratio)
    result.ratio = round(result.source_bytes / result.output_bytes, 4) if result.output_bytes else 0.0


def _planned_dtype(ref: TensorRef, dtype: str, keep_float: tuple[str, ...] = ()) -> Any:
    source = by_name(ref.dtype_name)
    assert source is not None
    if dtype == "int8" and int8.quantizable(ref.shape, source) and not int8.kept_by(ref.source_name, keep_float):
        return by_name("int8")
    return planned_dtype(source, dtype)


class ModelConverter:
    """The old system's shape: options set once, then ``convert(model, output_dir, model_type)``.

    Args:
        options: A :class:`~streamconv.pipeline.options.ConvertOptions` to start from.
        **overrides: Its fields, applied to every call (``dtype="float16"``, ``force=True``...).

    Raises:
        InvalidOptionError: an unknown or bad option, when the converter is made.

    Example:
        >>> converter = ModelConverter(dtype="float16")
        >>> converter.convert("openai/clip-vit-base-patch32", "models/clip", model_type="auto")
    """

    def __init__(self, options: ConvertOptions | None = None, **overrides: Any) -> None:
        self.options = ConvertOptions.build(options, overrides)

    def convert(
        self,
        model_name_or_path: str | os.PathLike[str],
        output_dir: str | os.PathLike[str],
        model_type: str | None = None,
        **overrides: Any,
    ) -> ConversionResult:
        """Convert one model with the converter's options, overridden by ``model_type`` and ``overrides``."""
        if model_type is not None:
            overrides["model_type"] = model_type
        return convert(model_name_or_path, output_dir, self.options, **overrides)
