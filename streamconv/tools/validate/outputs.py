"""The ``model-tensors`` and ``outputs:*`` checks: the original model, then the model the output builds.

See :mod:`streamconv.tools.validate.model` for how each model is built. In order:

1. the reference is built from the source; the probes are made and run on it; what the source
   held that the model did not (its tensors transformers initialised) is kept aside;
2. the reference is dropped, the model is built again from the output's tensors; tensors the
   output should have provided are poisoned, those the source did not provide either are set as
   in the reference;
3. the probes run again and are compared with the reference outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamconv import progress as progress_bars
from streamconv.errors import StreamconvError
from streamconv.format.reader import describe
from streamconv.plans import Plan, Probe
from streamconv.plans.model_inputs import input_probes
from streamconv.sources.checkpoint import Checkpoint
from streamconv.tools.validate import model as mod
from streamconv.tools.validate.report import (
    LIBRARY_LIMITS,
    TOP_K,
    Check,
    ValidationReport,
    compare,
    neighbours_kept,
    neighbours_limit,
)
from streamconv.tools.validate.routing import Routing, pinned_routing, recorded_routing
from streamconv.tools.validate.weights import _listing, expected_refs, left_out_reason

__all__ = ["check_outputs"]


def check_outputs(
    output: Path, plan: Plan, checkpoint: Checkpoint, metadata: dict[str, Any], report: ValidationReport,
    limits: tuple[float, float], seed: int, progress: bool,
) -> list[Check]:
    """The ``model-tensors`` check and one ``outputs:<probe>`` check per probe (see the module docstring)."""
    steps = _Steps(progress, 6)
    steps.say("importing torch and transformers")
    torch, transformers = mod.import_torch()
    class_name = plan.model_class(metadata)
    saved = {ref.source_name for ref in checkpoint.tensors}
    outside = [ref for ref in plan.tensors(checkpoint) if ref.source_name not in saved]
    outside_names = {ref.source_name for ref in outside}
    try:
        with mod.capture(transformers, report.messages):
            config = transformers.AutoConfig.from_pretrained(str(checkpoint.root))
    except Exception as exc:  # transformers' own errors: one line, a failed check
        return [Check("outputs", False, f"transformers cannot read {checkpoint.root}/config.json ({mod._one_line(exc)})")]
    try:
        steps.say("loading the original model")
        reference = mod.build_model(torch, transformers, class_name, config, mod.source_state(torch, checkpoint.tensors),
                                    report.messages)
        steps.say("running the probes on the original model")
        routings: dict[str, Routing] = {}
        probes, checks, wanted, extras = _reference_run(torch, transformers, plan, reference, output, metadata,
                                                        checkpoint, seed, outside, report.messages, routings)
        keys = mod.model_keys(reference.model, sorted(saved | {i.source_name for i in describe(output)}))
        buffers = mod.non_persistent_buffers(reference.model)
        state = reference.model.state_dict()
        unsaved = {k: state[k].clone() for k in reference.missing if k in state}  # as transformers initialised them
        used_by_reference, reference_missing = reference.used, reference.missing
        mod.release(torch, reference.model)  # its memory goes now, whatever still refers to the model
        del reference, state
        steps.say("loading the converted weights")
        built = mod.build_model(torch, transformers, class_name, config, mod.output_state(torch, output, outside_names),
                                report.messages)
    except mod.ModelProblem as exc:
        return [Check("outputs", False, str(exc))]
    missing_sources = sorted(used_by_reference - built.used)
    _prepare(torch, built, unsaved, reference_missing, {keys.get(n, n) for n in missing_sources})
    extras.clear()
    extras.update(mod.output_extras(torch, output, outside_names))
    checks.insert(0, _model_tensors_check(built, missing_sources, keys, buffers, outside_names, class_name,
                                          plan, checkpoint, metadata, output))
    steps.say("running the probes on the converted weights")
    with torch.no_grad():
        for probe in probes:
            checks.append(_probe_check(torch, probe, built.model, wanted[probe.label], limits, metadata,
                                       routings[probe.label]))
    steps.close()
    return checks


def _reference_run(
    torch: Any, transformers: Any, plan: Plan, reference: mod.Built, output: Path, metadata: dict[str, Any],
    checkpoint: Checkpoint, seed: int, outside: list[Any], messages: list[str], routings: dict[str, Routing],
) -> tuple[list[Probe], list[Check], dict[str, Any], dict[str, Any]]:
    """The probes that fit and their reference outputs; failed checks for probes that cannot run.

    Returns the probes, the checks so far, the reference outputs by label, and the extras dict the
    probes read (filled with the source's tensors here; the caller refills it with the output's).
    Each probe's expert routing, if the model has routers, goes into ``routings`` by label.
    """
    context = mod.new_context(torch, reference.model, output, metadata, checkpoint.root, seed)
    stored = {t.source_name for t in describe(output)}
    try:
        probes = [p for p in plan.probes(context) if not p.needs or any(n.startswith(p.needs) for n in stored)]
    except (StreamconvError, AttributeError, TypeError, ValueError, KeyError) as exc:
        return [], [Check("outputs", False, f"the {plan.name} plan's probes cannot be made for this model: "
                                            f"{mod._one_line(exc)}")], {}, context.extras
    checks: list[Check] = []
    if not probes:
        why = input_probes(context)[1] or f"the {plan.name} plan's probes need parts that were not converted"
        checks.append(Check("outputs", False, f"{why}; only the weights were checked"))
    extras = context.extras
    extras.update(mod.probe_extras(torch, outside))
    wanted, runnable = {}, []
    with torch.no_grad():
        for probe in probes:
            try:
                with recorded_routing(torch, reference.model) as routing:
                    wanted[probe.label] = probe.run(reference.model).detach().float()
                routings[probe.label] = routing
            except Exception as exc:  # a probe the model cannot take is a failed check, not a crash
                checks.append(Check(f"outputs:{probe.label}", False,
                                    f"the probe cannot run on {type(reference.model).__name__}: {mod._one_line(exc)}"))
                continue
            runnable.append(probe)
            if probe.expected is not None:
                checks.append(_library_check(torch, transformers, probe, wanted[probe.label], messages))
    return runnable, checks, wanted, extras


def _prepare(torch: Any, built: mod.Built, unsaved: dict[str, Any], reference_missing: set[str], keys: set[str]) -> None:
    """Poison what the output should have provided; set what the source did not provide either as in the reference."""
    mod.poison(torch, built.model, (built.missing - reference_missing) | built.mismatched_keys | keys)
    state = built.model.state_dict()
    with torch.no_grad():
        for key, tensor in unsaved.items():
            if key in state and tuple(state[key].shape) == tuple(tensor.shape):
                state[key].copy_(tensor)


def _model_tensors_check(
    built: mod.Built, missing_sources: list[str], keys: dict[str, str], buffers: set[str], outside: set[str],
    class_name: str, plan: Plan, checkpoint: Checkpoint, metadata: dict[str, Any], output: Path,
) -> Check:
    """Every tensor the source gave the model comes from the output, and every stored tensor is used."""
    kept, _ = expected_refs(plan, checkpoint, metadata)
    stored = [i.source_name for i in describe(output)]
    reasons = {
        name: "missing: the conversion keeps it" if kept is None or name in kept
        else left_out_reason(name, plan, checkpoint, metadata)
        for name in missing_sources if name not in stored
    }
    other_parts = [n for n, why in reasons.items() if why.startswith("not in the converted parts")]
    failing = [f"{n} ({why})" for n, why in reasons.items() if n not in other_parts]
    unloaded = [n for n in missing_sources if n in stored]  # stored, but the model would not take it
    unused = [n for n in stored if n not in built.used and n not in outside and n not in unloaded
              and not _is_buffer(n, keys, buffers)]
    problems = []
    if failing:
        problems.append(_listing(f"{len(failing)} tensors the model takes from the source are not in the output", failing))
    if built.mismatched:
        problems.append(_listing(f"{len(built.mismatched)} have another shape than the model's", built.mismatched))
    if unloaded:
        problems.append(_listing(f"{len(unloaded)} stored tensors the model did not load", unloaded))
    if unused:
        problems.append(_listing(f"{len(unused)} stored tensors are not used by {class_name}", unused))
    notes = [f"{len(built.used)} stored tensors loaded by transformers' from_pretrained"]
    if other_parts:
        notes.append(f"{len(other_parts)} not converted ({reasons[other_parts[0]]}), their probes skipped")
    if outside:
        notes.append(f"{len(outside)} outside the transformers model, given to the probes")
    figures: dict[str, float | int] = {"loaded": len(built.used), "missing": len(failing), "unused": len(unused)}
    return Check("model-tensors", not problems, "; ".join(problems + notes), figures)


def _is_buffer(name: str, keys: dict[str, str], buffers: set[str]) -> bool:
    """A non-persistent buffer of the model, under the name the model loads it as or a prefix change of it."""
    key = keys.get(name, name)
    return any(c in buffers for c in (key, name, name.partition(".")[2]))


def _probe_check(
    torch: Any, probe: Any, model: Any, want: Any, limits: tuple[float, float], metadata: dict[str, Any],
    routing: Routing,
) -> Check:
    min_cosine, max_nmse = limits
    try:
        with pinned_routing(torch, model, routing):
            got = probe.run(model).detach().float()
        figures = compare(torch, want, got)
        if probe.ranking:
            figures["neighbours"] = neighbours_kept(torch, want, got)
    except Exception as exc:  # a probe that cannot run on the converted weights is a failure, not a crash
        return Check(f"outputs:{probe.label}", False, f"the probe failed on the converted weights: {mod._one_line(exc)}")
    passed = figures["min_cosine"] >= min_cosine and figures["nmse"] <= max_nmse
    bounds = {"min_cosine": min_cosine, "max_nmse": max_nmse}
    ranking = ""
    if probe.ranking:
        bounds["neighbours"] = neighbours_limit(str(metadata.get("dtype")))
        passed = passed and figures["neighbours"] >= bounds["neighbours"]
        ranking = (f", {figures['neighbours']:.2f} of the {TOP_K} nearest neighbours kept on average "
                   f"(limit {bounds['neighbours']:g})")
    detail = (
        f"min cosine {figures['min_cosine']:.7f} (limit {min_cosine}), NMSE {figures['nmse']:.2e} "
        f"(limit {max_nmse:.0e}){ranking}, max error {figures['max_abs_error_ratio']:.2e} of the largest output, "
        f"{int(figures['items'])} inputs, dtype {metadata.get('dtype')}"
    )
    if routing.routers:
        detail += f"; {routing.note()}"
        figures = {**figures, "routing_flips": routing.flips, "routing_choices": routing.choices}
    return Check(f"outputs:{probe.label}", passed, detail, figures, bounds)


def _library_check(torch: Any, transformers: Any, probe: Any, want: Any, messages: list[str]) -> Check:
    """The probe's own computation on the original weights against another library's."""
    min_cosine, max_nmse = LIBRARY_LIMITS
    try:
        with mod.capture(transformers, messages):
            expected = probe.expected()
        figures = compare(torch, expected, want)
    except Exception as exc:  # the other library failing is a failed self-check, not a crash
        return Check(f"probe:{probe.label}", False, f"the library's own computation failed: {mod._one_line(exc)}")
    passed = figures["min_cosine"] >= min_cosine and figures["nmse"] <= max_nmse
    detail = (
        f"the probe on the original weights vs the library's own: min cosine {figures['min_cosine']:.7f}, "
        f"NMSE {figures['nmse']:.2e}"
    )
    return Check(f"probe:{probe.label}", passed, detail, figures, {"min_cosine": min_cosine, "max_nmse": max_nmse})


class _Steps:
    """Progress on stderr: a bar over the steps, when ``progress``."""

    def __init__(self, progress: bool, total: int) -> None:
        self.bar = progress_bars.bar(total, "steps", "validating", enabled=progress, leave=False)

    def say(self, text: str) -> None:
        self.bar.say(text)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
