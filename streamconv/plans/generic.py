"""Any safetensors checkpoint: every tensor, names unchanged."""

from __future__ import annotations

from streamconv.plans.base import Plan
from streamconv.plans.registry import register


@register
class GenericPlan(Plan):
    name = "generic"
    summary = "any safetensors checkpoint: every tensor, names unchanged (used when no plan claims it)"
