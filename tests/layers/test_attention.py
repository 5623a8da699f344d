"""`MultiHeadAttention`'s q/k/v bias choice (`qkv_bias`: all | qv | none): the keys each makes,
the numbers against attention written out by hand, and why `qv` drops the key bias."""

from __future__ import annotations

import math

import pytest
import torch

from tpcli.layers.attention import MultiHeadAttention

H, HEADS = 16, 4


def keys(**options: object) -> set[str]:
    return set(MultiHeadAttention(H, HEADS, **options).state_dict())


def test_default_keys_are_unchanged() -> None:
    assert keys() == {"qkv.weight", "qkv.bias", "out.weight", "out.bias"}
    assert keys(bias=False) == {"qkv.weight", "out.weight"}
    assert keys(qkv_bias="all") == keys()
    assert keys(bias=False, qkv_bias="none") == keys(bias=False)


def test_qkv_bias_none_keeps_the_output_bias() -> None:  # ViT with qkv_bias=False
    assert keys(qkv_bias="none") == {"qkv.weight", "out.weight", "out.bias"}


def test_qkv_bias_qv_has_no_key_bias() -> None:  # BEiT
    assert keys(qkv_bias="qv") == {"qkv.weight", "q_bias", "v_bias", "out.weight", "out.bias"}
    m = MultiHeadAttention(H, HEADS, qkv_bias="qv", kv_heads=2)
    assert m.q_bias.shape == (H,) and m.v_bias.shape == (H // 2,)  # kv_heads * head_dim


def test_bad_choices_are_refused() -> None:
    with pytest.raises(ValueError, match="qkv_bias"):
        MultiHeadAttention(H, HEADS, qkv_bias="qk")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="self-attention"):
        MultiHeadAttention(H, HEADS, qkv_bias="qv", cross=True)


def by_hand(x: torch.Tensor, w: torch.Tensor, b: list[torch.Tensor], out: torch.nn.Linear,
            heads: int, kv_heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head from the fused weight's three blocks, q, k, v = x
    W^T + b; k/v head j serves query heads j * heads / kv_heads ... (grouped-query)."""
    bsz, t, _ = x.shape
    d = H // heads
    wq, wk, wv = w.split([H, kv_heads * d, kv_heads * d])
    q, k, v = (x @ wi.T + bi for wi, bi in zip((wq, wk, wv), b))
    q = q.view(bsz, t, heads, d).transpose(1, 2)
    k, v = (z.view(bsz, t, kv_heads, d).transpose(1, 2).repeat_interleave(heads // kv_heads, 1)
            for z in (k, v))
    y = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v  # (B, heads, T, d)
    return out(y.transpose(1, 2).reshape(bsz, t, H))


@pytest.mark.parametrize("kv_heads", [HEADS, 2])
def test_qv_biases_against_attention_by_hand(kv_heads: int) -> None:
    torch.manual_seed(0)
    m = MultiHeadAttention(H, HEADS, qkv_bias="qv", kv_heads=kv_heads).eval()
    with torch.no_grad():
        m.q_bias.normal_()
        m.v_bias.normal_()
    x = torch.randn(2, 5, H)
    zeros = torch.zeros(kv_heads * H // HEADS)
    want = by_hand(x, m.qkv.weight, [m.q_bias, zeros, m.v_bias], m.out, HEADS, kv_heads)
    torch.testing.assert_close(m(x), want, atol=1e-5, rtol=0)
    y = m(x)
    y.sum().backward()
    assert m.q_bias.grad is not None and m.v_bias.grad is not None and m.v_bias.grad.any()


def test_a_key_bias_changes_nothing_under_softmax() -> None:
    """Why `qv` is exact: q.(k + b) = q.k + q.b, the same shift for every key of a query."""
    torch.manual_seed(0)
    full = MultiHeadAttention(H, HEADS, qkv_bias="all").eval()
    with torch.no_grad():
        full.qkv.bias.normal_()
    qv = MultiHeadAttention(H, HEADS, qkv_bias="qv").eval()
    b_q, _, b_v = full.qkv.bias.detach().split(H)
    qv.load_state_dict({"qkv.weight": full.qkv.weight, "q_bias": b_q, "v_bias": b_v,
                        "out.weight": full.out.weight, "out.bias": full.out.bias})
    x = torch.randn(2, 6, H)
    torch.testing.assert_close(qv(x), full(x), atol=1e-5, rtol=0)


# head_dim: heads * head_dim channels of attention that need not be hidden_size (T5 v1.1-small:
# 6 heads of 64 for 512). Here 3 heads of 8 = 24 channels for a hidden size of 16.
HD_HEADS, HD = 3, 8


def einsum_attention(x: torch.Tensor, memory: torch.Tensor, wq: torch.Tensor,
                     wk: torch.Tensor, wv: torch.Tensor, b: list[torch.Tensor],
                     out: torch.nn.Linear, heads: int, kv_heads: int, d: int,
                     causal: bool = False,
                     rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Attention written per head with einsum: q (B, T, heads, d) from x, k and v
    (B, Tk, kv_heads, d) from memory, each k/v head serving heads / kv_heads query heads;
    rotary: cos, sin (T, d) applied to q and k as rotate-half (LLaMA)."""
    q = (x @ wq.T + b[0]).unflatten(-1, (heads, d))
    k = (memory @ wk.T + b[1]).unflatten(-1, (kv_heads, d))
    v = (memory @ wv.T + b[2]).unflatten(-1, (kv_heads, d))
    if rotary is not None:
        cos, sin = (c[:, None, :] for c in rotary)  # (T, 1, d)

        def rot(z: torch.Tensor) -> torch.Tensor:
            z1, z2 = z.chunk(2, dim=-1)
            return z * cos + torch.cat((-z2, z1), dim=-1) * sin

        q, k = rot(q), rot(k)
    k, v = (z.repeat_interleave(heads // kv_heads, dim=2) for z in (k, v))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    if causal:
        t, tk = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(t, tk, dtype=torch.bool).triu(1), -math.inf)
    y = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)  # (B, T, heads, d)
    return out(y.flatten(2))


@pytest.mark.parametrize("kv_heads", [HD_HEADS, 1])
@pytest.mark.parametrize("qkv_bias", ["all", "qv"])
def test_head_dim_self_attention_against_einsum(kv_heads: int, qkv_bias: str) -> None:
    torch.manual_seed(0)
    m = MultiHeadAttention(H, HD_HEADS, head_dim=HD, kv_heads=kv_heads,
                           qkv_bias=qkv_bias).eval()  # type: ignore[arg-type]
    kv = kv_heads * HD
    assert m.qkv.weight.shape == (HD_HEADS * HD + 2 * kv, H)
    assert m.out.weight.shape == (H, HD_HEADS * HD)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    if qkv_bias == "qv":
        assert m.q_bias.shape == (HD_HEADS * HD,) and m.v_bias.shape == (kv,)
        b = [m.q_bias, torch.zeros(kv), m.v_bias]
    else:
        b = list(m.qkv.bias.split([HD_HEADS * HD, kv, kv]))
    wq, wk, wv = m.qkv.weight.split([HD_HEADS * HD, kv, kv])
    x = torch.randn(2, 5, H)
    with torch.no_grad():
        want = einsum_attention(x, x, wq, wk, wv, b, m.out, HD_HEADS, kv_heads, HD)
        torch.testing.assert_close(m(x), want, atol=1e-5, rtol=0)
        want = einsum_attention(x, x, wq, wk, wv, b, m.out, HD_HEADS, kv_heads, HD, causal=True)
        torch.testing.assert_close(m(x, is_causal=True), want, atol=1e-5, rtol=0)


def test_head_dim_cross_attention_against_einsum() -> None:
    torch.manual_seed(0)
    m = MultiHeadAttention(H, HD_HEADS, head_dim=HD, cross=True, kv_heads=1).eval()
    assert m.q.weight.shape == (HD_HEADS * HD, H) and m.kv.weight.shape == (2 * HD, H)
    x, memory = torch.randn(2, 4, H), torch.randn(2, 7, H)
    wk, wv = m.kv.weight.split(HD)
    bk, bv = m.kv.bias.split(HD)
    with torch.no_grad():
        want = einsum_attention(x, memory, m.q.weight, wk, wv, [m.q.bias, bk, bv], m.out,
                                HD_HEADS, 1, HD)
        torch.testing.assert_close(m(x, memory=memory), want, atol=1e-5, rtol=0)


def test_head_dim_rotary_and_cache_against_einsum() -> None:
    """Rotary tables are head_dim wide; decoding token by token through a cache gives the
    full causal forward's outputs."""
    from tpcli.layers.attention import AttentionCache
    from tpcli.layers.positions import RotaryEmbedding

    torch.manual_seed(0)
    m = MultiHeadAttention(H, HD_HEADS, head_dim=HD).eval()
    x, t = torch.randn(2, 6, H), 6
    cos, sin = RotaryEmbedding(HD)(torch.arange(t)[None], x.dtype)  # (1, 1, T, HD)
    wq, wk, wv = m.qkv.weight.split(HD_HEADS * HD)
    with torch.no_grad():
        want = einsum_attention(x, x, wq, wk, wv, list(m.qkv.bias.split(HD_HEADS * HD)), m.out,
                                HD_HEADS, HD_HEADS, HD, causal=True, rotary=(cos[0, 0], sin[0, 0]))
        torch.testing.assert_close(m(x, is_causal=True, rotary=(cos, sin)), want, atol=1e-5,
                                   rtol=0)
        cache = AttentionCache()
        steps = [m(x[:, i:i + 1], rotary=(cos[..., i:i + 1, :], sin[..., i:i + 1, :]),
                   cache=cache) for i in range(t)]
        assert cache.k is not None and cache.k.shape == (2, HD_HEADS, t, HD)
        torch.testing.assert_close(torch.cat(steps, dim=1), want, atol=1e-5, rtol=0)


def test_default_head_dim_is_unchanged() -> None:
    """head_dim None is hidden_size / heads: the same keys, shapes and numbers as before."""
    default = MultiHeadAttention(H, HEADS)
    assert default.head_dim == H // HEADS and default.inner == H
    assert {k: tuple(v.shape) for k, v in default.state_dict().items()} == {
        "qkv.weight": (3 * H, H), "qkv.bias": (3 * H,), "out.weight": (H, H), "out.bias": (H,)}
    explicit = MultiHeadAttention(H, HEADS, head_dim=H // HEADS)
    explicit.load_state_dict(default.state_dict(), strict=True)
    x = torch.randn(2, 5, H)
    with torch.no_grad():
        assert torch.equal(default(x), explicit(x))
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        MultiHeadAttention(H, 3)  # without head_dim, heads must still divide hidden_size
    with pytest.raises(ValueError, match="head_dim"):
        MultiHeadAttention(H, HEADS, head_dim=0)


@pytest.mark.parametrize("kv_heads", [HD_HEADS, 1])
@pytest.mark.parametrize("qkv_bias", ["all", "qv", "none"])
def test_selected_queries_equal_the_whole_layers_rows(kv_heads: int, qkv_bias: str) -> None:
    """`queries` projects q at those rows alone: the outputs and every gradient are the whole
    layer's at those rows, and the projection's FLOPs drop by the other rows' q."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    m = MultiHeadAttention(H, HD_HEADS, head_dim=HD, kv_heads=kv_heads,
                           qkv_bias=qkv_bias).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(3, 7, H)
    mask = torch.ones(3, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 4:] = False  # a padded row
    queries = torch.tensor([[0, 3], [2, 0], [6, 5]])  # (B, n)
    grad = torch.randn(3, 2, H)

    def run(select: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, int]:
        m.zero_grad(set_to_none=True)
        xs = x.clone().requires_grad_()
        with FlopCounterMode(display=False) as flops:  # forward
            if select:
                y = m(xs, mask, queries=queries)
            else:
                y = m(xs, mask).gather(1, queries[..., None].expand(-1, -1, H))
        (y * grad).sum().backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        return y.detach(), grads, xs.grad, flops.get_total_flops()

    y, grads, dx, flops = run(True)
    ref_y, ref_grads, ref_dx, ref_flops = run(False)
    torch.testing.assert_close(y, ref_y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx, ref_dx, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)
    # the forward's matmuls (the counter has no formula for the CPU attention kernel): the
    # other 7 - 2 rows of each sequence have neither a q projection nor an output projection
    # (selecting q after projecting every row saves the second alone)
    assert ref_flops - flops == 2 * (2 * 3 * (7 - 2) * H * HD_HEADS * HD)
