"""BERT-style encoders: BERT, RoBERTa, XLM-RoBERTa, DistilBERT, CamemBERT, MPNet, MiniLM.

Every tensor is kept under its own name, task heads included (``cls.predictions.*``,
``classifier.*``); integer buffers such as ``embeddings.position_ids`` are stored as they are.
MiniLM checkpoints are BERTs (``model_type`` ``bert``).
"""

from __future__ import annotations

from streamconv.plans.base import Part, Plan

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
