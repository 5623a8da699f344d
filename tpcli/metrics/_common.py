"""Input checks shared by every metric: turn what a fine-tuning loop holds into numpy, and say
clearly when the two sides of a comparison do not line up (a silent broadcast would score the
wrong thing)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tpcli.errors import DataError

# A list, a numpy array or a torch tensor (any device): what an evaluation loop happens to hold.
ArrayLike = Any


def to_numpy(x: ArrayLike) -> np.ndarray:
    """Accept lists, numpy arrays and torch tensors (any device, with or without grad).

    Duck-typed on `.detach()` so this module never imports torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def pair(
    preds: ArrayLike, labels: ArrayLike, name: str, min_len: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as 1-D arrays of the same non-empty length."""
    p, y = to_numpy(preds).reshape(-1), to_numpy(labels).reshape(-1)
    check_lengths(len(p), len(y), name)
    if len(p) < min_len:
        raise DataError(
            f"{name} needs at least {min_len} example(s), got {len(p)}",
            hint="the evaluation set is empty or too small; check the dev/test file and its "
            "path in the recipe's finetune section.",
        )
    return p, y


def check_lengths(n_pred: int, n_gold: int, name: str) -> None:
    """Predictions and references must pair up one to one."""
    if n_pred != n_gold:
        raise DataError(
            f"{name}: {n_pred} predictions but {n_gold} references",
            hint="predictions and references must be in the same order and of the same length; "
            "a dropped last batch or a shuffled loader is the usual cause.",
        )


def safe_div(num: float, den: float) -> float:
    """num / den, or 0.0 when den is 0 (sklearn's zero_division=0)."""
    return float(num) / float(den) if den else 0.0


def f_score(p: float, r: float) -> float:
    """Harmonic mean, 0.0 when both are 0."""
    return 2.0 * p * r / (p + r) if p + r else 0.0
