"""Evaluation metrics for fine-tuning: GLUE-style classification and regression, multi-label,
entity-level sequence labelling, extractive QA (SQuAD) and text-to-text (exact match, BLEU,
ROUGE-L).

numpy and the standard library only, so scoring needs none of sklearn, scipy, seqeval,
sacrebleu or rouge_score; each function matches that reference to float precision (the tests
compare against them on random inputs). Numeric inputs may be lists, numpy arrays or torch
tensors; every score is a Python float.
"""

from __future__ import annotations

from tpcli.metrics.classification import (
    accuracy,
    f1,
    matthews_corrcoef,
    multilabel_scores,
    pearson,
    precision_recall_f1,
    spearman,
)
from tpcli.metrics.glue import glue_metrics
from tpcli.metrics.sequence import entity_scores, get_entities
from tpcli.metrics.text import (
    corpus_bleu,
    exact_match,
    normalize_answer,
    rouge_l,
    squad_exact_match,
    squad_f1,
    squad_scores,
    tokenize_13a,
)

__all__ = [
    "accuracy",
    "corpus_bleu",
    "entity_scores",
    "exact_match",
    "f1",
    "get_entities",
    "glue_metrics",
    "matthews_corrcoef",
    "multilabel_scores",
    "normalize_answer",
    "pearson",
    "precision_recall_f1",
    "rouge_l",
    "spearman",
    "squad_exact_match",
    "squad_f1",
    "squad_scores",
    "tokenize_13a",
]
