"""Check a converted output against its source: the only module that imports torch and transformers.

Two checks:

1. **Weights**: every stored tensor equals the documented cast of its source tensor, bit for bit
   (``keep``: the source itself; ``float16``: numpy's cast; a tensor kept in float32 for range:
   the source in float32).
2. **Outputs**: the original model (``from_pretrained`` on the source) and the same model with the
   converted weights loaded in (by their ``source_name``) run on the same inputs, and their outputs
   must agree within the tolerance of the stored dtype. Only the parts that were converted are
   probed (a CLIP vision tower, a Whisper encoder...).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamconv.dtypes import by_numpy
from streamconv.errors import MissingDependencyError, PlanError
from streamconv.plans import ProbeContext, get_plan
from streamconv.reader import iter_tensors, read_metadata
from streamconv.source import open_checkpoint

__all__ = ["Check", "ValidationResult", "validate", "TOLERANCES"]

#: Per stored float dtype: (minimum cosine similarity, maximum error relative to the output's range).
TOLERANCES = {
    "float32": (0.999999, 1e-4),
    "float16": (0.9995, 2e-2),
    "bfloat16": (0.995, 1e-1),
}


@dataclass
class Check:
    """One comparison: what was compared, the measured figures, and the verdict."""

    name: str
    passed: bool
    detail: str
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class ValidationResult:
    """All checks of one validation; ``passed`` is true when every check passed."""

    output_dir: Path
    source: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.output_dir),
            "source": self.source,
            "passed": self.passed,
            "checks": [c.__dict__ for c in self.checks],
        }


def validate(output: str | os.PathLike[str], source: str | os.PathLike[str] | None = None) -> ValidationResult:
    """Compare a converted output with its source checkpoint.

    Args:
        output: A folder written by ``streamconv convert``.
        source: The checkpoint it came from; by default the ``source.id`` in its metadata.

    Returns:
        The :class:`ValidationResult` (check ``.passed``).

    Raises:
        MissingDependencyError: torch or transformers is not installed.
    """
    output = Path(output)
    metadata = read_metadata(output)
    source_id = os.fspath(source) if source is not None else metadata["source"]["id"]
    result = ValidationResult(output_dir=output, source=source_id)
    result.checks.append(_check_weights(output, source_id, metadata))
    result.checks.extend(_check_outputs(output, source_id, metadata))
    return result


def _check_weights(output: Path, source_id: str, metadata: dict[str, Any]) -> Check:
    checkpoint = open_checkpoint(source_id)
    plan = get_plan(metadata.get("model_type", "generic"))()
    by_source = {ref.source_name: ref for ref in plan.tensors(checkpoint)}
    mismatched, missing, count = [], [], 0
    for record in iter_tensors(output):
        ref = by_source.get(record.source_name)
        if ref is None:
            missing.append(record.name)
            continue
        original = ref.read().reshape(ref.shape)
        expected = _documented_cast(original, record.array.dtype)
        if expected.shape != record.array.shape or expected.tobytes() != np.ascontiguousarray(record.array).tobytes():
            mismatched.append(record.name)
        count += 1
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} differ from the documented cast: {', '.join(mismatched[:5])}")
    if missing:
        problems.append(f"{len(missing)} not found in the source: {', '.join(missing[:5])}")
    detail = "; ".join(problems) or f"{count} tensors equal the documented cast of the source, bit for bit"
    return Check("weights", not problems, detail, {"tensors": count})


def _documented_cast(original: np.ndarray, stored: np.dtype) -> np.ndarray:
    # Written from docs/format.md's casting rules, not by calling stages.cast: the check must not
    # trust the code it checks.
    if original.dtype == stored or not by_numpy(original.dtype).is_float:
        return original
    if by_numpy(original.dtype).name == "bfloat16":
        original = original.astype(np.float32)
    return original.astype(stored)


def _check_outputs(output: Path, source_id: str, metadata: dict[str, Any]) -> list[Check]:
    torch, transformers = _import_torch()
    plan = get_plan(metadata.get("model_type", "generic"))()
    reference = _load_reference(transformers, source_id, plan.model_class(metadata))
    converted = copy.deepcopy(reference)
    loaded, unused = _load_converted(torch, converted, output)
    if not loaded:
        return [
            Check(
                "outputs",
                False,
                "no converted tensor has a name of the transformers model, so its outputs cannot be "
                "compared; check that the output comes from this source (--source)",
            )
        ]
    stored = set(metadata.get("stored_dtypes", {})) & set(TOLERANCES)
    dtype = max(stored, key=lambda d: TOLERANCES[d][1], default="float32")
    min_cosine, max_relative = TOLERANCES[dtype]
    checks = []
    context = ProbeContext(torch, reference, output, metadata)
    for probe in plan.probes(context):
        if probe.needs and not any(name.startswith(probe.needs) for name in loaded):
            continue
        with torch.no_grad():
            want, got = probe.run(reference), probe.run(converted)
        figures = _compare(want, got)
        passed = figures["cosine"] >= min_cosine and figures["relative_error"] <= max_relative
        checks.append(
            Check(
                f"outputs:{probe.label}",
                passed,
                f"cosine {figures['cosine']:.6f} (min {min_cosine}), max error {figures['relative_error']:.2e} "
                f"of the output range (max {max_relative:.0e}), stored {dtype}, "
                f"{len(loaded)} converted tensors in the model",
                figures,
            )
        )
    if not checks:
        checks.append(Check("outputs", False, "no output probe fits this model; only the weights were checked"))
    if unused:
        checks.append(Check("weights-outside-model", True, f"{len(unused)} tensors are not part of the transformers model (checked as weights only): {', '.join(unused[:3])}"))
    return checks


def _import_torch() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(
            exc.name or "torch", "to validate against the original model", "pip install torch 'streamconv[validate]'"
        ) from exc
    transformers.logging.disable_progress_bar()  # our caller reports; no bars from loading weights
    return torch, transformers


def _load_reference(transformers: Any, source_id: str, class_name: str) -> Any:
    cls = getattr(transformers, class_name, transformers.AutoModel)
    try:
        model = cls.from_pretrained(source_id, torch_dtype="float32")
    except (OSError, ValueError) as exc:
        raise PlanError(f"{source_id}: transformers cannot load this checkpoint ({exc}); validation needs a transformers model") from exc
    return model.eval()


def _load_converted(torch: Any, model: Any, output: Path) -> tuple[list[str], list[str]]:
    """Load the converted tensors into ``model`` by source name; returns (loaded, not in model)."""
    state = model.state_dict()
    update, unused = {}, []
    for record in iter_tensors(output):
        if record.source_name not in state:
            unused.append(record.source_name)
            continue
        target = state[record.source_name]
        array = record.array
        if array.dtype.name == "bfloat16":
            array = array.astype(np.float32)
        update[record.source_name] = torch.from_numpy(np.array(array)).to(target.dtype)
    model.load_state_dict(update, strict=False)
    return sorted(update), unused


def _compare(want: Any, got: Any) -> dict[str, float]:
    a = want.detach().double().flatten()
    b = got.detach().double().flatten()
    cosine = float((a @ b) / ((a.norm() * b.norm()).clamp_min(1e-30)))
    scale = float(a.abs().max().clamp_min(1e-30))
    return {"cosine": cosine, "max_abs_error": float((a - b).abs().max()), "relative_error": float((a - b).abs().max()) / scale}
