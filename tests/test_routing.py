"""Mixture-of-experts routing pinned to the original's during the outputs check (tools/validate/routing.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import streamconv
from streamconv.tools.validate import validate
from tests.conftest import damage_output

torch = pytest.importorskip("torch")

EXPERT = "model.layers.0.block_sparse_moe.experts.1.w1.weight"


def test_a_float16_moe_passes_with_routing_pinned_and_damage_still_fails(tmp_path: Path) -> None:
    """float16 rounding flips near-tied expert choices; pinned, a correct conversion passes and a
    damaged expert still fails the outputs check."""
    from tests import models

    out = streamconv.convert(models.mixtral(tmp_path / "src"), tmp_path / "out").output_dir
    report = validate(out)
    check = report.check("outputs:text")
    assert report.passed, report.table()
    assert "expert routing pinned" in check.detail
    assert check.figures["routing_choices"] > 0 and check.figures["routing_flips"] <= check.figures["routing_choices"]
    damage_output(out, lambda arrays, sources: arrays.update({EXPERT: arrays[EXPERT] * 1.05}), tmp_path / "scratch")
    damaged = validate(out)
    assert not damaged.check("outputs:text").passed, damaged.table()


class _Router(torch.nn.Module):
    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule
        self.weight = torch.nn.Parameter(torch.randn(4, 8))

    def forward(self, x):
        logits = x @ self.weight.T
        probs = torch.sigmoid(logits) if self.rule == "sigmoid" else torch.softmax(logits, -1)
        top, index = probs.topk(2, dim=-1)
        if self.rule == "renormalised":
            top = top / top.sum(-1, keepdim=True)
        return logits, top, index


class _Model(torch.nn.Module):
    def __init__(self, rule: str) -> None:
        super().__init__()
        self.gate = _Router(rule)

    def forward(self, x):
        return self.gate(x)


@pytest.mark.parametrize("rule", ["softmax", "renormalised"])
def test_pinned_choices_are_the_originals_and_weights_the_converted_routers(rule: str) -> None:
    from streamconv.tools.validate.routing import pinned_routing, recorded_routing

    torch.manual_seed(0)
    original, converted, x = _Model(rule), _Model(rule), torch.randn(16, 8)
    with recorded_routing(torch, original) as routing:
        _, _, chosen = original(x)
    assert routing.note().startswith("expert routing pinned") and not routing.unpinned
    with pinned_routing(torch, converted, routing):
        logits, weights, index = converted(x)
    assert torch.equal(index, chosen)
    probs = torch.softmax(logits, -1).gather(-1, chosen)
    expected = probs / probs.sum(-1, keepdim=True) if rule == "renormalised" else probs
    assert torch.allclose(weights, expected)
    own = converted.gate.weight.detach() @ x.T  # the converted router's own choices, unpinned
    own_choice = own.T.softmax(-1).topk(2, dim=-1).indices
    flips = int((own_choice.sort(-1).values != chosen.sort(-1).values).any(-1).sum())
    assert routing.flips == flips and routing.choices == 16


def test_a_router_of_unknown_rule_is_left_unpinned_and_named() -> None:
    from streamconv.tools.validate.routing import pinned_routing, recorded_routing

    original, converted, x = _Model("sigmoid"), _Model("sigmoid"), torch.randn(16, 8)
    with recorded_routing(torch, original) as routing:
        original(x)
    assert routing.unpinned == ["gate"] and "left unpinned: gate" in routing.note()
    with pinned_routing(torch, converted, routing):
        _, _, index = converted(x)
    assert torch.equal(index, converted.gate(x)[2])  # its own choices: nothing was replaced
