"""Positions inside attention: T5's relative position bias and rotary embeddings (RoPE).

Both are computed ONCE per forward by the stack and handed to every layer: the bias is the same
(1, heads, Tq, Tk) table for all layers (T5 keeps one table per stack, in its first block), and
the rotary cos/sin depend only on the positions.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucket of each relative position (key position - query position), in [0, buckets).

    Bidirectional: half of the buckets for keys before the query, half for keys after. Within a
    half, the first `n // 2` distances get one bucket each, the distances up to `max_distance`
    share log-spaced buckets, and everything farther shares the last one. Unidirectional (causal):
    keys after the query all fall into bucket 0 (they are masked anyway).
    """
    n = buckets
    offset = torch.zeros_like(relative_position)
    if bidirectional:
        n //= 2
        offset = (relative_position > 0).to(relative_position.dtype) * n
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = n // 2
    # log-spaced buckets for far keys; clamp(min=1) only avoids log(0) in the branch not taken
    far = max_exact + (
        torch.log(distance.clamp(min=1).float() / max_exact)
        / math.log(max_distance / max_exact)
        * (n - max_exact)
    ).to(relative_position.dtype)
    far = far.clamp(max=n - 1)
    return offset + torch.where(distance < max_exact, distance, far)


class RelativePositionBias(nn.Module):
    """A learned scalar per (bucket, head), added to the attention scores. # (1, heads, Tq, Tk)"""

    def __init__(self, heads: int, buckets: int = 32, max_distance: int = 128,
                 bidirectional: bool = True) -> None:
        super().__init__()
        if buckets < 4 or max_distance <= buckets // 4:
            raise ValueError(f"relative position bias needs buckets >= 4 and max_distance > "
                             f"buckets // 4 (got {buckets}, {max_distance})")
        self.buckets = buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.embedding = nn.Embedding(buckets, heads)

    def forward(self, t_q: int, t_k: int, offset: int = 0) -> torch.Tensor:
        """(1, heads, Tq, Tk): the bias of key j for query i, both counted from position 0; with
        an `offset` the queries are positions offset..offset+Tq-1 (new tokens after a cache)."""
        device = self.embedding.weight.device
        query = torch.arange(offset, offset + t_q, device=device)[:, None]  # (Tq, 1)
        key = torch.arange(t_k, device=device)[None, :]  # (1, Tk)
        bucket = relative_position_bucket(key - query, self.bidirectional, self.buckets,
                                          self.max_distance)  # (Tq, Tk)
        # contiguous: SDPA's fused GPU kernels need a mask whose last dim has stride 1
        return self.embedding(bucket).permute(2, 0, 1).unsqueeze(0).contiguous()


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary position embeddings (rotate-half convention, as HF LLaMA).

    Channel pair (i, i + d/2) of a head is rotated by angle position * base^(-2i/d). No
    parameters and no saved buffers: the frequencies are recomputed in fp32 on every call (d/2
    numbers), so casting the model to bf16 cannot round them.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"rotary embeddings need an even head size (got {head_dim})")
        self.head_dim = head_dim
        self.base = base

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, T) -> cos, sin each (B, 1, T, head_dim), broadcast over heads."""
        exponent = torch.arange(0, self.head_dim, 2, device=position_ids.device).float()
        inv_freq = 1.0 / (self.base ** (exponent / self.head_dim))  # (d/2,)
        angles = position_ids.float()[..., None] * inv_freq  # (B, T, d/2)
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, T, d)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(..., d) -> (..., d): [x1, x2] -> [-x2, x1] over the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, d) rotated by cos/sin (B, 1, T, d)."""
    return x * cos + rotate_half(x) * sin
