"""tp's CPU dropout and attention-with-dropout: the drop rate, the scaling, reproducibility, and
the attention's output and gradients against a float64 reference that applies the same mask."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tpcli.layers.attention import MultiHeadAttention
from tpcli.layers.dropout import Dropout, attention, drop_mask, dropout


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_drop_rate_is_p(p: float) -> None:
    torch.manual_seed(0)
    n = 1 << 20
    drop, scale = drop_mask((n,), p, torch.device("cpu"))
    exact = round(p * 65536) / 65536
    assert abs(exact - p) <= 1 / 131072
    sigma = math.sqrt(exact * (1 - exact) / n)
    assert abs(drop.float().mean().item() - exact) < 5 * sigma
    assert scale == pytest.approx(1 / (1 - exact))
    # consecutive draws are different masks; neighbours are independent
    again, _ = drop_mask((n,), p, torch.device("cpu"))
    assert (drop != again).any()
    both = (drop[:-1] & drop[1:]).float().mean().item()
    assert abs(both - exact * exact) < 5 * math.sqrt(exact * exact / n) + 1e-4


def test_dropout_scales_kept_and_zeroes_dropped() -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 257, requires_grad=True)
    y = dropout(x, 0.2, training=True)
    kept = y != 0
    scale = 1 / (1 - round(0.2 * 65536) / 65536)
    torch.testing.assert_close(y[kept], x.detach()[kept] * scale)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * scale)
    # the same seed gives the same mask: runs reproduce and resume
    torch.manual_seed(1)
    torch.randn(64, 257)
    assert torch.equal(dropout(x.detach(), 0.2) != 0, kept)
    assert dropout(x, 0.2, training=False) is x and dropout(x, 0.0) is x


def test_module_matches_nn_dropout_interface() -> None:
    m = Dropout(0.3)
    assert m.p == 0.3 and m.state_dict() == {} and "p=0.3" in repr(m)
    m.eval()
    x = torch.randn(4, 5)
    assert torch.equal(m(x), x)
    with pytest.raises(ValueError, match="between 0 and 1"):
        Dropout(1.5)


def _reference(q, k, v, mask, causal, scale, drop, keep_scale):  # type: ignore[no-untyped-def]
    """float64 softmax(q k^T * scale + mask) with `drop` zeroed and kept weights scaled, @ v."""
    s = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask
    if causal:
        t, tk = s.shape[-2:]
        s = s.masked_fill(torch.ones(t, tk, dtype=torch.bool).triu(1), -math.inf)
    w = torch.softmax(s, dim=-1).masked_fill(drop, 0) * keep_scale
    return w @ v


CASES = {
    "padding": dict(t=7, tk=7, mask="bool", causal=False),
    "causal": dict(t=7, tk=7, mask=None, causal=True),
    "learned-bias": dict(t=6, tk=6, mask="bias", causal=False),
    "cross": dict(t=3, tk=9, mask="bool", causal=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_attention_with_dropout_equals_reference(case: str) -> None:
    c = CASES[case]
    b, h, d, p = 2, 3, 8, 0.3
    g = torch.Generator().manual_seed(7)
    q = torch.randn(b, h, c["t"], d, generator=g)
    k = torch.randn(b, h, c["tk"], d, generator=g)
    v = torch.randn(b, h, c["tk"], d, generator=g)
    up = torch.randn(b, h, c["t"], d, generator=g)  # the incoming gradient
    mask = None
    if c["mask"] == "bool":  # key padding: the last two keys of the second row
        mask = torch.ones(b, 1, 1, c["tk"], dtype=torch.bool)
        mask[1, ..., -2:] = False
    elif c["mask"] == "bias":  # a learned (1, h, T, Tk) bias, as T5's, broadcast over the batch
        mask = torch.randn(1, h, c["t"], c["tk"], generator=g)
    leaves = [z.clone().requires_grad_() for z in (q, k, v)]
    mleaf = mask.clone().requires_grad_() if c["mask"] == "bias" else mask
    torch.manual_seed(11)
    out = attention(*leaves, mask=mleaf, dropout_p=p, is_causal=c["causal"])
    out.backward(up)
    torch.manual_seed(11)  # the same draw the attention made
    drop, keep_scale = drop_mask((b, h, c["t"], c["tk"]), p, torch.device("cpu"))
    assert drop.any() and (~drop).any()
    ref_leaves = [z.double().requires_grad_() for z in (q, k, v)]
    ref_mask = mask.double().requires_grad_() if c["mask"] == "bias" else mask
    ref = _reference(*ref_leaves, ref_mask, c["causal"], d ** -0.5, drop, keep_scale)
    ref.backward(up.double())
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad.double(), want.grad, atol=1e-5, rtol=1e-5)
    if c["mask"] == "bias":
        assert mleaf.grad.shape == mask.shape
        torch.testing.assert_close(mleaf.grad.double(), ref_mask.grad, atol=1e-5, rtol=1e-5)


def test_without_dropout_it_is_sdpa_and_bf16_stays_close() -> None:
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=g) for _ in range(3))
    same = attention(q, k, v, mask=None, dropout_p=0.0, is_causal=True)
    torch.testing.assert_close(same, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    # bf16 through the dropout path, against the fp32 path with the same mask
    torch.manual_seed(4)
    lo = attention(*(z.bfloat16() for z in (q, k, v)), mask=None, dropout_p=0.1, is_causal=True)
    torch.manual_seed(4)
    hi = attention(q, k, v, mask=None, dropout_p=0.1, is_causal=True)
    assert lo.dtype == torch.bfloat16
    assert (lo.float() - hi).abs().max() < 0.05


def test_bf16_without_dropout_over_few_keys_takes_two_matmuls_and_matches_sdpa() -> None:
    """bf16 on CPU with small score matrices (SCORES_BUDGET): the matmul path (faster there than SDPA's
    flash backward), with SDPA's outputs and gradients to bf16 precision, a boolean padding mask
    included; no random numbers drawn. Larger score matrices stay with SDPA."""
    from tpcli.layers import dropout as module

    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 4, 20, 8, generator=g).bfloat16() for _ in range(3))
    mask = torch.ones(2, 1, 1, 20, dtype=torch.bool)
    mask[1, ..., 15:] = False

    def run(fn):
        leaves = [z.clone().requires_grad_() for z in (q, k, v)]
        out = fn(*leaves)
        out.float().mul(torch.linspace(-1, 1, 8)).sum().backward()
        return [out, *(z.grad for z in leaves)]

    rng = torch.get_rng_state()
    ours = run(lambda a, b, c: attention(a, b, c, mask=mask, dropout_p=0.0, is_causal=False))
    assert torch.equal(torch.get_rng_state(), rng)
    ref = run(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=mask))
    for mine, theirs in zip(ours, ref):
        assert mine.dtype == torch.bfloat16
        torch.testing.assert_close(mine.float(), theirs.float(), atol=3e-2, rtol=3e-2)
    calls = []
    real = module._AttentionDropout.apply
    module._AttentionDropout.apply = lambda *a: calls.append(1) or real(*a)  # type: ignore
    try:
        attention(q, k, v, mask=None, dropout_p=0.0, is_causal=False)
        module.SCORES_BUDGET, budget = 2 * 4 * 20 * 20 - 1, module.SCORES_BUDGET
        try:
            attention(q, k, v, mask=None, dropout_p=0.0, is_causal=False)  # one over: SDPA
        finally:
            module.SCORES_BUDGET = budget
    finally:
        module._AttentionDropout.apply = real  # type: ignore
    assert calls == [1]  # the short one only


def test_a_learned_additive_mask_takes_two_matmuls_with_sdpas_gradients() -> None:
    """fp32 on CPU with a mask that requires a gradient (BEiT's relative position bias,
    broadcast over the batch): the matmul path, not SDPA's math fallback, with SDPA's outputs
    and gradients, the bias's summed over the batch; a mask without a gradient, or no autograd,
    stays with SDPA."""
    from tpcli.layers import dropout as module

    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(3, 4, 11, 8, generator=g) for _ in range(3))
    bias = torch.randn(1, 4, 11, 11, generator=g)

    def run(fn):
        leaves = [z.clone().requires_grad_() for z in (q, k, v, bias)]
        out = fn(*leaves)
        out.mul(torch.linspace(-1, 1, 8)).sum().backward()
        return [out, *(z.grad for z in leaves)]

    calls = []
    real = module._AttentionDropout.apply
    module._AttentionDropout.apply = lambda *a: calls.append(1) or real(*a)  # type: ignore
    try:
        ours = run(lambda a, b, c, m: attention(a, b, c, mask=m, dropout_p=0.0, is_causal=False))
        assert calls == [1]
        attention(q, k, v, mask=bias, dropout_p=0.0, is_causal=False)  # no gradient: SDPA
        with torch.no_grad():
            attention(q, k, v, mask=bias.clone().requires_grad_(), dropout_p=0.0,
                      is_causal=False)
        assert calls == [1]
    finally:
        module._AttentionDropout.apply = real  # type: ignore
    ref = run(lambda a, b, c, m: F.scaled_dot_product_attention(a, b, c, attn_mask=m))
    assert ours[4].shape == (1, 4, 11, 11)
    for mine, theirs in zip(ours, ref):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_multi_head_attention_gqa_trains_through_the_cpu_path() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, kv_heads=2, dropout=0.2).train()
    x = torch.randn(2, 6, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the native-GQA branch of SDPA
        y = attn(x, is_causal=True)
    y.float().sum().backward()
    assert y.shape == (2, 6, 32) and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in attn.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dropout_is_bitwise_scale_then_mask(dtype: torch.dtype) -> None:
    """fp32 / fp64 multiply by a (0 or scale) tensor: exactly the numbers of scaling then
    masking, forward and backward (bf16 keeps that formula itself)."""
    torch.manual_seed(3)
    x = torch.randn(16, 300, dtype=dtype, requires_grad=True)
    up = torch.randn(16, 300, dtype=dtype)
    torch.manual_seed(4)
    y = dropout(x, 0.1)
    y.backward(up)
    torch.manual_seed(4)
    drop, scale = drop_mask(x.shape, 0.1, x.device)
    ref_x = x.detach().clone().requires_grad_()
    ref = (ref_x * scale).masked_fill(drop, 0)
    ref.backward(up)
    assert drop.any() and torch.equal(y, ref) and torch.equal(x.grad, ref_x.grad)


@pytest.mark.parametrize("scale", [None, 1.0])
def test_attention_reads_views_of_a_fused_projection(scale: float | None) -> None:
    """q, k, v as the transformer hands them over (views of one (B, T, 3, h, d) projection),
    with the default scale and with none (T5): output and the fused gradient as the float64
    reference's."""
    b, t, h, d, p = 2, 6, 3, 8, 0.2
    g = torch.Generator().manual_seed(9)
    fused = torch.randn(b, t, 3, h, d, generator=g, requires_grad=True)
    up = torch.randn(b, h, t, d, generator=g)
    q, k, v = (z.transpose(1, 2) for z in fused.unbind(dim=2))
    assert not q.is_contiguous()
    torch.manual_seed(12)
    out = attention(q, k, v, mask=None, dropout_p=p, is_causal=False, scale=scale)
    out.backward(up)
    torch.manual_seed(12)
    drop, keep_scale = drop_mask((b, h, t, t), p, torch.device("cpu"))
    ref_fused = fused.detach().double().requires_grad_()
    rq, rk, rv = (z.transpose(1, 2) for z in ref_fused.unbind(dim=2))
    ref = _reference(rq, rk, rv, None, False, d ** -0.5 if scale is None else scale, drop,
                     keep_scale)
    ref.backward(up.double())
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.grad.double(), ref_fused.grad, atol=1e-5, rtol=1e-5)
