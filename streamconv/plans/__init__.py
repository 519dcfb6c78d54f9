"""Model plans: one module per family, each registering itself in :mod:`.registry`."""

from streamconv.plans import generic  # noqa: F401  (registers the plan)
from streamconv.plans.base import ModelInfo, Part, Plan, Selection
from streamconv.plans.registry import PLANS, detect_plan, get_plan, plan_names, register

__all__ = ["ModelInfo", "Part", "Plan", "Selection", "PLANS", "detect_plan", "get_plan", "plan_names", "register"]
