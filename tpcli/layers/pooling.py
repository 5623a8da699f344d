"""Padding-aware poolings as pure functions: hidden (B, T, H) and mask (B, T) -> (B, H).

`mask` is True (or 1) on real tokens; None means no padding. Padding may sit on either side
(right-padded batches, left-padded generation batches): `first` and `last` find the first and
last REAL token, not slot 0 and slot T-1. A packed sentence pair ([CLS] a [SEP] b [SEP]) is one
row whose mask covers both sentences, so every pooling spans the whole pair.

A row that is all padding pools to zeros with every kind (never NaN, -inf or the dtype's
minimum, which would blow up whatever reads the pooled vector); its gradient is zero.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

PoolingKind = Literal["first", "last", "mean", "max"]


def _rows_with_tokens(mask: torch.Tensor) -> torch.Tensor:
    return mask.any(dim=1, keepdim=True)  # (B, 1) bool


def first_pool(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The first real token's hidden state ([CLS] in BERT). # (B, T, H) -> (B, H)"""
    if mask is None:
        return hidden[:, 0]
    mask = mask.bool()
    first = mask.int().argmax(dim=1)  # (B,) argmax returns the FIRST maximal index
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    picked = hidden[rows, first]  # (B, H)
    return picked * _rows_with_tokens(mask).to(hidden.dtype)


def last_pool(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The last real token's hidden state (GPT-style). # (B, T, H) -> (B, H)"""
    if mask is None:
        return hidden[:, -1]
    mask = mask.bool()
    positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device)  # 1-based: 0 = padding
    last = (mask.long() * positions).argmax(dim=1)  # (B,) positions are unique: one maximum
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    picked = hidden[rows, last]  # (B, H)
    return picked * _rows_with_tokens(mask).to(hidden.dtype)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of the real tokens' hidden states (Sentence-BERT). # (B, T, H) -> (B, H)"""
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)  # (B, H); all padding: 0 / 1


def max_pool(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The element-wise maximum over the real tokens (InferSent). # (B, T, H) -> (B, H)"""
    if mask is None:
        return hidden.amax(dim=1)
    mask = mask.bool()
    floor = torch.finfo(hidden.dtype).min  # padding never wins a max over a real token
    pooled = hidden.masked_fill(~mask.unsqueeze(-1), floor).amax(dim=1)  # (B, H)
    # a row of all padding would pool to the floor: give it zeros (and a zero gradient) instead
    return torch.where(_rows_with_tokens(mask), pooled, torch.zeros_like(pooled))


POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "first": first_pool,
    "last": last_pool,
    "mean": mean_pool,
    "max": max_pool,
}


def default_pooling(causal: bool) -> PoolingKind:
    """The pooling that reads a whole input when a task names none. Under a causal mask (GPT)
    token t has seen tokens 0..t only: the first token has seen nothing but itself (the same
    [CLS]/<bos> vector for every input), the last real one has seen everything. A bidirectional
    encoder lets every token see every other, and BERT trains [CLS] for the job: the first."""
    return "last" if causal else "first"


def pool(kind: str, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch by name (`first`, `last`, `mean`, `max`). # (B, T, H) -> (B, H)"""
    try:
        fn = POOLINGS[kind]
    except KeyError:
        raise ValueError(f"unknown pooling {kind!r}; expected one of {sorted(POOLINGS)}") from None
    return fn(hidden, mask)
