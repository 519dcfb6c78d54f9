"""What validation reports: checks with figures and limits, the metrics, and the limits per dtype.

Metrics of an output probe (a batch of inputs; ``ref`` is the original model's output, ``out``
the converted model's, each item flattened):

- ``min_cosine``: the smallest, over the batch's items, cosine similarity of ``out`` and ``ref``;
- ``nmse``: ``sum((out - ref)**2) / sum(ref**2)`` over the whole batch;
- ``max_abs_error_ratio``: ``max|out - ref| / max|ref|`` over the whole batch (reported, no limit);
- ``neighbours`` (ranking probes: a batch of embeddings): per item, how many of its
  :data:`TOP_K` nearest other items (cosine) in ``ref`` are still among its :data:`TOP_K` nearest in
  ``out``, averaged over the items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EXACT", "LIBRARY_LIMITS", "LIMITS", "TOP_K", "Check", "ValidationReport", "compare", "limits_for",
           "neighbours_kept", "neighbours_limit"]

#: (minimum cosine per item, maximum NMSE) per stored float dtype.
#: bfloat16 is set from measurement with a 10x margin on the NMSE and on 1 - cosine. Measured
#: (seed 0, 8-item probes): the tiny test models (BERT, RoBERTa, DistilBERT, CLIP image and text,
#: Whisper encoder and decoder, sentence-transformers) worst NMSE 2.4e-5 and min cosine 0.999937
#: (both the CLIP text tower); all-MiniLM-L6-v2 NMSE 5.6e-5, min cosine 0.999964. Hence NMSE
#: <= 6e-4 and cosine >= 0.9993. For comparison float16 measured NMSE <= 9.6e-7 (MiniLM).
#: int8 (weight matrices as int8 codes, docs/format.md): the cosine limit is the bar asked for,
#: 0.9995; the NMSE limit about 7x what the real all-MiniLM-L6-v2 measured (seed 0): min cosine
#: 0.99970, NMSE 4.0e-4 (docs/benchmarks.md, "int8 storage").
LIMITS: dict[str, tuple[float, float]] = {
    "float16": (0.99999, 1e-5),
    "bfloat16": (0.9993, 6e-4),
    "int8": (0.9995, 3e-3),
}
#: keep and float32: the outputs must be exactly equal.
EXACT = (1.0, 0.0)
#: A probe checked against another library's own computation (sentence-transformers' encode),
#: both in float32 on the original weights: only the order of float operations may differ.
LIBRARY_LIMITS = (0.99999, 1e-6)


def limits_for(policy: str) -> tuple[float, float]:
    """(min cosine, max NMSE) for a conversion's dtype policy (``float16``, ``keep``...)."""
    return LIMITS.get(policy, EXACT)


#: Neighbours counted per item by a ranking probe.
TOP_K = 10


def neighbours_limit(policy: str) -> float:
    """The least mean number of its :data:`TOP_K` nearest neighbours an item must keep: all of them
    when the outputs must be equal, 9 for a lossy dtype (int8 measured 9.91 on MiniLM's near-duplicates)."""
    return float(TOP_K) if limits_for(policy) == EXACT else TOP_K - 1.0


def neighbours_kept(torch: Any, ref: Any, out: Any) -> float:
    """The mean, over the items, of how many of each item's :data:`TOP_K` nearest other items
    (cosine) in ``ref`` are among its :data:`TOP_K` nearest in ``out``."""
    k = min(TOP_K, ref.shape[0] - 1)
    if k < 1:
        return float(TOP_K)

    def top(x: Any) -> Any:
        x = torch.nn.functional.normalize(x.reshape(x.shape[0], -1).double(), dim=1)
        similarity = x @ x.T
        similarity.fill_diagonal_(-math.inf)
        return similarity.topk(k, dim=1).indices.tolist()

    kept = [len(set(a) & set(b)) for a, b in zip(top(ref), top(out), strict=True)]
    return sum(kept) / len(kept) * TOP_K / k


@dataclass
class Check:
    """One comparison: what was compared, the verdict, the measured figures and their limits.

    ``detail`` is the check's one-line account, recorded with the report in metadata.json; the
    terminal layout of a report is :mod:`streamconv.cli.display`'s.
    """

    name: str
    passed: bool
    detail: str
    figures: dict[str, float | int] = field(default_factory=dict)
    limits: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: figures and limits as numbers (``null`` for NaN)."""
        return {
            "name": self.name,
            "passed": self.passed,
            "detail": self.detail,
            "figures": {k: _number(v) for k, v in self.figures.items()},
            "limits": {k: _number(v) for k, v in self.limits.items()},
        }


@dataclass
class ValidationReport:
    """All checks of one validation; ``passed`` is true when every check passed.

    Attributes:
        output_dir: The converted output.
        source: The source checkpoint it was compared with (as found).
        checks: The checks, in order: names, weights, model tensors, one per output probe.
        messages: What transformers (and sentence-transformers) printed or logged while loading.
        seconds: Wall time of the validation.
    """

    output_dir: Path
    source: str
    checks: list[Check] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """True when there is at least one check and every check passed."""
        return bool(self.checks) and all(c.passed for c in self.checks)

    def check(self, name: str) -> Check:
        """The check called ``name``.

        Raises:
            KeyError: no such check.
        """
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the verdict, every check with its figures and limits, the library messages."""
        return {
            "output_dir": str(self.output_dir),
            "source": self.source,
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
            "checks": [c.to_dict() for c in self.checks],
            "messages": list(self.messages),
        }


#: Elements of one item compared at a time in float64 (8 MiB per temporary).
COMPARE_SLICE = 1024 * 1024


def compare(torch: Any, want: Any, got: Any) -> dict[str, float]:
    """The metrics of ``got`` against the reference ``want`` (see the module docstring)."""
    rows = want.shape[0] if want.dim() > 1 else 1
    want, got = want.detach().reshape(rows, -1), got.detach().reshape(rows, -1)
    cosines, ref_energy, err_energy, scale, max_err, nan = [], 0.0, 0.0, 0.0, 0.0, False
    # One input at a time, a slice at a time, in float64: a language model's logits for the whole
    # batch are hundreds of MB, and float64 temporaries of them would cost more than the model.
    for w, g in zip(want, got, strict=True):
        dot = ref_norm = got_norm = item_err = 0.0
        for start in range(0, w.numel(), COMPARE_SLICE):
            a, b = w[start:start + COMPARE_SLICE].double(), g[start:start + COMPARE_SLICE].double()
            diff = b - a
            dot, ref_norm, got_norm = dot + float((a * b).sum()), ref_norm + float((a * a).sum()), got_norm + float((b * b).sum())
            item_err += float((diff * diff).sum())
            if a.numel():
                scale, max_err = max(scale, float(a.abs().max())), max(max_err, float(diff.abs().max()))
            nan = nan or bool(torch.isnan(b).any())
        # equal items: exactly 1
        cosines.append(1.0 if item_err == 0 else dot / max(math.sqrt(ref_norm) * math.sqrt(got_norm), 1e-300))
        ref_energy, err_energy = ref_energy + ref_norm, err_energy + item_err
    nan = nan or not math.isfinite(err_energy)
    return {
        "min_cosine": float("nan") if nan else min(cosines),
        "nmse": float("nan") if nan else (err_energy / ref_energy if ref_energy else float(err_energy > 0)),
        "max_abs_error_ratio": float("nan") if nan else (max_err / scale if scale else max_err),
        "items": rows,  # a count: an int in the JSON report
    }


def _number(value: float) -> float | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value
