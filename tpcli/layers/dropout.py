"""Dropout, and attention with dropout on the attention weights, fast on CPU.

On CPU, torch's dropout draws one Bernoulli sample per element (`bernoulli_`, ~8 ns an element
in bf16 on this project's machine) and SDPA with `dropout_p > 0` falls back to its unfused
"math" kernel. Here the mask comes from full-range int64 draws viewed as int16 words (one draw
makes four mask elements; the drop probability is p rounded to 1/65536), and attention with
dropout is one autograd Function that keeps what its backward needs (the softmax probabilities
and the dropped ones, in the compute dtype), uses the identity rowsum(dP * P) = rowsum(dO * O)
instead of a pass over the (T, Tk) gradient, and makes two elementwise passes over the (T, Tk)
scores in backward. On other devices both defer to torch (CUDA's dropout and its SDPA kernels
with dropout are already fused).

The random stream is torch's default generator of the device, so `torch.manual_seed` and the
training loop's saved RNG state make runs reproducible and resumable as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tpcli.layers.unpad import Rows

_LEVELS = 65536  # mask resolution: int16 words


def _levels(p: float) -> int:
    """p as a count of 1/65536 steps, the drop probability the mask really has."""
    return round(p * _LEVELS)


def drop_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device
              ) -> tuple[torch.Tensor, float]:
    """A bool mask of `shape` (True = drop) with P(True) = round(p * 65536) / 65536, and the
    scale 1 / P(keep) for the kept elements."""
    n = 1
    for s in shape:
        n *= int(s)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), 2**63 - 1)  # every bit uniform (the default range leaves the sign 0)
    levels = _levels(p)
    drop = words.view(torch.int16)[:n].view(shape) < (levels - _LEVELS // 2)
    return drop, _LEVELS / (_LEVELS - levels)


def dropout(x: torch.Tensor, p: float, training: bool = True, rows: Rows | None = None
            ) -> torch.Tensor:
    """`F.dropout(x, p, training)`, with a cheaper mask on CPU. rows: x (..., H) holds these
    N rows of a (rows.total, H) tensor (the real rows of a padded batch, `tpcli.layers.unpad`,
    or the selected positions of a last layer, `queries`): the mask is drawn for all
    rows.total and the rows' part used, so the draws are the same as computing every row."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    if rows is None:
        drop, scale = drop_mask(x.shape, p, x.device)
    else:
        drop, scale = drop_mask((rows.total, x.shape[-1]), p, x.device)
        drop = drop.index_select(0, rows.index).view(x.shape)  # (N, H) as x is shaped
    if x.dtype in (torch.float32, torch.float64):
        # one multiply each way by a tensor of (0 or scale), made in one pass from the mask: the
        # same numbers as scaling then masking (scale as the dtype rounds it), without the
        # masked copy forward and the masked fill + scale backward (fp32 BERT-base: ~2 ms a
        # dropout on this machine)
        keep = torch.where(drop, x.new_zeros(()), x.new_full((), scale))
        return x * keep
    # bf16 / fp16 scale in fp32 before rounding: a factor rounded to the dtype would not
    return (x * scale).masked_fill(drop, 0)  # autograd keeps only the bool mask


class Dropout(nn.Module):
    """`nn.Dropout` (same `p`, same state dict: none) on `dropout`."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: torch.Tensor, rows: Rows | None = None) -> torch.Tensor:
        return dropout(x, self.p, self.training, rows)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _AttentionDropout(torch.autograd.Function):
    """o = dropout(softmax(q_scale q k^T + mask)) v; the dropped weights are scaled
    through o (B, h, T, d) rather than through the (T, Tk) weights.

    Masked-out scores are set to the dtype's lowest finite value, not -inf, so no row turns NaN:
    a query that may see no key at all (a padding row) gets uniform weights instead of SDPA's
    zeros, an output nothing downstream reads."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,  # type: ignore[override]
                mask: torch.Tensor | None, causal: bool, p: float, q_scale: float = 1.0,
                queries: torch.Tensor | None = None) -> torch.Tensor:
        # q, k and v are views of the fused projection ((B, T, 3, h, d) read as (B, h, T, d)):
        # matmul copies such a view each time it reads one (k and v twice more in backward).
        # Here q is scaled into a contiguous buffer in one pass and k, v copied once, and these
        # are what the backward reads
        qs = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if q_scale != 1.0:
            torch.mul(q, q_scale, out=qs)
        else:
            qs.copy_(q)
        q, k, v = qs, k.contiguous(), v.contiguous()
        ctx.q_scale = q_scale
        s = torch.matmul(q, k.transpose(-1, -2))  # (B, h, T, Tk)
        lowest = torch.finfo(s.dtype).min
        if mask is not None:
            if mask.dtype == torch.bool:
                s.masked_fill_(~mask, lowest)
            else:
                s.add_(mask)
        if causal:  # SDPA's is_causal: query i sees keys 0..i (top-left aligned)
            t, tk = s.shape[-2:]
            s.masked_fill_(torch.ones(t, tk, dtype=torch.bool, device=s.device).triu_(1), lowest)
        prob = torch.softmax(s, dim=-1)
        del s
        if p > 0.0:
            if queries is None:
                drop, scale = drop_mask(prob.shape, p, prob.device)
            else:  # q holds the rows `queries` (B, n) of a self-attention's Tk queries: the
                # mask of all Tk rows is drawn and these rows' kept (the draws of every row)
                b, h, n, tk = prob.shape
                drop, scale = drop_mask((b, h, tk, tk), p, prob.device)
                drop = drop.gather(2, queries.view(b, 1, n, 1).expand(b, h, n, tk))
            # the dropped weights, before scaling (one pass; masked_fill would copy, then fill)
            kept = torch.where(drop, prob.new_zeros(()), prob)
            del drop
        else:  # no dropout (bf16 on CPU without it): no mask, and no random numbers drawn
            kept, scale = prob, 1.0
        o = torch.matmul(kept, v).mul_(scale)
        ctx.save_for_backward(q, k, v, prob, kept, o)
        ctx.scale = scale
        ctx.mask_shape = None
        if mask is not None and mask.is_floating_point() and ctx.needs_input_grad[3]:
            ctx.mask_shape = mask.shape
        return o

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        q, k, v, prob, kept, o = ctx.saved_tensors
        # rowsum(dP * P) over the kept weights equals rowsum(dO * O): no (T, Tk) pass for it
        rows = (grad.float() * o.float()).sum(-1, keepdim=True).to(prob.dtype)  # (B, h, T, 1)
        # grad arrives as a view ((B, T, h, d) read as (B, h, T, d)); the scaled copy is made
        # contiguous in the same pass, so neither matmul below copies it again
        g = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
        torch.mul(grad, ctx.scale, out=g)
        dv = torch.matmul(kept.transpose(-1, -2), g)
        # d scores = P * (dP - rows) with dP = keep * (g v^T): = kept * (g v^T) - P * rows
        ds = torch.matmul(g, v.transpose(-1, -2)).mul_(kept).addcmul_(prob, rows, value=-1)
        dq = torch.matmul(ds, k)
        if ctx.q_scale != 1.0:  # q was scaled inside: its gradient too
            dq.mul_(ctx.q_scale)
        dk = torch.matmul(ds.transpose(-1, -2), q)
        dmask = None
        if ctx.mask_shape is not None:  # an additive mask with a learned bias (T5)
            shape = ctx.mask_shape
            lead = ds.dim() - len(shape)
            dims = list(range(lead)) + [lead + i for i, n in enumerate(shape)
                                        if n == 1 and ds.shape[lead + i] != 1]
            dmask = ds.sum(dims, keepdim=True).view(shape) if dims else ds
        return dq, dk, dv, dmask, None, None, None, None


# bf16 attention on CPU whose score matrices (batch x heads x queries x keys) hold at most this
# many elements runs as two matmuls: SDPA's flash backward is the slower there (ViT-B/16, 197
# keys: 862 against 345 ms; S2T-small with padding masks, 300 keys: 281 against ~160 ms), and
# scores this small (64 MiB in bf16) are cheap to keep for the backward. Larger ones (long
# sequences) stay with the flash kernel, which never materialises them.
SCORES_BUDGET = 2 ** 25


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None,
              dropout_p: float, is_causal: bool, scale: float | None = None,
              enable_gqa: bool = False, queries: torch.Tensor | None = None) -> torch.Tensor:
    """`F.scaled_dot_product_attention` (same arguments and conventions); on CPU with dropout,
    with a mask that requires a gradient, or in bf16 with scores of at most SCORES_BUDGET
    elements, `_AttentionDropout`: there SDPA's CPU kernels are the slower (bf16, a ViT-B/16
    step, 197 keys: 862 ms of attention against 345 ms for the two matmuls,
    benchmarks/vit_step.py --whatif; a learned mask: SDPA's math fallback). queries (B, n): q
    holds only these rows of a self-attention's queries (`select_queries`); the CPU dropout then
    draws the mask of every row and keeps theirs, so the random stream is that of all rows."""
    cpu = q.device.type == "cpu"
    scores = q.shape[0] * q.shape[1] * q.shape[-2] * k.shape[-2]
    # a learned additive mask (BEiT's relative position bias, T5's) sends SDPA on CPU to its
    # math path, which holds the scores too and checks every row for -inf: the two matmuls
    # here are faster (BEiT-B/16, 8 images: 470 against 576 ms a step, fwd+bwd)
    learned = mask is not None and mask.requires_grad and torch.is_grad_enabled()
    if cpu and (dropout_p > 0.0 or learned
                or (q.dtype == torch.bfloat16 and scores <= SCORES_BUDGET)):
        if enable_gqa:  # one k/v head per query head
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        if mask is not None and mask.is_floating_point() and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        causal = is_causal and mask is None
        return _AttentionDropout.apply(q, k, v, mask, causal, dropout_p, scale, queries)
    extra = {"enable_gqa": True} if enable_gqa else {}
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          is_causal=is_causal and mask is None, scale=scale,
                                          **extra)
