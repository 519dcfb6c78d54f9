"""Check a converted output against its source: the only package that imports torch and transformers.

Checks, in order (each a :class:`Check` of the :class:`ValidationReport`):

1. ``names``: each stored name is the plan's name for its source tensor.
2. ``weights``: each stored tensor equals the documented cast of its source tensor, bit for bit,
   and the output holds exactly the tensors the conversion's parts and patterns keep.
3. ``model-tensors``: every tensor of the transformers model that the source saves comes from the
   output (tied weights and non-persistent buffers are not saved, so not expected).
4. ``outputs:<probe>``: each of the plan's probes (a seeded batch of 8 varied inputs) through the
   original model and through the same model holding the output's weights; metrics and limits in
   :mod:`streamconv.validate.report`.

Output tensors the model does not use are checked as weights only (and given to the probes).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from streamconv import _files
from streamconv import progress as progress_bars
from streamconv.errors import InvalidOptionError, SourceNotFoundError
from streamconv.format.reader import describe, read_metadata
from streamconv.format.schema import METADATA_FILENAME
from streamconv.plans import Plan, get_plan
from streamconv.sources.checkpoint import Checkpoint, open_checkpoint
from streamconv.tools.validate.report import LIBRARY_LIMITS, LIMITS, Check, ValidationReport, compare, limits_for
from streamconv.tools.validate.weights import check_weights, left_out_reason

__all__ = ["LIMITS", "Check", "ValidationReport", "locate_source", "record_validation", "validate"]


def validate(
    output: str | os.PathLike[str],
    source: str | os.PathLike[str] | None = None,
    *,
    min_cosine: float | None = None,
    max_nmse: float | None = None,
    seed: int = 0,
    progress: bool = False,
) -> ValidationReport:
    """Compare a converted output with its source checkpoint.

    Args:
        output: A folder written by ``streamconv convert``.
        source: The checkpoint it came from; by default the one metadata.json records (its path,
            or for hub sources its repo id at the recorded commit).
        min_cosine: Overrides the stored dtype's minimum cosine per item.
        max_nmse: Overrides the stored dtype's maximum NMSE.
        seed: Seed of the probes' inputs.
        progress: Show a bar over the steps on stderr (see :mod:`streamconv.progress`).

    Returns:
        The :class:`ValidationReport` (check ``.passed``).

    Raises:
        InvalidOptionError: ``min_cosine`` above 1 or ``max_nmse`` below 0 (no output could pass).
        MissingDependencyError: torch or transformers is not installed.
        SourceNotFoundError: the source cannot be found.
    """
    if min_cosine is not None and not min_cosine <= 1:
        raise InvalidOptionError("{min_cosine=} is above 1, which no cosine reaches; give at most 1",
                                 "min_cosine", min_cosine=min_cosine)
    if max_nmse is not None and not max_nmse >= 0:
        raise InvalidOptionError("{max_nmse=} is below 0, which no error reaches; give at least 0",
                                 "max_nmse", max_nmse=max_nmse)
    started = time.perf_counter()
    output = Path(output)
    metadata = read_metadata(output)
    checkpoint = locate_source(metadata, source)
    plan = get_plan(metadata.get("model_type", "generic"))()
    report = ValidationReport(output_dir=output, source=str(checkpoint.root))
    report.checks.extend(check_weights(output, plan, checkpoint, metadata))
    default_cosine, default_nmse = limits_for(str(metadata.get("dtype", "keep")))
    limits = (default_cosine if min_cosine is None else min_cosine, default_nmse if max_nmse is None else max_nmse)
    report.checks.extend(_check_outputs(output, plan, checkpoint, metadata, report, limits, seed, progress))
    report.seconds = time.perf_counter() - started
    return report


def locate_source(metadata: dict[str, Any], source: str | os.PathLike[str] | None) -> Checkpoint:
    """The source checkpoint, from any working directory.

    ``source`` if given; else the absolute ``path`` metadata.json records when it still exists (for
    hub sources, the cached snapshot of the recorded commit); else, for hub sources, ``repo_id`` at
    the recorded ``revision``; else ``id`` when it exists from here.

    Raises:
        SourceNotFoundError: none of them can be opened.
    """
    if source is not None:
        return open_checkpoint(source)
    recorded = metadata.get("source", {})
    if isinstance(recorded, str):  # format 1
        recorded = {"id": recorded}
    ident, path = recorded.get("id"), recorded.get("path")
    repo_id, revision = recorded.get("repo_id"), recorded.get("revision")
    if path and Path(path).exists():
        return open_checkpoint(path)
    if repo_id:
        return open_checkpoint(repo_id, revision=revision)
    if ident and Path(ident).expanduser().exists():
        return open_checkpoint(ident)
    raise SourceNotFoundError(str(path or ident), "pass the original checkpoint with --source")


def _check_outputs(
    output: Path,
    plan: Plan,
    checkpoint: Checkpoint,
    metadata: dict[str, Any],
    report: ValidationReport,
    limits: tuple[float, float],
    seed: int,
    progress: bool,
) -> list[Check]:
    """The ``model-tensors`` and ``outputs:*`` checks on one model instance (see the module docstring)."""
    from streamconv.tools.validate import model as mod

    steps = _Steps(progress, 5 + len(describe(output)))
    steps.say("importing torch and transformers")
    torch, transformers = mod.import_torch()
    steps.say("loading the original model")
    reference = mod.load_reference(torch, transformers, checkpoint, plan.model_class(metadata), report.messages)
    loaded = mod.LoadedModel(torch, reference, [r.source_name for r in checkpoint.tensors])
    context = mod.new_context(torch, reference, output, metadata, checkpoint.root, seed)
    stored = {t.source_name for t in describe(output)}
    probes = [p for p in plan.probes(context) if not p.needs or any(n.startswith(p.needs) for n in stored)]
    context.extras.update(mod.source_extras(torch, plan, checkpoint, loaded))
    steps.say("running the probes on the original model")
    checks, wanted = [], {}
    with torch.no_grad():
        for probe in probes:
            wanted[probe.label] = probe.run(reference).detach().float()
            if probe.expected is not None:
                checks.append(_library_check(torch, transformers, probe, wanted[probe.label], report.messages))
    context.extras.clear()
    loaded.poison()
    steps.say("loading the converted weights")
    done, extras, bad_shapes = loaded.load_output(output, steps.bar)
    context.extras.update(extras)
    checks.insert(0, _model_tensors_check(loaded, done, bad_shapes, extras, plan, checkpoint, metadata))
    steps.say("running the probes on the converted weights")
    with torch.no_grad():
        for probe in probes:
            checks.append(_probe_check(torch, probe, reference, wanted[probe.label], limits, metadata))
    steps.close()
    if not probes:
        checks.append(Check("outputs", False, "no output probe fits this model; only the weights were checked"))
    return checks


def _model_tensors_check(
    loaded: Any, done: set[str], bad_shapes: list[str], extras: dict[str, Any], plan: Plan,
    checkpoint: Checkpoint, metadata: dict[str, Any],
) -> Check:
    """Every model tensor the source saves must come from the output; others are reported."""
    from streamconv.tools.validate.weights import _listing, expected_refs

    missing = [name for name in loaded.expected if name not in done]
    kept, _ = expected_refs(plan, checkpoint, metadata)
    reasons = {
        name: "missing: the conversion keeps it" if kept is None or name in kept
        else left_out_reason(name, plan, checkpoint, metadata)
        for name in missing
    }
    # Tensors of parts that were not converted are not probed: reported, not failures.
    failing = [f"{n} ({reasons[n]})" for n in missing if not reasons[n].startswith("not in the converted parts")]
    other_parts = [n for n in missing if reasons[n].startswith("not in the converted parts")]
    problems = []
    if failing:
        problems.append(_listing(f"{len(failing)} model tensors are not in the output", failing))
    if bad_shapes:
        problems.append(_listing(f"{len(bad_shapes)} have another shape than the model's", bad_shapes))
    notes = [f"{len(done)} model tensors loaded from the output"]
    if other_parts:
        notes.append(f"{len(other_parts)} not converted ({reasons[other_parts[0]]}), their probes skipped")
    if extras:
        notes.append(_listing(f"{len(extras)} output tensors not used by the model, checked as weights only", sorted(extras)))
    figures: dict[str, float] = {"loaded": len(done), "missing": len(failing), "unused": len(extras)}  # ints in JSON
    return Check("model-tensors", not problems, "; ".join(problems + notes), figures)


def _probe_check(
    torch: Any, probe: Any, model: Any, want: Any, limits: tuple[float, float], metadata: dict[str, Any]
) -> Check:
    min_cosine, max_nmse = limits
    try:
        got = probe.run(model).detach().float()
        figures = compare(torch, want, got)
    except Exception as exc:  # a probe that cannot run on the converted weights is a failure, not a crash
        return Check(f"outputs:{probe.label}", False, f"the probe failed on the converted weights: {exc!r}")
    passed = figures["min_cosine"] >= min_cosine and figures["nmse"] <= max_nmse
    detail = (
        f"min cosine {figures['min_cosine']:.7f} (limit {min_cosine}), NMSE {figures['nmse']:.2e} "
        f"(limit {max_nmse:.0e}), max error {figures['max_abs_error_ratio']:.2e} of the largest output, "
        f"{int(figures['items'])} inputs, dtype {metadata.get('dtype')}"
    )
    return Check(f"outputs:{probe.label}", passed, detail, figures, {"min_cosine": min_cosine, "max_nmse": max_nmse})


def _library_check(torch: Any, transformers: Any, probe: Any, want: Any, messages: list[str]) -> Check:
    """The probe's own computation on the original weights against another library's."""
    from streamconv.tools.validate.model import capture

    min_cosine, max_nmse = LIBRARY_LIMITS
    with capture(transformers, messages):
        expected = probe.expected()
    figures = compare(torch, expected, want)
    passed = figures["min_cosine"] >= min_cosine and figures["nmse"] <= max_nmse
    detail = (
        f"the probe on the original weights vs the library's own: min cosine {figures['min_cosine']:.7f}, "
        f"NMSE {figures['nmse']:.2e}"
    )
    return Check(f"probe:{probe.label}", passed, detail, figures, {"min_cosine": min_cosine, "max_nmse": max_nmse})


class _Steps:
    """Progress on stderr: a bar over the steps and the converted tensors, when ``progress``."""

    def __init__(self, progress: bool, total: int) -> None:
        self.bar = progress_bars.bar(total, "steps", "validating", enabled=progress, leave=False)

    def say(self, text: str) -> None:
        self.bar.say(text)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def record_validation(output: str | os.PathLike[str], report: ValidationReport) -> Path:
    """Write ``report`` as the ``validation`` section of the output's metadata.json, atomically
    (:func:`streamconv._files.write_json`).

    Returns:
        The metadata.json path.
    """
    path = Path(output) / METADATA_FILENAME
    metadata = read_metadata(output)
    metadata["validation"] = report.to_dict()
    _files.write_json(metadata, path)
    return path
