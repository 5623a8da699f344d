"""Multi-head attention on `torch.nn.functional.scaled_dot_product_attention` (on CPU with
attention dropout, `tpcli.layers.dropout.attention`: SDPA has no fused CPU kernel for it).

Self-attention projects q, k and v with ONE fused Linear: one matmul instead of three, and the
weight rows are [W_q; W_k; W_v], so a checkpoint with separate projections converts by
concatenating along dim 0. With grouped-query attention (`kv_heads` < `heads`, LLaMA-2/3) the
three blocks have unequal sizes: heads * head_dim rows for q, kv_heads * head_dim each for k and
v. Cross-attention projects q from the queries and a fused [W_k; W_v] kv from the memory.

The heads' width `head_dim` is hidden_size / heads unless given: T5 v1.1-small (d_model 512, 6
heads of 64) and T5-3B/11B (1024, 32 or 128 heads of 128) attend in heads * head_dim channels
that differ from hidden_size, so q, k and v project hidden_size -> heads * head_dim (kv_heads *
head_dim for k and v) and the output projection heads * head_dim -> hidden_size.

Biases of q, k and v (`qkv_bias`): all (BERT), none (T5, ViT with qkv_bias=False) or q and v
only (BEiT). A key bias adds the same q.b_k to every score of a query, which softmax ignores, so
BEiT has none; with `qv` the fused Linear has no bias and two vectors `q_bias` and `v_bias` ride
beside it (zeros in between for k), so that no k bias exists to train or to convert.

Masks follow SDPA's conventions, built by `tpcli.layers.masks`: a boolean mask (True = may
attend), or an additive float mask when a position bias rides along (T5).

Incremental decoding (`tpcli.downstream.generate`) hands each attention an `AttentionCache`: self-attention
appends the new keys and values (after rotary) to the cached ones and attends over all of them;
cross-attention projects the memory once, on the first step, and reads it back afterwards. Without
a cache (training) the forward is the same code as before, plus one `is None` test.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tpcli.layers.dropout import attention
from tpcli.layers.positions import apply_rotary

# SDPA shares k/v heads itself from torch 2.5 (`enable_gqa`); before, k/v are repeated
_NATIVE_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)

QkvBias = Literal["all", "qv", "none"]


class AttentionCache:
    """Keys and values of one attention layer, each (B, kv_heads, Tk, head_dim), or None before
    the first step. Self-attention grows them by the new tokens; cross-attention sets them once."""

    __slots__ = ("k", "v")

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached keys/values followed by `k`/`v` (B, kv_heads, T, d); kept for next time."""
        if self.k is not None and self.v is not None:
            k, v = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)
        self.k, self.v = k, v
        return k, v

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (N,) of the batch, in that order (beam search)."""
        if self.k is not None and self.v is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class KVCache:
    """Every attention cache of one stack for incremental decoding.

    `length` counts the tokens already in the self-attention caches: the stack reads it as the
    position of its first new token and adds the new tokens after its forward. Layer i's caches
    are created on first use; a stack with shared layers (ALBERT) has one per application."""

    def __init__(self) -> None:
        self.length = 0
        self.self_attn: dict[int, AttentionCache] = {}
        self.cross_attn: dict[int, AttentionCache] = {}

    def layer(self, i: int) -> AttentionCache:
        return self.self_attn.setdefault(i, AttentionCache())

    def cross(self, i: int) -> AttentionCache:
        return self.cross_attn.setdefault(i, AttentionCache())

    def reorder(self, index: torch.Tensor, cross: bool = True) -> None:
        """Keep rows `index` (N,) of every cache, in that order (beam search); `cross=False`
        leaves the cross-attention caches (rows that share one memory)."""
        for c in (*self.self_attn.values(), *(self.cross_attn.values() if cross else ())):
            c.reorder(index)


class MultiHeadAttention(nn.Module):
    """softmax(q k^T * scale + bias) v over `heads` heads, then an output projection.

    # (B, T, H) -> (B, T, H). head_dim (default H / heads) is each head's width; the heads
    together are `inner` = heads * head_dim wide. scale is 1/sqrt(head_dim), or 1 when `scale`
    is False (T5 folds it into the weights). `kv_heads` (default `heads`) k/v heads are each
    shared by heads / kv_heads query heads. `bias` sets the output projection's bias, and those
    of q, k and v unless `qkv_bias` (all | qv | none) says otherwise.
    """

    def __init__(self, hidden_size: int, heads: int, *, dropout: float = 0.0, bias: bool = True,
                 cross: bool = False, kv_heads: int | None = None, scale: bool = True,
                 qkv_bias: QkvBias | None = None, head_dim: int | None = None) -> None:
        super().__init__()
        if head_dim is None and hidden_size % heads != 0:
            raise ValueError(f"hidden size {hidden_size} is not divisible by {heads} heads")
        if head_dim is not None and head_dim < 1:
            raise ValueError(f"head_dim must be at least 1, got {head_dim}")
        kv_heads = heads if kv_heads is None else kv_heads
        if kv_heads < 1 or heads % kv_heads != 0:
            raise ValueError(f"{heads} heads are not divisible by {kv_heads} kv heads")
        self.heads = heads
        self.kv_heads = kv_heads
        self.head_dim = hidden_size // heads if head_dim is None else head_dim
        self.inner = heads * self.head_dim  # rows of W_q, columns of W_out
        self.kv_size = kv_heads * self.head_dim  # rows of W_k (and of W_v)
        self.dropout = dropout
        self.cross = cross
        self.scale = scale
        qkv_bias = ("all" if bias else "none") if qkv_bias is None else qkv_bias
        if qkv_bias not in ("all", "qv", "none") or (cross and qkv_bias == "qv"):
            raise ValueError(f"qkv_bias {qkv_bias!r} is not one of all, none, or (self-attention "
                             "only) qv")
        fused_bias = qkv_bias == "all"
        if cross:
            self.q = nn.Linear(hidden_size, self.inner, bias=fused_bias)
            self.kv = nn.Linear(hidden_size, 2 * self.kv_size, bias=fused_bias)
        else:
            self.qkv = nn.Linear(hidden_size, self.inner + 2 * self.kv_size, bias=fused_bias)
        self.q_bias = nn.Parameter(torch.zeros(self.inner)) if qkv_bias == "qv" else None
        self.v_bias = nn.Parameter(torch.zeros(self.kv_size)) if qkv_bias == "qv" else None
        self.out = nn.Linear(self.inner, hidden_size, bias=bias)

    def _split(self, x: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        """(B, T, n*inner) -> n tensors (B, heads, T, head_dim), as views (no copy)."""
        b, t, _ = x.shape
        parts = x.view(b, t, n, self.heads, self.head_dim).unbind(dim=2)
        return tuple(p.transpose(1, 2) for p in parts)

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        """The fused projection (B, T, inner + 2 * kv_size); with q and v biases only, k's are
        zeros."""
        if self.q_bias is None or self.v_bias is None:
            return self.qkv(x)
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        return F.linear(x, self.qkv.weight, bias)

    def _heads(self, x: torch.Tensor, n_heads: int) -> torch.Tensor:
        """(B, T, n_heads*head_dim) -> (B, n_heads, T, head_dim), a view."""
        b, t, _ = x.shape
        return x.view(b, t, n_heads, self.head_dim).transpose(1, 2)

    def _project(self, x: torch.Tensor, memory: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, heads, T, d), k and v (B, kv_heads, Tk, d)."""
        if self.cross:
            if memory is None:
                raise ValueError("cross-attention needs memory")
            k, v = self.kv(memory).split(self.kv_size, dim=-1)
            return (self._heads(self.q(x), self.heads), self._heads(k, self.kv_heads),
                    self._heads(v, self.kv_heads))
        if self.kv_heads == self.heads:
            q, k, v = self._split(self._qkv(x), 3)
            return q, k, v
        q, k, v = self._qkv(x).split([self.inner, self.kv_size, self.kv_size], -1)
        return (self._heads(q, self.heads), self._heads(k, self.kv_heads),
                self._heads(v, self.kv_heads))

    def _project_at(self, x: torch.Tensor, queries: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fused projection split in two: q (B, heads, n, d) of the rows `queries` (B, n)
        alone, k and v (B, kv_heads, T, d) of every row. The other rows' q (a third of the
        projection, in forward and backward) is not computed. The weight and bias are split
        views, so their gradients are joined by one concatenation."""
        w_q, w_kv = self.qkv.weight.split([self.inner, 2 * self.kv_size])
        b_q: torch.Tensor | None = None
        b_kv: torch.Tensor | None = None
        if self.q_bias is not None and self.v_bias is not None:
            b_q, b_kv = self.q_bias, torch.cat((torch.zeros_like(self.v_bias), self.v_bias))
        elif self.qkv.bias is not None:
            b_q, b_kv = self.qkv.bias.split([self.inner, 2 * self.kv_size])
        b, _, width = x.shape
        rows = x.gather(1, queries[..., None].expand(b, queries.shape[1], width))  # (B, n, H)
        k, v = F.linear(x, w_kv, b_kv).split(self.kv_size, dim=-1)
        return (self._heads(F.linear(rows, w_q, b_q), self.heads), self._heads(k, self.kv_heads),
                self._heads(v, self.kv_heads))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        is_causal: bool = False,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: AttentionCache | None = None,
        queries: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, H); mask: an SDPA bool or additive float mask broadcastable to
        (B, heads, T, Tk), or None; memory (B, Tk, H) for cross-attention; is_causal: causal
        without a mask (fast path); rotary: cos, sin (B, 1, T, head_dim) applied to q and k;
        cache: keys/values of earlier steps (incremental decoding), updated in place;
        queries (B, n): the positions whose outputs are wanted -> (B, n, H), the others' are not
        computed (a fully visible self-attention's last layer under first-token pooling, or at
        the positions a loss reads): without rotary or a cache, q is projected at those rows
        alone (`_project_at`)."""
        b = x.shape[0]
        selected = False  # q projected at `queries` only
        if cache is not None and self.cross and cache.k is not None and cache.v is not None:
            q, k, v = self._heads(self.q(x), self.heads), cache.k, cache.v  # memory done once
        elif queries is not None and not self.cross and rotary is None and cache is None:
            q, k, v = self._project_at(x, queries)
            selected = True
        else:
            q, k, v = self._project(x, memory)  # (B, heads, T, d), (B, kv_heads, Tk, d) x2
        if rotary is not None:
            cos, sin = (c.to(q.dtype) for c in rotary)  # autocast: q may be lower than x
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None and (not self.cross or cache.k is None):
            k, v = cache.append(k, v)  # self: past + new (B, kv_heads, Tk, d); cross: stored
        if mask is not None and mask.is_floating_point() and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)  # SDPA wants an additive mask in the query's dtype
        if queries is not None and selected:
            mask = select_mask_rows(mask, queries, x.shape[1])
        elif queries is not None:
            q, mask = select_queries(q, mask, queries)
        gqa = False
        if self.kv_heads != self.heads:
            if mask is None and _NATIVE_GQA and q.dtype in (torch.float16, torch.bfloat16):
                gqa = True  # the flash kernel reads the shared k/v heads as is
            else:  # the kernels for masks or fp32 have no native GQA: repeat k/v per query head
                rep = self.heads // self.kv_heads
                k, v = (z.repeat_interleave(rep, dim=1) for z in (k, v))  # (B, heads, Tk, d)
        y = attention(q, k, v, mask=mask, dropout_p=self.dropout if self.training else 0.0,
                      is_causal=is_causal, scale=None if self.scale else 1.0,
                      enable_gqa=gqa, queries=queries)  # (B, heads, T or n, head_dim)
        return self.out(y.transpose(1, 2).reshape(b, -1, self.inner))  # (B, T or n, H)


def select_queries(q: torch.Tensor, mask: torch.Tensor | None, queries: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q (B, heads, T, d) and a mask's query rows (when it has T of them) at `queries` (B, n)."""
    b, heads, t, d = q.shape
    n = queries.shape[1]
    q = q.gather(2, queries.view(b, 1, n, 1).expand(b, heads, n, d))
    return q, select_mask_rows(mask, queries, t)


def select_mask_rows(mask: torch.Tensor | None, queries: torch.Tensor, t: int
                     ) -> torch.Tensor | None:
    """A mask's query rows at `queries` (B, n), when it has a row for each of the T queries; a
    mask that broadcasts over the queries as it is."""
    if mask is not None and mask.dim() == 4 and mask.shape[-2] == t and t > 1:
        b, n = queries.shape
        rows = mask.expand(b, -1, -1, -1)
        index = queries.view(b, 1, n, 1).expand(b, rows.shape[1], n, rows.shape[-1])
        mask = rows.gather(2, index)
    return mask
