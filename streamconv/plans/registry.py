"""The plan registry: one class per model family, found by name or by detection."""

from __future__ import annotations

from streamconv.errors import PlanError
from streamconv.plans.base import ModelInfo, Plan

__all__ = ["register", "get_plan", "detect_plan", "choose_plan", "plan_names", "PLANS", "FALLBACK"]

PLANS: dict[str, type[Plan]] = {}
#: The plan used when no other claims a checkpoint; it claims nothing itself.
FALLBACK = "generic"


def register(cls: type[Plan]) -> type[Plan]:
    """Class decorator: add a plan to the registry under ``cls.name``.

    Raises:
        ValueError: a plan of that name is already registered.
    """
    if cls.name in PLANS:
        raise ValueError(f"plan {cls.name!r} registered twice")
    PLANS[cls.name] = cls
    return cls


def plan_names() -> list[str]:
    """Registered plan names, in detection order, the fallback last."""
    ordered = sorted(PLANS.values(), key=lambda p: (p.name == FALLBACK, p.priority, p.name))
    return [p.name for p in ordered]


def get_plan(name: str) -> type[Plan]:
    """The plan registered as ``name``.

    Raises:
        PlanError: no such plan; the message lists the registered ones.
    """
    try:
        return PLANS[name]
    except KeyError:
        raise PlanError(
            f"unknown model type {name!r}; choose one of auto, {', '.join(plan_names())}"
        ) from None


def detect_plan(model: ModelInfo) -> tuple[type[Plan], bool]:
    """The first plan, in detection order, that claims ``model``; the fallback if none does.

    Returns:
        The plan, and whether a plan claimed the checkpoint (False means the fallback was used).
    """
    for name in plan_names():
        plan = PLANS[name]
        if name != FALLBACK and plan.detect(model):
            return plan, True
    return PLANS[FALLBACK], False


def choose_plan(model: ModelInfo, requested: str = "auto") -> tuple[type[Plan], bool]:
    """The plan for ``requested`` (``auto`` or a plan name), refusing one the checkpoint contradicts.

    A requested plan that does not claim the checkpoint is still used when nothing says what the
    checkpoint is (no config.json or no model_type, and no other plan claims it): its required
    tensors are checked later. ``generic`` is always accepted.

    Args:
        model: What detection sees of the checkpoint.
        requested: ``auto`` or a registered plan name.

    Returns:
        The plan, and whether its detection claims the checkpoint.

    Raises:
        PlanError: unknown plan name, or the checkpoint is identified as something else.
    """
    found, claimed = detect_plan(model)
    if requested == "auto":
        return found, claimed
    plan = get_plan(requested)
    if plan.name == FALLBACK or plan.detect(model):
        return plan, plan.detect(model)
    if claimed or model.model_type:
        evidence = model.describe()
        markers = sorted(model.files.intersection(found.files))
        if markers:
            evidence += f" and the folder has {', '.join(markers)}"
        handled = f", which the {found.name!r} plan handles" if claimed else ", which no plan handles"
        use = f"--type {found.name} or --type auto" if claimed else "--type auto"
        raise PlanError(
            f"{model.root}: --type {requested} does not match this checkpoint: the {plan.name!r} plan "
            f"looks for {plan.detection()}, but {evidence}{handled}; "
            f"use {use}, or --type {FALLBACK} to keep every tensor unchanged"
        )
    return plan, False
