"""The plan registry: an explicit, ordered list of the model families, found by name or detection."""

from __future__ import annotations

from collections.abc import Sequence

from streamconv.errors import InvalidOptionError, PlanError
from streamconv.plans.base import ModelInfo, Plan
from streamconv.plans.bert import BertPlan
from streamconv.plans.clip import ClipPlan
from streamconv.plans.generic import GenericPlan
from streamconv.plans.sentence_transformers import SentenceTransformersPlan
from streamconv.plans.siglip import SiglipPlan
from streamconv.plans.whisper import WhisperPlan

__all__ = ["PLANS", "FALLBACK", "check_plan_options", "get_plan", "detect_plan", "choose_plan", "plan_names"]

#: Every plan, in detection order: the first that claims a checkpoint converts it. A plan module
#: that is not listed here fails a test instead of being silently missing.
PLANS: tuple[type[Plan], ...] = (
    SentenceTransformersPlan,  # before bert: a sentence-transformers folder is also a BERT
    BertPlan,
    ClipPlan,
    SiglipPlan,
    WhisperPlan,
    GenericPlan,  # the fallback: claims nothing, used when no other plan does
)
FALLBACK = GenericPlan.name
_BY_NAME = {alias: plan for plan in PLANS for alias in (plan.name, *plan.aliases)}


def plan_names() -> list[str]:
    """Plan names, in detection order, the fallback last."""
    return [plan.name for plan in PLANS]


def get_plan(name: str) -> type[Plan]:
    """The plan called ``name`` (or one of its old spellings, ``sentence_transformer``...).

    Raises:
        InvalidOptionError: no such plan; the message lists the plans.
    """
    plan = _BY_NAME.get(name)
    if plan is None:
        raise InvalidOptionError(
            f"{{model_type=}} is not a model type; choose auto or one of {', '.join(plan_names())}",
            "model_type",
            model_type=name,
        )
    return plan


def check_plan_options(model_type: str, parts: Sequence[str] | None) -> str:
    """Check a model type and parts before anything is read; returns the plan name (or ``auto``).

    With ``auto`` the plan is not known yet, so each part must belong to some plan.

    Raises:
        InvalidOptionError: unknown model type, or a part no candidate plan has.
    """
    plans = PLANS if model_type == "auto" else (get_plan(model_type),)
    known = list(dict.fromkeys(p for plan in plans for p in plan.parts))
    unknown = [p for p in parts or () if p not in known]
    if unknown:
        whose = "any model type" if model_type == "auto" else f"model type {plans[0].name!r}"
        raise InvalidOptionError(
            f"{{parts=}}: {whose} has no part {', '.join(map(repr, unknown))}; choose from {', '.join(known)}",
            "parts",
            parts=",".join(parts or ()),
        )
    return model_type if model_type == "auto" else plans[0].name


def detect_plan(model: ModelInfo) -> tuple[type[Plan], bool]:
    """The first plan, in detection order, that claims ``model``; the fallback if none does.

    Returns:
        The plan, and whether a plan claimed the checkpoint (False means the fallback was used).
    """
    for plan in PLANS:
        if plan.name != FALLBACK and plan.detect(model):
            return plan, True
    return GenericPlan, False


def choose_plan(model: ModelInfo, requested: str = "auto", parts: Sequence[str] | None = None) -> tuple[type[Plan], bool]:
    """The plan for ``requested`` (``auto`` or a plan name), refusing one the checkpoint contradicts.

    A requested plan that does not claim the checkpoint is still used when nothing says what the
    checkpoint is (no config.json or no model_type, and no other plan claims it): its required
    tensors are checked later. ``generic`` is always accepted.

    Args:
        model: What detection sees of the checkpoint.
        requested: ``auto`` or a plan name.
        parts: The parts asked for, checked against the chosen plan.

    Returns:
        The plan, and whether its detection claims the checkpoint.

    Raises:
        PlanError: the checkpoint is identified as something else.
        InvalidOptionError: unknown plan name, or a part the chosen plan does not have.
    """
    found, claimed = detect_plan(model)
    plan = found if requested == "auto" else get_plan(requested)
    check_plan_options(plan.name, parts)
    if requested == "auto":
        return found, claimed
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
