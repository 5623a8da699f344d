"""Classification and regression metrics (GLUE and friends), numpy only.

Each one matches a reference implementation to float precision; the tests check that on random
inputs: sklearn.metrics for the label metrics, scipy.stats for the correlations. Where the
reference is undefined (a zero denominator) we follow its convention and say so in the docstring.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from tpcli.errors import DataError
from tpcli.metrics._common import ArrayLike, f_score, pair, safe_div, to_numpy

Average = Literal["binary", "macro", "micro"]


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of predictions equal to the label (sklearn's accuracy_score)."""
    p, y = pair(preds, labels, "accuracy")
    return float(np.mean(p == y))


def _per_class(p: np.ndarray, y: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per class: true positives, predicted count, gold count. Each (K,)."""
    hit = p == y
    tp = np.array([np.sum(hit & (y == c)) for c in classes], dtype=np.float64)
    n_pred = np.array([np.sum(p == c) for c in classes], dtype=np.float64)
    n_true = np.array([np.sum(y == c) for c in classes], dtype=np.float64)
    return tp, n_pred, n_true


def precision_recall_f1(
    preds: ArrayLike,
    labels: ArrayLike,
    average: Average = "binary",
    pos_label: int | str = 1,
    classes: Sequence[int | str] | None = None,
) -> tuple[float, float, float]:
    """(precision, recall, F1) as sklearn's precision_recall_fscore_support(zero_division=0).

    binary: the scores of `pos_label` alone (MRPC/QQP report the F1 of class 1); the data may hold
    at most two classes. macro: unweighted mean of the per-class scores, so a rare class counts
    as much as a common one. micro: pooled counts; over all classes this equals accuracy.
    `classes` restricts macro/micro to those labels (sklearn's `labels=`); by default the classes
    are every value seen in either preds or labels. A zero denominator gives 0.0.
    """
    p, y = pair(preds, labels, "precision_recall_f1")
    if average == "binary":
        seen = np.unique(np.concatenate([p, y]))
        if len(seen) > 2:
            raise DataError(
                f"average='binary' needs at most two classes, the data has {len(seen)}",
                hint="for a multi-class task use average='macro' or average='micro'.",
            )
        cls = np.asarray([pos_label])
    elif average in ("macro", "micro"):
        cls = np.unique(np.concatenate([p, y])) if classes is None else np.asarray(classes)
    else:
        raise DataError(
            f"unknown average {average!r}",
            hint="use one of 'binary', 'macro', 'micro'.",
        )
    tp, n_pred, n_true = _per_class(p, y, cls)
    if average == "micro" or average == "binary":
        prec, rec = safe_div(tp.sum(), n_pred.sum()), safe_div(tp.sum(), n_true.sum())
        return prec, rec, f_score(prec, rec)
    precs = [safe_div(t, n) for t, n in zip(tp, n_pred)]
    recs = [safe_div(t, n) for t, n in zip(tp, n_true)]
    f1s = [f_score(a, b) for a, b in zip(precs, recs)]
    return float(np.mean(precs)), float(np.mean(recs)), float(np.mean(f1s))


def f1(
    preds: ArrayLike,
    labels: ArrayLike,
    average: Average = "binary",
    pos_label: int | str = 1,
    classes: Sequence[int | str] | None = None,
) -> float:
    """The F1 part of `precision_recall_f1`."""
    return precision_recall_f1(preds, labels, average, pos_label, classes)[2]


def matthews_corrcoef(preds: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation (CoLA's metric), multi-class form (Gorodkin's R_K), as sklearn.

    0.0 when undefined, i.e. when either side holds a single class: a constant predictor has no
    correlation with anything, and sklearn reports 0.0 there too.
    """
    p, y = pair(preds, labels, "matthews_corrcoef")
    _, inv = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = int(inv.max()) + 1
    cm = np.zeros((k, k), dtype=np.float64)  # (gold, pred)
    np.add.at(cm, (inv[: len(y)], inv[len(y) :]), 1.0)
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    n, correct = cm.sum(), np.trace(cm)
    cov_tp = correct * n - t_sum @ p_sum
    cov_pp = n * n - p_sum @ p_sum
    cov_tt = n * n - t_sum @ t_sum
    if cov_pp * cov_tt == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson's r, as scipy.stats.pearsonr(x, y).statistic.

    nan when either input is constant (r is undefined; scipy returns nan with a warning) or holds
    a nan. Needs at least two points.
    """
    a, b = pair(x, y, "pearson", min_len=2)
    a, b = a.astype(np.float64), b.astype(np.float64)
    if np.isnan(a).any() or np.isnan(b).any() or (a == a[0]).all() or (b == b[0]).all():
        return float("nan")
    am, bm = a - a.mean(), b - b.mean()
    r = np.dot(am / np.linalg.norm(am), bm / np.linalg.norm(bm))
    return float(np.clip(r, -1.0, 1.0))


def rank_average(a: np.ndarray) -> np.ndarray:
    """1-based ranks, ties share the mean of their ranks (scipy.stats.rankdata's 'average')."""
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    new = np.r_[True, s[1:] != s[:-1]]  # (N,) first element of each run of ties
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(a)]
    group_rank = (starts + ends + 1) / 2.0  # mean of starts+1 .. ends
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = group_rank[np.cumsum(new) - 1]
    return ranks


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rho with average ranks for ties, as scipy.stats.spearmanr(x, y).statistic.

    nan when either input is constant or holds a nan, like scipy.
    """
    a, b = pair(x, y, "spearman", min_len=2)
    a, b = a.astype(np.float64), b.astype(np.float64)
    if np.isnan(a).any() or np.isnan(b).any():
        return float("nan")
    return pearson(rank_average(a), rank_average(b))


def multilabel_scores(pred: ArrayLike, gold: ArrayLike) -> dict[str, float]:
    """Multi-label scores for (N, C) 0/1 or bool indicator matrices.

    micro_f1 / macro_f1 as sklearn f1_score(average=...) (a class never predicted nor gold scores
    0.0 in the macro mean, sklearn's zero_division=0); subset_accuracy: rows predicted exactly
    (accuracy_score); hamming_loss: fraction of wrong cells.
    """
    p, g = to_numpy(pred) != 0, to_numpy(gold) != 0  # (N, C)
    if p.shape != g.shape or p.ndim != 2 or p.shape[0] == 0:
        raise DataError(
            f"multilabel_scores needs two non-empty (N, C) matrices of one shape, "
            f"got {p.shape} and {g.shape}",
            hint="pass one row per example and one 0/1 column per label, e.g. "
            "(logits > 0) for the predictions.",
        )
    tp = (p & g).sum(axis=0).astype(np.float64)  # (C,)
    n_pred, n_true = p.sum(axis=0), g.sum(axis=0)  # (C,)
    micro = safe_div(2 * tp.sum(), n_pred.sum() + n_true.sum())
    macro = float(np.mean([safe_div(2 * t, a + b) for t, a, b in zip(tp, n_pred, n_true)]))
    return {
        "micro_f1": micro,
        "macro_f1": macro,
        "subset_accuracy": float(np.mean((p == g).all(axis=1))),
        "hamming_loss": float(np.mean(p != g)),
    }
