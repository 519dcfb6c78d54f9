"""The weights check (no torch): names, bits, and which tensors the conversion should have written.

- **names**: each stored ``name`` equals ``plan.stored_name(layout, source_name)``.
- **weights**: each stored tensor equals the documented cast of its source tensor, bit for bit
  (int8 codes and their scales: the documented quantization, re-derived here from docs/format.md,
  never by calling the writer's code); each tensor the conversion's parts and patterns keep is in
  the output, and no other.

Memory: one stored tensor and its source tensor at a time, compared :data:`COMPARE_ELEMENTS` at a
time (a cast and the bytes compared exist for one slice only), so at most about 2x the largest
tensor. :func:`source_mismatch` first tells whether the source is the one converted at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from streamconv.dtypes import by_numpy
from streamconv.errors import StreamconvError
from streamconv.format.reader import describe, iter_tensors
from streamconv.plans import Plan
from streamconv.sources.checkpoint import Checkpoint
from streamconv.sources.ref import TensorRef
from streamconv.tools.validate.report import Check

__all__ = ["check_weights", "documented_cast", "expected_refs", "same_bits", "source_mismatch"]

#: Names shown in a message before "and N more".
SHOWN = 5
#: Elements compared at a time (16 MiB of float32 while casting).
COMPARE_ELEMENTS = 4 * 1024 * 1024
#: The share of stored tensors absent from the source, or of another shape there, that says the
#: source is another model rather than a damaged output.
FOREIGN_SHARE = 0.25


def source_mismatch(output: Path, plan: Plan, checkpoint: Checkpoint, metadata: dict[str, Any]) -> str | None:
    """One line saying why ``checkpoint`` is not the source of ``output``, or ``None`` when it may be.

    The model types recorded at conversion and in the checkpoint's config.json must agree, and at
    most :data:`FOREIGN_SHARE` of the stored tensors may be absent from the source or of another
    shape there (fewer is damage, which the weights check names).
    """
    recorded = (metadata.get("source") or {}).get("config_model_type")
    actual = (checkpoint.config or {}).get("model_type")
    hint = "pass the checkpoint it was converted from with --source"
    if recorded and actual and recorded != actual:
        return (f"{checkpoint.root} is not the source of this output: its config.json has model_type {actual!r}, "
                f"the output was converted from a {recorded!r} checkpoint; {hint}")
    stored = describe(output)
    by_source = {ref.source_name: ref for ref in plan.tensors(checkpoint)}
    absent = [i.source_name for i in stored if i.source_name not in by_source]
    reshaped = [
        f"{i.source_name} (stored {list(i.shape)}, source {list(by_source[i.source_name].shape)})"
        for i in stored if i.source_name in by_source and tuple(i.shape) != tuple(by_source[i.source_name].shape)
    ]
    if stored and len(absent) + len(reshaped) > FOREIGN_SHARE * len(stored):
        found = _listing(f"{len(absent)} of {len(stored)} stored tensors are not in it", absent) if absent else ""
        shapes = _listing(f"{len(reshaped)} have other shapes there", reshaped) if reshaped else ""
        return f"{checkpoint.root} is not the source of this output: {'; '.join(p for p in (found, shapes) if p)}; {hint}"
    return None


def expected_refs(plan: Plan, checkpoint: Checkpoint, metadata: dict[str, Any]) -> tuple[dict[str, TensorRef] | None, str]:
    """The tensors the conversion should have written, by source name, and why others were left out.

    Rebuilt with ``plan.resolve`` from the parts and the ``include``/``exclude`` patterns that
    metadata.json records. Returns ``(None, reason)`` when that cannot be done (older metadata
    without the patterns, or a plan error).
    """
    parts = metadata.get("parts") or None
    include, exclude = metadata.get("include"), metadata.get("exclude")
    if include is None or exclude is None:
        return None, "metadata.json does not record --include/--exclude (converted before they were recorded)"
    try:
        resolution = plan.resolve(checkpoint, parts, include, exclude)
    except StreamconvError as exc:
        return None, f"the plan cannot resolve the source again ({exc})"
    return {r.source_name: r for r in resolution.refs}, ""


def left_out_reason(source_name: str, plan: Plan, checkpoint: Checkpoint, metadata: dict[str, Any]) -> str:
    """Why the conversion did not keep ``source_name``: its parts, or --include/--exclude."""
    from streamconv.stages.names import matches_any

    include, exclude = metadata.get("include") or [], metadata.get("exclude") or []
    hits = [p for p in exclude if matches_any(source_name, [p])]
    if hits:
        return f"left out by --exclude {hits[0]}"
    if include and not matches_any(source_name, include):
        return f"left out by --include {','.join(include)}"
    parts = ",".join(metadata.get("parts") or plan.default_parts)
    return f"not in the converted parts (--parts {parts})"


def check_weights(output: Path, plan: Plan, checkpoint: Checkpoint, metadata: dict[str, Any]) -> list[Check]:
    """The ``names`` and ``weights`` checks, reading every stored tensor once and its source."""
    layout = plan.layout(checkpoint)
    by_source = {ref.source_name: ref for ref in plan.tensors(checkpoint)}
    expected, why_unknown = expected_refs(plan, checkpoint, metadata)
    misnamed, mismatched, foreign, seen, count, quantized = [], [], [], set(), 0, 0
    for record in iter_tensors(output, dequantize=None):  # int8 tensors: their codes and scales
        count += 1
        quantized += record.block > 0
        seen.add(record.source_name)
        want_name = plan.stored_name(layout, record.source_name)
        if record.name != want_name:
            misnamed.append(f"{record.name} (source {record.source_name} is stored as {want_name})")
        ref = by_source.get(record.source_name)
        if ref is None:
            foreign.append(record.name)
            del record
            continue
        original = ref.read().reshape(ref.shape)
        if record.block:
            if original.shape != record.array.shape or not same_quantization(original, record):
                mismatched.append(f"{record.name} (int8 codes or scales differ from the documented quantization "
                                  "of its source)")
        elif original.shape != record.array.shape or not same_bits(original, record.array):
            mismatched.append(f"{record.name}{_how_different(original, record.array)}")
        del record, original  # neither may stay alive while the reader decodes the next tensor
    names = Check(
        "names",
        not misnamed,
        _listing(f"{len(misnamed)} stored names are not the plan's name for their source", misnamed)
        if misnamed else f"{count} stored names are the plan's names for their source tensors",
        {"tensors": float(count), "misnamed": float(len(misnamed))},
    )
    problems = []
    if mismatched:
        problems.append(_listing(f"{len(mismatched)} differ from the documented cast or quantization of their source",
                                 mismatched))
    if foreign:
        problems.append(_listing(f"{len(foreign)} have a source name the source does not have", foreign))
    notes = []
    if expected is not None:
        missing = [expected[n].name for n in expected if n not in seen]
        extra = [n for n in seen if n in by_source and n not in expected]
        if missing:
            problems.append(_listing(f"{len(missing)} tensors the conversion keeps are missing from the output", missing))
        if extra:
            problems.append(_listing(f"{len(extra)} tensors outside the conversion's parts and patterns", extra))
    else:
        notes.append(f"which tensors belong was not checked: {why_unknown}")
    detail = "; ".join(problems) or "; ".join(
        [f"{count} tensors equal the documented cast of the source, bit for bit"
         + (f" ({quantized} of them int8 codes and scales, re-quantized from the source)" if quantized else ""),
         *notes]
    )
    figures = {"tensors": float(count), "mismatched": float(len(mismatched)), "foreign": float(len(foreign))}
    return [names, Check("weights", not problems, detail, figures)]


def documented_cast(original: np.ndarray, stored: np.dtype) -> np.ndarray:
    """``original`` cast as docs/format.md documents (written from the docs, not by calling stages.cast)."""
    if original.dtype == stored or not by_numpy(original.dtype).is_float:
        return original
    if by_numpy(original.dtype).name == "bfloat16":
        original = original.astype(np.float32)
    return original.astype(stored)


def documented_quantization(rows: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a source tensor quantized as docs/format.md documents ("int8 quantization"):
    ``(codes int8, scales float16)``, the scales one per ``block`` elements of a row.

    Written from the docs: the values in float32; per block ``scale = float16(max|x| / 127)``;
    ``code = clip(rint(x / scale), -127, 127)``, or 0 where the scale is 0.
    """
    values = rows.astype(np.float32)
    count, cols = values.shape
    blocks = -(-cols // block)
    padded = np.zeros((count, blocks * block), np.float32)
    padded[:, :cols] = values
    grid = padded.reshape(count, blocks, block)
    scales = (np.abs(grid).max(axis=2) / np.float32(127)).astype(np.float16)
    wide = scales.astype(np.float32)[:, :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.where(wide == 0, np.float32(0), np.clip(np.rint(grid / wide), -127, 127))
    return codes.astype(np.int8).reshape(count, -1)[:, :cols], scales


def same_quantization(original: np.ndarray, record: Any) -> bool:
    """True when a quantized record's codes and scales are :func:`documented_quantization` of
    ``original``, bit for bit, compared a slice of rows at a time."""
    step = max(1, COMPARE_ELEMENTS // max(1, original.shape[1]))
    for start in range(0, original.shape[0], step):
        codes, scales = documented_quantization(original[start:start + step], record.block)
        if codes.tobytes() != record.array[start:start + step].tobytes() \
                or scales.tobytes() != record.scales[start:start + step].tobytes():
            return False
    return True


def same_bits(original: np.ndarray, stored: np.ndarray) -> bool:
    """True when ``stored`` is :func:`documented_cast` of ``original``, bit for bit, compared a
    slice of :data:`COMPARE_ELEMENTS` at a time (no whole-tensor temporary)."""
    source, got = original.reshape(-1), stored.reshape(-1)
    for start in range(0, source.size, COMPARE_ELEMENTS):
        want = documented_cast(source[start:start + COMPARE_ELEMENTS], stored.dtype)
        if want.tobytes() != got[start:start + COMPARE_ELEMENTS].tobytes():
            return False
    return True


def _how_different(original: np.ndarray, got: np.ndarray) -> str:
    if original.shape != got.shape:
        return f" (shape {list(got.shape)}, source {list(original.shape)})"
    if not by_numpy(original.dtype).is_float:
        return ""
    source, stored = original.reshape(-1), got.reshape(-1)
    largest = worst = 0.0
    for start in range(0, source.size, COMPARE_ELEMENTS):
        a = documented_cast(source[start:start + COMPARE_ELEMENTS], got.dtype).astype(np.float64)
        b = stored[start:start + COMPARE_ELEMENTS].astype(np.float64)
        largest, worst = max(largest, float(np.abs(a).max())), max(worst, float(np.abs(a - b).max()))
    return f" (max error {worst / (largest or 1.0):.2e} of its largest value)"


def _listing(head: str, items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return f"{head}: {shown}{more}"
