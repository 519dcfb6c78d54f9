"""The plan registry: one class per model family, found by name or by detection."""

from __future__ import annotations

from streamconv.errors import PlanError
from streamconv.plans.base import ModelInfo, Plan

__all__ = ["register", "get_plan", "detect_plan", "plan_names", "PLANS"]

PLANS: dict[str, type[Plan]] = {}
FALLBACK = "generic"


def register(cls: type[Plan]) -> type[Plan]:
    """Class decorator: add a plan to the registry under ``cls.name``."""
    if cls.name in PLANS:
        raise ValueError(f"plan {cls.name!r} registered twice")
    PLANS[cls.name] = cls
    return cls


def plan_names() -> list[str]:
    """Registered plan names, in detection order, the fallback last."""
    return [p.name for p in sorted(PLANS.values(), key=lambda p: (p.name == FALLBACK, p.priority, p.name))]


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
    """The first plan, in detection order, that claims ``model``; ``generic`` if none does.

    Returns:
        The plan, and whether a plan claimed the checkpoint (False means the fallback was used).
    """
    for name in plan_names():
        plan = PLANS[name]
        if name != FALLBACK and plan.detect(model):
            return plan, True
    return PLANS[FALLBACK], False
