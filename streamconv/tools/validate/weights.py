"""The weights check (no torch): names, bits, and which tensors the conversion should have written.

- **names**: each stored ``name`` equals ``plan.stored_name(layout, source_name)``.
- **weights**: each stored tensor equals the documented cast of its source tensor, bit for bit;
  each tensor the conversion's parts and patterns keep is in the output, and no other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from streamconv.dtypes import by_numpy
from streamconv.errors import StreamconvError
from streamconv.format.reader import iter_tensors
from streamconv.plans import Plan
from streamconv.sources.checkpoint import Checkpoint
from streamconv.sources.ref import TensorRef
from streamconv.tools.validate.report import Check

__all__ = ["check_weights", "documented_cast", "expected_refs"]

#: Names shown in a message before "and N more".
SHOWN = 5


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
    misnamed, mismatched, foreign, seen, count = [], [], [], set(), 0
    for record in iter_tensors(output):
        count += 1
        seen.add(record.source_name)
        want_name = plan.stored_name(layout, record.source_name)
        if record.name != want_name:
            misnamed.append(f"{record.name} (source {record.source_name} is stored as {want_name})")
        ref = by_source.get(record.source_name)
        if ref is None:
            foreign.append(record.name)
            continue
        original = ref.read().reshape(ref.shape)
        want = documented_cast(original, record.array.dtype)
        if want.shape != record.array.shape or want.tobytes() != np.ascontiguousarray(record.array).tobytes():
            mismatched.append(f"{record.name}{_how_different(want, record.array)}")
    names = Check(
        "names",
        not misnamed,
        _listing(f"{len(misnamed)} stored names are not the plan's name for their source", misnamed)
        if misnamed else f"{count} stored names are the plan's names for their source tensors",
        {"tensors": float(count), "misnamed": float(len(misnamed))},
    )
    problems = []
    if mismatched:
        problems.append(_listing(f"{len(mismatched)} differ from the documented cast of their source", mismatched))
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
        [f"{count} tensors equal the documented cast of the source, bit for bit", *notes]
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


def _how_different(want: np.ndarray, got: np.ndarray) -> str:
    if want.shape != got.shape:
        return f" (shape {list(got.shape)}, source {list(want.shape)})"
    if not by_numpy(want.dtype).is_float:
        return ""
    a, b = want.astype(np.float64), got.astype(np.float64)
    denom = float(np.abs(a).max()) or 1.0
    return f" (max error {float(np.abs(a - b).max()) / denom:.2e} of its largest value)"


def _listing(head: str, items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return f"{head}: {shown}{more}"
