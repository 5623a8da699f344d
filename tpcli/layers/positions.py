"""Positions inside attention: T5's relative position bias, BEiT's 2-D relative position bias
over a patch grid, and rotary embeddings (RoPE).

All are computed ONCE per forward by the stack and handed to every layer: the bias is the same
(1, heads, Tq, Tk) table for all layers (T5 keeps one table per stack, in its first block), and
the rotary cos/sin depend only on the positions. BEiT may instead give each layer its own 2-D
table, which that layer computes.
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


def relative_position_index_2d(grid: tuple[int, int]) -> torch.Tensor:
    """BEiT's table row for each (query, key) pair of [class token; h*w patches], row-major.

    # (1 + N, 1 + N) int64, N = h * w. Two patches at (r1, c1) (query) and (r2, c2) (key) read
    row (r1 - r2 + h - 1) * (2w - 1) + (c1 - c2 + w - 1) of a (2h - 1)(2w - 1) grid of offsets;
    the three rows after it are class token -> patch, patch -> class token, class -> class.
    """
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)  # (N,) patch i sits at (rows[i], cols[i])
    d_row = rows[:, None] - rows[None, :] + (h - 1)  # (N, N) in [0, 2h - 2]
    d_col = cols[:, None] - cols[None, :] + (w - 1)  # (N, N) in [0, 2w - 2]
    offsets = (2 * h - 1) * (2 * w - 1)
    index = torch.empty(h * w + 1, h * w + 1, dtype=torch.long)
    index[1:, 1:] = d_row * (2 * w - 1) + d_col
    index[0, :] = offsets  # the class token's query row
    index[:, 0] = offsets + 1  # every patch's key column for the class token
    index[0, 0] = offsets + 2
    return index


class RelativePositionBias2D(nn.Module):
    """BEiT's learned bias per (2-D offset between two patches, head), added to the scores.

    # () -> (1, heads, T, T), T = 1 + h*w (class token first) or h*w (no class token). The
    table starts at zeros (every offset alike, as HF and BEiT do); the index is rebuilt from the
    grid, never saved (`persistent=False`): it is a function of the grid alone.
    """

    def __init__(self, heads: int, grid: tuple[int, int]) -> None:
        super().__init__()
        h, w = grid
        if h < 1 or w < 1:
            raise ValueError(f"a 2-D position bias needs a grid of at least 1x1, got {grid}")
        self.grid = (h, w)
        self.table = nn.Parameter(torch.zeros((2 * h - 1) * (2 * w - 1) + 3, heads))
        self.register_buffer("index", relative_position_index_2d(self.grid), persistent=False)

    def reset_parameters_tp(self) -> None:
        """Zeros, and the index again (a module built on the meta device has none yet)."""
        with torch.no_grad():
            self.table.zero_()
            self.index.copy_(relative_position_index_2d(self.grid))

    def forward(self, t_q: int, t_k: int, offset: int = 0) -> torch.Tensor:
        """The bias of key j for query i (the signature of `RelativePositionBias`; queries and
        keys are the same T positions here, with or without the class token)."""
        n = self.index.shape[0]
        if offset != 0 or t_q != t_k or t_q not in (n, n - 1):
            raise ValueError(f"a 2-D position bias over a {self.grid[0]}x{self.grid[1]} grid "
                             f"covers {n} or {n - 1} positions, got {t_q} queries, {t_k} keys "
                             f"(offset {offset})")
        index = self.index if t_q == n else self.index[1:, 1:]  # (T, T)
        # contiguous: SDPA's fused GPU kernels need a mask whose last dim has stride 1
        return self.table[index].permute(2, 0, 1).unsqueeze(0).contiguous()
