"""Boolean attention masks for `torch.nn.functional.scaled_dot_product_attention`.

SDPA's boolean convention: True = this query may attend to this key. A query row whose keys are
all False makes the softmax divide 0 by 0 (NaN), and one NaN poisons the whole batch through the
next matmul; such rows (a sequence that is all padding, or a left-padded position under a causal
mask) are opened to every key instead. Their outputs are meaningless but finite, and every
consumer ignores them because they sit at padded positions.
"""

from __future__ import annotations

import torch


def causal_mask(t_q: int, t_k: int, device: torch.device | None = None) -> torch.Tensor:
    """(Tq, Tk) bool, True on and below the diagonal (aligned at the end when Tq < Tk)."""
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


def attention_mask(
    key_mask: torch.Tensor | None,
    causal: bool = False,
    t_q: int | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """The SDPA mask from a padding mask and a causal flag, or None when nothing is masked.

    key_mask: (B, Tk), True/1 = real token (None: no padding). t_q: query length (default Tk).
    Returns (B, 1, 1, Tk) for padding only (broadcast over heads and queries), (Tq, Tk) for causal
    only, (B, 1, Tq, Tk) for both; None when neither applies.
    """
    if not causal:
        if key_mask is None:
            return None
        mask = key_mask.bool()[:, None, None, :]  # (B, 1, 1, Tk)
    else:
        if key_mask is None:
            if t_q is None:
                raise ValueError("a causal mask without a padding mask needs t_q")
            return causal_mask(t_q, t_q, device)  # (T, T): each row keeps its diagonal
        t_k = key_mask.shape[1]
        tri = causal_mask(t_k if t_q is None else t_q, t_k, key_mask.device)
        mask = tri[None, None] & key_mask.bool()[:, None, None, :]  # (B, 1, Tq, Tk)
    # open the rows with no visible key (see the module docstring)
    return mask | ~mask.any(dim=-1, keepdim=True)


def with_bias(mask: torch.Tensor | None, bias: torch.Tensor) -> torch.Tensor:
    """An additive float mask for SDPA: `bias` (e.g. T5's relative position bias, (1, heads, Tq,
    Tk)) plus -inf where the boolean `mask` (from `attention_mask`, or None) hides a key.

    The -inf never fills a whole row: `attention_mask` has already opened the rows with no
    visible key, so every row keeps at least one finite score and the softmax stays finite.
    """
    if mask is None:
        return bias
    # contiguous: SDPA's fused GPU kernels need a mask whose last dim has stride 1
    return torch.where(mask, bias, float("-inf")).contiguous()  # (B | 1, heads, Tq, Tk)


def prefix_mask(prefix_lengths: torch.Tensor, t: int,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The prefix-LM mask (UniLM, T5's prefix LM): query i of row b sees key j when j <= i (the
    causal part) or j < prefix_lengths[b] (the prefix is fully visible), and j is a real token.

    prefix_lengths (B,), key_mask (B, T) True = real token -> (B, 1, T, T) bool."""
    pos = torch.arange(t, device=prefix_lengths.device)  # (T,)
    causal = pos[None, :] <= pos[:, None]  # (T, T)
    in_prefix = pos[None, None, :] < prefix_lengths.long()[:, None, None]  # (B, 1, T)
    mask = causal[None] | in_prefix  # (B, T, T)
    if key_mask is not None:
        mask = mask & key_mask.bool()[:, None, :]
    mask = mask[:, None]  # (B, 1, T, T)
    return mask | ~mask.any(dim=-1, keepdim=True)  # rows with no visible key: see the docstring


def block_mask(block_ids: torch.Tensor, key_mask: torch.Tensor | None = None,
               causal: bool = False) -> torch.Tensor:
    """Attention within blocks only: query i of row b sees key j when both carry the same block
    id (several sequences packed in one row: the choices of a multiple-choice question, packed
    documents), j is a real token, and j <= i when `causal`.

    block_ids (B, T), key_mask (B, T) True = real token -> (B, 1, T, T) bool."""
    mask = block_ids[:, :, None] == block_ids[:, None, :]  # (B, T, T)
    if causal:
        t = block_ids.shape[1]
        pos = torch.arange(t, device=block_ids.device)
        mask = mask & (pos[None, :] <= pos[:, None])[None]
    if key_mask is not None:
        mask = mask & key_mask.bool()[:, None, :]
    mask = mask[:, None]  # (B, 1, T, T)
    return mask | ~mask.any(dim=-1, keepdim=True)  # a row with no visible key sees all (padding)
