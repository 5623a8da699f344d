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
