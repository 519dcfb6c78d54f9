"""Mixture-of-experts routing pinned to the original model's choices during the outputs check.

A router picks each token's top-k experts. Rounding the weights to float16 moves its logits a
little, and where two experts are nearly tied that flips the choice: the token then goes through
another expert and its output jumps, though no weight is wrong. Comparing outputs across such a
flip would fail correct conversions (or, with limits loose enough to pass them, miss damage).

So the converted model is run with the experts the original chose, token by token, while the
routing *weights* still come from the converted router's own logits: damage to a router (its
logits scaled, say) or to an expert still reaches the outputs. How many choices would have
flipped, and how close those ties were in the original, is reported beside the figures.

Routers are found by what they return, as transformers 5's top-k routers do:
``(router_logits, routing_weights, expert_indices)`` with integer indices shaped like the weights.
The weights are recovered from the logits by softmax, optionally renormalised over the chosen
experts (both seen in transformers' routers); a router whose weights follow another rule
(sigmoid with a bias, grouped top-k) is left unpinned, and says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Routing", "pinned_routing", "recorded_routing"]


@dataclass
class _Router:
    rule: str | None = None  # "softmax" or "softmax-renormalised"; None: unknown, left unpinned
    calls: list[Any] = field(default_factory=list)  # the original's chosen experts, call by call


@dataclass
class Routing:
    """The routers of the original model and, per router, the experts it chose on each call."""

    routers: dict[str, _Router] = field(default_factory=dict)
    flips: int = 0  # token choices the converted router would have made differently
    choices: int = 0  # token choices pinned in all
    widest_tie: float = 0.0  # the largest gap (in the original's probabilities) among flipped choices
    unpinned: list[str] = field(default_factory=list)

    def note(self) -> str:
        """A few words on what was pinned, for the check's detail; empty when the model routes nothing."""
        if not self.routers:
            return ""
        text = (f"expert routing pinned to the original's ({self.flips} of {self.choices} token choices "
                f"would flip")
        text += f", at probability gaps up to {self.widest_tie:.1e})" if self.flips else ")"
        if self.unpinned:
            text += f"; routers with an unknown rule left unpinned: {', '.join(self.unpinned[:3])}"
        return text


def _router_output(output: Any) -> bool:
    if not isinstance(output, tuple) or len(output) != 3:
        return False
    logits, weights, indices = output
    tensors = all(hasattr(t, "dtype") and hasattr(t, "shape") for t in output)
    return (tensors and indices.dtype.is_floating_point is False and weights.dtype.is_floating_point
            and tuple(indices.shape) == tuple(weights.shape) and tuple(logits.shape[:-1]) == tuple(indices.shape[:-1]))


def _weights(torch: Any, logits: Any, indices: Any, rule: str) -> Any:
    chosen = torch.softmax(logits.float(), dim=-1).gather(-1, indices)
    return chosen / chosen.sum(dim=-1, keepdim=True) if rule == "softmax-renormalised" else chosen


def _rule(torch: Any, logits: Any, weights: Any, indices: Any) -> str | None:
    for rule in ("softmax", "softmax-renormalised"):
        if torch.allclose(_weights(torch, logits, indices, rule), weights.float(), rtol=1e-4, atol=1e-6):
            return rule
    return None


@contextlib.contextmanager
def recorded_routing(torch: Any, model: Any) -> Iterator[Routing]:
    """Record every router's choices while the original model runs the probes."""
    routing = Routing()
    handles = []
    # The index tensors seen, held so their ids stay unique: a module that passes its router's
    # output on unchanged (a wrapper, the model itself) is not a second router.
    seen: dict[int, Any] = {}

    def hook(name: str) -> Any:
        def record(module: Any, args: Any, output: Any) -> None:
            if not _router_output(output) or id(output[2]) in seen:
                return
            seen[id(output[2])] = output[2]
            router = routing.routers.setdefault(name, _Router())
            if not router.calls:
                router.rule = _rule(torch, *output)
            router.calls.append(output[2].detach().clone())
        return record

    for name, module in model.named_modules():
        handles.append(module.register_forward_hook(hook(name)))
    try:
        yield routing
    finally:
        for handle in handles:
            handle.remove()
        # Modules that never returned a router's output keep no entry; those of unknown rule are named.
        routing.unpinned = [name for name, r in routing.routers.items() if r.rule is None]


@contextlib.contextmanager
def pinned_routing(torch: Any, model: Any, routing: Routing) -> Iterator[Routing]:
    """Run the converted model with each router's choices replaced by the original's, in call order."""
    modules = dict(model.named_modules())
    handles, position = [], dict.fromkeys(routing.routers, 0)
    routing.flips = routing.choices = 0
    routing.widest_tie = 0.0

    def hook(name: str, router: _Router) -> Any:
        def pin(module: Any, args: Any, output: Any) -> Any:
            call = position[name]
            if not _router_output(output) or call >= len(router.calls):
                return None  # the converted model routes differently in shape: compared as it is
            position[name] = call + 1
            logits, _, own = output
            chosen = router.calls[call]
            if tuple(chosen.shape) != tuple(own.shape):
                return None
            _count_flips(torch, routing, logits, own, chosen)
            return logits, _weights(torch, logits, chosen, router.rule or "softmax").to(output[1].dtype), chosen
        return pin

    for name, router in routing.routers.items():
        if router.rule is not None and name in modules:
            handles.append(modules[name].register_forward_hook(hook(name, router)))
    try:
        yield routing
    finally:
        for handle in handles:
            handle.remove()


def _count_flips(torch: Any, routing: Routing, logits: Any, own: Any, chosen: Any) -> None:
    own_sorted, chosen_sorted = own.sort(dim=-1).values, chosen.sort(dim=-1).values
    flipped = (own_sorted != chosen_sorted).any(dim=-1)
    routing.choices += int(flipped.numel())
    count = int(flipped.sum())
    if not count:
        return
    routing.flips += count
    # How near the tie was: the converted model's probability of the expert it would have picked
    # against that of the original's pick it displaced, for the flipped tokens.
    probs = torch.softmax(logits.detach().float(), dim=-1)[flipped]
    gap = (probs.gather(-1, own[flipped]).sum(-1) - probs.gather(-1, chosen[flipped]).sum(-1)).abs()
    routing.widest_tie = max(routing.widest_tie, float(gap.max()))
