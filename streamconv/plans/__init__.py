"""Model plans: one module per family, listed in detection order in :mod:`.registry`.

Everything that depends on a model family lives in this package: detection, parts, renames,
assets, metadata and the validation probes. No other module names a family.
"""

from streamconv.plans.base import Layout, ModelInfo, Part, Plan, Resolution
from streamconv.plans.probes import Probe, ProbeContext
from streamconv.plans.registry import (
    FALLBACK,
    PLANS,
    check_plan_options,
    choose_plan,
    detect_plan,
    get_plan,
    plan_names,
)

__all__ = [
    "FALLBACK",
    "Layout",
    "ModelInfo",
    "Part",
    "Plan",
    "Probe",
    "ProbeContext",
    "Resolution",
    "PLANS",
    "check_plan_options",
    "choose_plan",
    "detect_plan",
    "get_plan",
    "plan_names",
]
