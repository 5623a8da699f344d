"""The metrics each GLUE task reports in the GLUE paper (Wang et al., 2019), by task name.

CoLA: Matthews correlation; MRPC and QQP: F1 of the positive class (1) and accuracy; STS-B:
Pearson and Spearman; every other task: accuracy. Keys are "accuracy", "f1", "matthews_corr",
"pearson", "spearman".
"""

from __future__ import annotations

import difflib

import numpy as np

from tpcli.errors import DataError
from tpcli.metrics._common import ArrayLike, to_numpy
from tpcli.metrics.classification import accuracy, f1, matthews_corrcoef, pearson, spearman

# Canonical name (lowercase, no '-' or '_') -> what the paper reports.
_GLUE_KIND: dict[str, str] = {
    "cola": "mcc",
    "sst2": "acc",
    "mrpc": "f1_acc",
    "qqp": "f1_acc",
    "stsb": "corr",
    "mnli": "acc",
    "mnlim": "acc",
    "mnlimm": "acc",
    "mnlimatched": "acc",
    "mnlimismatched": "acc",
    "qnli": "acc",
    "rte": "acc",
    "wnli": "acc",
    "ax": "mcc",  # the diagnostic set is scored with R3 (Matthews correlation)
}


def _canonical(task: str) -> str:
    key = task.lower().replace("-", "").replace("_", "")
    if key not in _GLUE_KIND:
        close = difflib.get_close_matches(key, list(_GLUE_KIND), n=1)
        guess = f" did you mean {close[0]!r}?" if close else ""
        raise DataError(
            f"unknown GLUE task {task!r}.{guess}",
            hint="use one of " + ", ".join(sorted(_GLUE_KIND)) + " (case, '-' and '_' are "
            "ignored, so 'SST-2' and 'mnli_mismatched' work).",
        )
    return key


def glue_metrics(task: str, preds: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """The paper's metrics for `task`.

    `preds` may be class ids (N,) or logits (N, K): logits are arg-maxed for the classification
    tasks; for STS-B a (N, 1) regression output is flattened.
    """
    kind = _GLUE_KIND[_canonical(task)]
    p = to_numpy(preds)
    if kind == "corr":
        p = p.reshape(-1).astype(np.float64)
        return {"pearson": pearson(p, labels), "spearman": spearman(p, labels)}
    if p.ndim == 2:
        p = p.argmax(axis=-1)  # (N, K) logits -> (N,) class ids
    if kind == "mcc":
        return {"matthews_corr": matthews_corrcoef(p, labels)}
    if kind == "f1_acc":
        return {"f1": f1(p, labels, average="binary", pos_label=1), "accuracy": accuracy(p, labels)}
    return {"accuracy": accuracy(p, labels)}
