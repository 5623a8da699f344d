"""The transformer encoder, its layers and the poolings, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from tp_encoders.pooling import FirstPooling, LastPooling, MaxPooling, MeanPooling
from tp_encoders.transformer import TransformerEncoder
from tpcli.errors import TpError
from tpcli.layers.attention import MultiHeadAttention
from tpcli.layers.masks import attention_mask
from tpcli.module import BuildContext

H = 32


def encoder(dropout: float = 0.0, **options: object) -> TransformerEncoder:
    torch.manual_seed(0)
    cfg = TransformerEncoder.Config(layers=2, heads=4, ffn_size=64, **options)
    return TransformerEncoder(cfg, BuildContext(hidden_size=H, vocab_size=100, dropout=dropout))


def right_padded(lengths: list[int], t: int) -> torch.Tensor:
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # (B, T) bool


@pytest.mark.parametrize("pre_norm", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_causal_mask_hides_the_future(pre_norm: bool, padded: bool) -> None:
    enc = encoder(mask="causal", pre_norm=pre_norm).eval()
    x = torch.randn(2, 10, H)
    mask = right_padded([10, 8], 10) if padded else None
    later = x.clone()
    later[:, 6:] = torch.randn(2, 4, H)  # change every token from position 6 on
    with torch.no_grad():
        a, b = enc(x, mask), enc(later, mask)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=1e-6)
    assert (a[:, 6:8] - b[:, 6:8]).abs().max() > 1e-3
    # the same change is seen by earlier positions when the mask is fully visible
    full = encoder(mask="fully_visible", pre_norm=pre_norm).eval()
    with torch.no_grad():
        assert (full(x, mask)[:, :6] - full(later, mask)[:, :6]).abs().max() > 1e-3


@pytest.mark.parametrize("mask_kind", ["fully_visible", "causal"])
def test_padding_does_not_change_real_positions(mask_kind: str) -> None:
    enc = encoder(mask=mask_kind).eval()
    x = torch.randn(3, 9, H)
    lengths = [9, 5, 2]
    noisy = x.clone()
    noisy[1, 5:], noisy[2, 2:] = 100.0, -7.0  # padding content must not matter
    with torch.no_grad():
        batched = enc(noisy, right_padded(lengths, 9))
        for row, n in enumerate(lengths):
            alone = enc(x[row:row + 1, :n], None)  # no padding at all
            torch.testing.assert_close(batched[row:row + 1, :n], alone, rtol=0, atol=1e-5)


def test_rows_without_visible_keys_stay_finite() -> None:
    """An all-padding row and left padding under a causal mask would be 0/0 in the softmax."""
    x = torch.randn(2, 6, H)
    mask = torch.tensor([[False] * 6, [False, False, True, True, True, True]])
    for kind in ("fully_visible", "causal"):
        y = encoder(mask=kind).eval()(x, mask)
        assert torch.isfinite(y).all()
    built = attention_mask(mask, causal=True)
    assert built is not None and built.shape == (2, 1, 6, 6)
    assert built.any(dim=-1).all()  # every query row sees at least one key
    assert built[1, 0, 3].tolist() == [False, False, True, True, False, False]


def test_attention_matches_a_hand_computation() -> None:
    """Fused qkv rows are [W_q; W_k; W_v]; cross-attention takes k, v from the memory."""
    torch.manual_seed(0)
    heads, d = 4, H // 4
    x, memory = torch.randn(2, 5, H), torch.randn(2, 7, H)
    key_mask = right_padded([7, 4], 7)

    def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, d).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, heads, Tq, Tk)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape[0], -1, H)

    attn = MultiHeadAttention(H, heads).eval()
    wq, wk, wv = attn.qkv.weight.split(H)
    bq, bk, bv = attn.qkv.bias.split(H)
    ref = attn.out(naive(x @ wq.T + bq, x @ wk.T + bk, x @ wv.T + bv, None))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-5)

    cross = MultiHeadAttention(H, heads, cross=True).eval()
    wk, wv = cross.kv.weight.split(H)
    bk, bv = cross.kv.bias.split(H)
    ref = cross.out(naive(cross.q(x), memory @ wk.T + bk, memory @ wv.T + bv, key_mask))
    got = cross(x, attention_mask(key_mask), memory=memory)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_attention_dropout_only_in_training() -> None:
    enc = encoder(attention_dropout=0.5)  # ctx dropout 0: only attention probs are dropped
    x = torch.randn(2, 6, H)
    with torch.no_grad():
        enc.eval()
        torch.testing.assert_close(enc(x), enc(x), rtol=0, atol=0)
        enc.train()
        assert (enc(x) - enc(x)).abs().max() > 1e-4


def test_heads_must_divide_hidden_size() -> None:
    cfg = TransformerEncoder.Config(layers=1, heads=5, ffn_size=64)
    with pytest.raises(TpError, match="not divisible by heads 5"):
        TransformerEncoder(cfg, BuildContext(hidden_size=H, vocab_size=100))


def test_pre_norm_has_a_final_norm_post_norm_does_not() -> None:
    assert encoder(pre_norm=True).final_norm is not None
    assert encoder(pre_norm=False).final_norm is None
    y = encoder(pre_norm=True).eval()(torch.randn(2, 4, H) * 5)
    # the final LayerNorm (weight 1, bias 0 at construction) leaves every position normalised
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 4), rtol=0, atol=1e-5)


def test_poolings_against_hand_computation() -> None:
    h = torch.tensor([
        [[1.0, -2.0], [3.0, 0.0], [5.0, -1.0], [100.0, 100.0]],
        [[-1.0, 4.0], [2.0, -6.0], [100.0, 100.0], [100.0, 100.0]],
    ])  # (B=2, T=4, H=2); the 100s are padding
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    ctx = BuildContext(hidden_size=2, vocab_size=10)
    pool = {cls.__name__: cls(cls.Config(), ctx) for cls in
            (FirstPooling, LastPooling, MeanPooling, MaxPooling)}
    expect = {
        "FirstPooling": [[1.0, -2.0], [-1.0, 4.0]],
        "LastPooling": [[5.0, -1.0], [2.0, -6.0]],
        "MeanPooling": [[3.0, -1.0], [0.5, -1.0]],
        "MaxPooling": [[5.0, 0.0], [2.0, 4.0]],
    }
    for name, want in expect.items():
        assert pool[name](h, mask).tolist() == want, name
    # without a mask every position counts
    assert pool["MeanPooling"](h, None)[1].tolist() == [50.25, 49.5]
    assert pool["LastPooling"](h, None).tolist() == [[100.0, 100.0], [100.0, 100.0]]
    # left padding: "last" is still the last real token
    left = torch.tensor([[False, True, True, True], [False, False, True, True]])
    assert pool["LastPooling"](h, left).tolist() == [[100.0, 100.0], [100.0, 100.0]]
    window = torch.tensor([[False, True, True, False], [False, True, False, False]])
    assert pool["LastPooling"](h, window).tolist() == [[5.0, -1.0], [2.0, -6.0]]
