"""Model plans: one module per family, each registering itself in :mod:`.registry`."""

# Importing a plan module registers its plan.
from streamconv.plans import bert, clip, generic, sentence_transformers, whisper  # noqa: F401
from streamconv.plans.base import Layout, ModelInfo, Part, Plan, Selection
from streamconv.plans.registry import PLANS, choose_plan, detect_plan, get_plan, plan_names, register

__all__ = [
    "Layout",
    "ModelInfo",
    "Part",
    "Plan",
    "Selection",
    "PLANS",
    "choose_plan",
    "detect_plan",
    "get_plan",
    "plan_names",
    "register",
]
