"""BERT-style encoders: BERT, RoBERTa, XLM-RoBERTa, DistilBERT, CamemBERT, MPNet, MiniLM.

Every tensor is kept under its own name, task heads included (``cls.predictions.*``,
``classifier.*``); integer buffers such as ``embeddings.position_ids`` are stored as they are.
MiniLM checkpoints are BERTs (``model_type`` ``bert``).
"""

from __future__ import annotations

from typing import Any

from streamconv.plans.base import Part, Plan
from streamconv.plans.probes import Probe, ProbeContext, output_tensor, text_batch

__all__ = ["BertPlan"]


class BertPlan(Plan):
    """BERT-family encoders, task heads included."""

    name = "bert"
    summary = (
        "BERT-style encoders (BERT, RoBERTa, XLM-RoBERTa, DistilBERT, CamemBERT, MPNet, MiniLM): "
        "every tensor, names unchanged"
    )
    expected_assets = ("tokenizer.json",)
    model_types = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "camembert", "mpnet"})
    architectures = ("Bert", "Roberta", "XLMRoberta", "DistilBert", "Camembert", "MPNet")
    # The word embeddings, with or without a task model's prefix (``bert.``, ``roberta.``...).
    parts = {"all": Part(include=("*",), required=("*embeddings.word_embeddings.weight",))}

    def probes(self, context: ProbeContext) -> list[Probe]:
        """8 sentences of different lengths, padded, with token types when the model has several."""
        return [Probe("text", text_model_probe(context, token_types=True))]


def text_model_probe(context: ProbeContext, token_types: bool) -> Any:
    """``run(model)``: the model's first output (hidden states or logits) on a padded text batch."""
    config = context.model.config
    batch = text_batch(
        context,
        config.vocab_size,
        # RoBERTa-style models number positions from padding_idx + 1: keep clear of the end.
        max_length=min(64, getattr(config, "max_position_embeddings", 64) - 2),
        type_vocab_size=getattr(config, "type_vocab_size", 0) if token_types else 0,
        pad_id=getattr(config, "pad_token_id", None) or 0,
    )
    return lambda model: output_tensor(model(**batch))
