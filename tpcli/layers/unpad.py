"""Position-wise work on the real tokens of a padded batch only.

A transformer layer's feed-forward block (with its norm, dropout and residual add) treats every
position on its own, so a padded position's result never reaches a real one: attention masks
padded keys. On a padded batch (fine-tuning sentences of different lengths, utterances of
different durations) the block is run on the real rows alone, gathered into an (N, H) matrix,
and the results are put back in place; padded rows keep their input. The real rows' values are
the same as when every row is computed (up to the order of float sums inside a matmul).

    rows = real_rows(mask)           # (N,) flat indices of the True entries of mask (B, T)
    x = on_rows(x, rows, fn, residual=True)   # x + fn(x) on the real rows, x elsewhere

Only a mask on the CPU is read: on an accelerator reading it would wait for the device every
step, so `real_rows` returns None there (and under torch.compile, where the row count would be
a data-dependent shape) and every row is computed, as before.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

# below this share of padded positions the gather and scatter cost more than they save
MIN_PADDING = 1 / 64


class Rows(NamedTuple):
    """The real rows of a flattened (B T, ...) tensor: `index` (N,) of `total` = B T."""

    index: torch.Tensor
    total: int


def real_rows(mask: torch.Tensor | None) -> Rows | None:
    """mask (B, T), nonzero = real token -> its real positions (flat, row-major), or None: no
    mask, not a (B, T) mask, not on the CPU, under torch.compile, or less than MIN_PADDING of
    the positions padded."""
    if mask is None or mask.dim() != 2 or mask.device.type != "cpu":
        return None
    if torch.compiler.is_compiling():
        return None
    flat = mask.reshape(-1)
    index = flat.nonzero().squeeze(1)  # (N,)
    if flat.numel() - index.numel() < MIN_PADDING * flat.numel():
        return None
    return Rows(index, flat.numel())


Branch = Callable[[torch.Tensor, "Rows | None"], torch.Tensor]


def on_rows(x: torch.Tensor, rows: Rows | None, fn: Branch, residual: bool) -> torch.Tensor:
    """x (B, T, H) -> (B, T, H): x + fn(x) (`residual`) or fn(x), computed on x's real `rows`
    only (all rows when None); the other rows are x's own. fn(v, rows) gets the rows too, for
    its dropout to draw the mask of all B T rows and keep the real ones' (`dropout`): the random
    stream, and so every later draw, is the same as without unpadding."""
    if rows is None:
        return x + fn(x, None) if residual else fn(x, None)
    flat = x.reshape(-1, x.shape[-1])  # (B T, H)
    picked = flat.index_select(0, rows.index)  # (N, H)
    if residual:
        return flat.index_add(0, rows.index, fn(picked, rows)).view_as(x)
    return flat.index_copy(0, rows.index, fn(picked, rows)).view_as(x)
