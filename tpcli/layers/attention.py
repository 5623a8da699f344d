"""Multi-head attention on `torch.nn.functional.scaled_dot_product_attention`.

Self-attention projects q, k and v with ONE fused Linear (3H, H): one matmul instead of three,
and the weight rows are [W_q; W_k; W_v], so a checkpoint with separate projections converts by
concatenating along dim 0. Cross-attention projects q from the queries and a fused (2H, H) kv
from the memory. Masks follow SDPA's boolean convention (True = may attend), built by
`tpcli.layers.masks.attention_mask`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """softmax(q k^T / sqrt(d)) v over `heads` heads, then an output projection. # (B, T, H)"""

    def __init__(self, hidden_size: int, heads: int, *, dropout: float = 0.0, bias: bool = True,
                 cross: bool = False) -> None:
        super().__init__()
        if hidden_size % heads != 0:
            raise ValueError(f"hidden size {hidden_size} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = hidden_size // heads
        self.dropout = dropout
        self.cross = cross
        if cross:
            self.q = nn.Linear(hidden_size, hidden_size, bias=bias)
            self.kv = nn.Linear(hidden_size, 2 * hidden_size, bias=bias)
        else:
            self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=bias)
        self.out = nn.Linear(hidden_size, hidden_size, bias=bias)

    def _split(self, x: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        """(B, T, n*H) -> n tensors (B, heads, T, head_dim), as views (no copy)."""
        b, t, _ = x.shape
        parts = x.view(b, t, n, self.heads, self.head_dim).unbind(dim=2)
        return tuple(p.transpose(1, 2) for p in parts)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """x (B, T, H); mask: an SDPA bool mask broadcastable to (B, heads, T, Tk) or None;
        memory (B, Tk, H) for cross-attention; is_causal: causal without a mask (fast path)."""
        b, t, h = x.shape
        if self.cross:
            if memory is None:
                raise ValueError("cross-attention needs memory")
            (q,) = self._split(self.q(x), 1)
            k, v = self._split(self.kv(memory), 2)
        else:
            q, k, v = self._split(self.qkv(x), 3)  # each (B, heads, T, head_dim)
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and mask is None,
        )  # (B, heads, T, head_dim)
        return self.out(y.transpose(1, 2).reshape(b, t, h))
