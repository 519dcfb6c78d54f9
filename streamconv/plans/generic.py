"""Any safetensors checkpoint: every tensor, names unchanged."""

from __future__ import annotations

from streamconv.plans.base import Plan

__all__ = ["GenericPlan"]


class GenericPlan(Plan):
    """The fallback: a Llama-style decoder or any checkpoint no other plan claims."""

    name = "generic"
    summary = "any safetensors checkpoint: every tensor, names unchanged"
