"""The transformer encoder, its layers and the poolings, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from tp_encoders.pooling import FirstPooling, LastPooling, MaxPooling, MeanPooling
from tp_encoders.transformer import TransformerEncoder
from tpcli.testing.convert import perturbed
from tpcli.errors import TpError
from tpcli.layers.attention import MultiHeadAttention
from tpcli.layers.masks import attention_mask
from tpcli.model.module import BuildContext

H = 32


def encoder(dropout: float = 0.0, **options: object) -> TransformerEncoder:
    torch.manual_seed(0)
    cfg = TransformerEncoder.Config(**{"layers": 2, "heads": 4, "ffn_size": 64, **options})
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


# -- T5 / LLaMA / ALBERT options, against Hugging Face `transformers` on tiny random models

def load_exactly(module: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    assert set(sd) == set(module.state_dict()), set(sd) ^ set(module.state_dict())
    module.load_state_dict(sd, strict=True)


def t5_layer_keys(hf: dict[str, torch.Tensor], i: int, gated: bool, ffn: int) -> dict:
    """One T5 block (self-attention in layer.0, feed-forward in layer.{ffn}) as tp keys."""
    a, f = f"block.{i}.layer.0.", f"block.{i}.layer.{ffn}."
    att = a + "SelfAttention."
    wi = (torch.cat([hf[f + "DenseReluDense.wi_0.weight"], hf[f + "DenseReluDense.wi_1.weight"]])
          if gated else hf[f + "DenseReluDense.wi.weight"])
    return {
        "attn.qkv.weight": torch.cat([hf[att + n + ".weight"] for n in "qkv"]),
        "attn.out.weight": hf[att + "o.weight"],
        "attn_norm.weight": hf[a + "layer_norm.weight"],
        "ffn.fc1.weight": wi,
        "ffn.fc2.weight": hf[f + "DenseReluDense.wo.weight"],
        "ffn_norm.weight": hf[f + "layer_norm.weight"],
    }


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("buckets", "max_distance"), [(32, 128), (8, 20), (16, 16)])
def test_relative_buckets_match_hf(bidirectional: bool, buckets: int, max_distance: int) -> None:
    transformers = pytest.importorskip("transformers")
    from tpcli.layers.positions import relative_position_bucket

    hf = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    grid = torch.arange(-400, 401)[:, None] + torch.tensor([0, 1000, -1000])[None]  # (801, 3)
    want = hf(grid, bidirectional=bidirectional, num_buckets=buckets, max_distance=max_distance)
    got = relative_position_bucket(grid, bidirectional, buckets, max_distance)
    assert torch.equal(got, want)
    assert got.min() == 0 and got.max() == buckets - 1  # every bucket in range, the last one used


@pytest.mark.parametrize("gated", [False, True], ids=["relu", "gated_gelu"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_t5_encoder_matches_hf(gated: bool, padded: bool) -> None:
    """norm=rmsnorm, position=relative, pre_norm, no biases, unscaled attention = a T5 stack."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.T5Config(
        vocab_size=50, d_model=H, d_kv=H // 4, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20,
        dropout_rate=0.0, layer_norm_epsilon=1e-6, use_cache=False,
        feed_forward_proj="gated-gelu" if gated else "relu", is_decoder=False,
    )
    hf_stack = perturbed(transformers.models.t5.modeling_t5.T5Stack(cfg))
    ours = TransformerEncoder(
        TransformerEncoder.Config(
            layers=2, heads=4, ffn_size=64, norm="rmsnorm", position="relative", pre_norm=True,
            bias=False, scale_attention=False, activation="gelu_tanh" if gated else "relu",
            ffn_gate=gated, relative_buckets=8, relative_max_distance=20,
        ),
        BuildContext(hidden_size=H, vocab_size=50, dropout=0.0, norm_eps=1e-6),
    ).eval()
    hf = hf_stack.state_dict()
    sd = {f"layers.{i}.{k}": v for i in range(2) for k, v in
          t5_layer_keys(hf, i, gated, ffn=1).items()}
    sd["relative_bias.embedding.weight"] = hf[
        "block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    sd["final_norm.weight"] = hf["final_layer_norm.weight"]
    load_exactly(ours, sd)
    torch.manual_seed(1)
    x = torch.randn(3, 30, H)  # 30 > max_distance: the log-spaced and the last bucket are used
    mask = right_padded([30, 17, 4] if padded else [30] * 3, 30)
    with torch.no_grad():
        want = hf_stack(inputs_embeds=x, attention_mask=mask.long()).last_hidden_state
        got = ours(x, mask)
    # real positions: padded ones skip the feed-forward (tpcli.layers.unpad)
    torch.testing.assert_close(got[mask], want[mask], rtol=0, atol=1e-5)


def llama(kv_heads: int) -> tuple[torch.nn.Module, TransformerEncoder]:
    """A tiny LlamaModel and the same weights in a causal rmsnorm/rotary/SwiGLU/GQA encoder."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=50, hidden_size=H, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=kv_heads, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        max_position_embeddings=64, attn_implementation="eager",
    )
    hf_model = perturbed(transformers.LlamaModel(cfg))
    ours = TransformerEncoder(
        TransformerEncoder.Config(
            layers=2, heads=4, kv_heads=kv_heads, ffn_size=48, norm="rmsnorm",
            position="rotary", rotary_base=500.0, pre_norm=True, bias=False, mask="causal",
            activation="silu", ffn_gate=True,
        ),
        BuildContext(hidden_size=H, vocab_size=50, dropout=0.0, norm_eps=1e-6),
    ).eval()
    hf = hf_model.state_dict()
    sd = {"final_norm.weight": hf["norm.weight"]}
    for i in range(2):
        p = f"layers.{i}."
        sd |= {
            p + "attn.qkv.weight": torch.cat(
                [hf[f"{p}self_attn.{n}_proj.weight"] for n in "qkv"]),
            p + "attn.out.weight": hf[p + "self_attn.o_proj.weight"],
            p + "attn_norm.weight": hf[p + "input_layernorm.weight"],
            p + "ffn.fc1.weight": torch.cat(
                [hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"]]),
            p + "ffn.fc2.weight": hf[p + "mlp.down_proj.weight"],
            p + "ffn_norm.weight": hf[p + "post_attention_layernorm.weight"],
        }
    load_exactly(ours, sd)
    return hf_model, ours


@pytest.mark.parametrize("kv_heads", [2, 4, 1], ids=["gqa", "mha", "mqa"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_llama_matches_hf(kv_heads: int, padded: bool) -> None:
    hf_model, ours = llama(kv_heads)
    assert ours.layers[0].attn.qkv.weight.shape == (H + 2 * kv_heads * H // 4, H)
    torch.manual_seed(1)
    x = torch.randn(3, 12, H)
    mask = right_padded([12, 9, 2] if padded else [12] * 3, 12)
    with torch.no_grad():
        want = hf_model(inputs_embeds=x, attention_mask=mask.long()).last_hidden_state
        got = ours(x, mask)
    # real positions: padded ones skip the feed-forward (tpcli.layers.unpad)
    torch.testing.assert_close(got[mask], want[mask], rtol=0, atol=1e-5)


def test_rotary_positions_restart_with_position_ids() -> None:
    """Packed documents restart their positions: rotary reads position_ids (B, T)."""
    hf_model, ours = llama(2)
    torch.manual_seed(2)
    x = torch.randn(2, 10, H)
    pos = torch.cat([torch.arange(6), torch.arange(4)])[None].repeat(2, 1)  # (B, T)
    with torch.no_grad():
        want = hf_model(inputs_embeds=x, position_ids=pos).last_hidden_state
        got = ours(x, None, position_ids=pos)
        default = ours(x, None)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(default[:, :6], got[:, :6], rtol=0, atol=1e-6)
    assert (default[:, 6:] - got[:, 6:]).abs().max() > 1e-3  # the positions are really used


def test_default_and_option_state_dict_keys() -> None:
    default = set(encoder().state_dict())
    per_layer = {"attn.qkv.weight", "attn.qkv.bias", "attn.out.weight", "attn.out.bias",
                 "attn_norm.weight", "attn_norm.bias", "ffn.fc1.weight", "ffn.fc1.bias",
                 "ffn.fc2.weight", "ffn.fc2.bias", "ffn_norm.weight", "ffn_norm.bias"}
    assert default == {f"layers.{i}.{k}" for i in range(2) for k in per_layer}
    t5 = encoder(norm="rmsnorm", position="relative", pre_norm=True, bias=False)
    sd = t5.state_dict()
    assert {k for k in sd if not k.startswith("layers.")} == {
        "relative_bias.embedding.weight", "final_norm.weight"}
    assert sd["relative_bias.embedding.weight"].shape == (32, 4)  # (buckets, heads)
    assert "layers.1.attn_norm.weight" in sd and "layers.1.attn_norm.bias" not in sd
    rotary = encoder(position="rotary", ffn_gate=True, kv_heads=2)
    sd = rotary.state_dict()
    assert set(sd) == {f"layers.{i}.{k}" for i in range(2) for k in per_layer}  # no rotary keys
    assert sd["layers.0.attn.qkv.weight"].shape == (H + 2 * 2 * 8, H)  # [q 32; k 16; v 16]
    assert sd["layers.0.ffn.fc1.weight"].shape == (2 * 64, H)  # [gate; up]


def test_gated_ffn_matches_a_hand_computation() -> None:
    from tpcli.layers.ffn import FeedForward

    torch.manual_seed(0)
    ffn = FeedForward(H, 16, "silu", gate=True)
    x = torch.randn(2, 3, H)
    gate, up = ffn.fc1.weight[:16], ffn.fc1.weight[16:]
    bg, bu = ffn.fc1.bias[:16], ffn.fc1.bias[16:]
    want = ffn.fc2(torch.nn.functional.silu(x @ gate.T + bg) * (x @ up.T + bu))
    torch.testing.assert_close(ffn(x), want, rtol=1e-6, atol=1e-6)


def test_unscaled_attention_matches_a_hand_computation() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(H, 4, bias=False, scale=False).eval()
    x = torch.randn(2, 5, H)
    q, k, v = (t.view(2, 5, 4, 8).transpose(1, 2) for t in attn.qkv(x).split(H, -1))
    y = ((q @ k.transpose(-1, -2)).softmax(-1) @ v).transpose(1, 2).reshape(2, 5, H)
    torch.testing.assert_close(attn(x), attn.out(y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["none", "relative"])
def test_share_layers_is_one_layer_applied_n_times(position: str) -> None:
    shared = encoder(share_layers=True, layers=3, position=position).eval()
    keys = set(shared.state_dict())
    assert {k.split(".")[1] for k in keys if k.startswith("layers.")} == {"0"}
    assert len(shared.layers) == 1
    plain = encoder(layers=3, position=position).eval()
    layer0 = shared.layers[0].state_dict()
    sd = {f"layers.{i}.{k}": v for i in range(3) for k, v in layer0.items()}
    sd |= {k: v for k, v in shared.state_dict().items() if not k.startswith("layers.")}
    plain.load_state_dict(sd, strict=True)
    x = torch.randn(2, 7, H)
    mask = right_padded([7, 3], 7)
    with torch.no_grad():
        torch.testing.assert_close(shared(x, mask), plain(x, mask), rtol=0, atol=1e-6)
        assert (shared(x, mask) - encoder(layers=1, position=position).eval()(x, mask)
                ).abs().max() > 1e-3  # three applications, not one


@pytest.mark.parametrize("position", ["relative", "rotary"])
def test_causal_positions_keep_the_past_and_padding_invariant(position: str) -> None:
    enc = encoder(mask="causal", pre_norm=True, norm="rmsnorm", position=position).eval()
    x = torch.randn(2, 9, H)
    later = x.clone()
    later[:, 5:] = torch.randn(2, 4, H)
    mask = right_padded([9, 6], 9)
    with torch.no_grad():
        torch.testing.assert_close(enc(x, mask)[:, :5], enc(later, mask)[:, :5], rtol=0,
                                   atol=1e-6)
        alone = enc(x[1:, :6], None)  # the unmasked is_causal-less fast path vs the masked one
        torch.testing.assert_close(enc(x, mask)[1:, :6], alone, rtol=0, atol=1e-5)


def test_bad_position_options_are_user_errors() -> None:
    ctx = BuildContext(hidden_size=H, vocab_size=100)
    with pytest.raises(TpError, match="not divisible by kv_heads 3"):
        TransformerEncoder(TransformerEncoder.Config(layers=1, heads=4, kv_heads=3), ctx)
    with pytest.raises(TpError, match="even head size"):
        TransformerEncoder(TransformerEncoder.Config(layers=1, heads=32, position="rotary"), ctx)
    with pytest.raises(TpError, match="relative_max_distance 4"):
        TransformerEncoder(TransformerEncoder.Config(
            layers=1, heads=4, position="relative", relative_max_distance=4), ctx)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gqa_native_and_repeated_paths_agree(dtype: torch.dtype) -> None:
    """Without a mask (bf16: SDPA's enable_gqa) and with an all-visible mask (k/v repeated)."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(H, 4, kv_heads=2).to(dtype).eval()
    x = torch.randn(2, 6, H, dtype=dtype)
    everything = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), attn(x, everything), rtol=0,
                                   atol=1e-6 if dtype == torch.float32 else 2e-2)
        # each pair of query heads reads one k/v head: the repeated-weights MHA is the same
        mha = MultiHeadAttention(H, 4).to(dtype).eval()
        q, k, v = attn.qkv.weight.split([H, 16, 16])
        rep = lambda w: w.view(2, 8, H).repeat_interleave(2, 0).reshape(H, H)  # noqa: E731
        mha.qkv.weight.copy_(torch.cat([q, rep(k), rep(v)]))
        qb, kb, vb = attn.qkv.bias.split([H, 16, 16])
        mha.qkv.bias.copy_(torch.cat([qb, kb.view(2, 8).repeat_interleave(2, 0).flatten(),
                                      vb.view(2, 8).repeat_interleave(2, 0).flatten()]))
        mha.out.load_state_dict(attn.out.state_dict())
        torch.testing.assert_close(mha(x), attn(x), rtol=0,
                                   atol=1e-6 if dtype == torch.float32 else 2e-2)


def test_prefix_mask_is_bidirectional_in_the_prefix_and_causal_after() -> None:
    torch.manual_seed(0)
    ctx = BuildContext(hidden_size=16, vocab_size=10, dropout=0.0)
    enc = TransformerEncoder(TransformerEncoder.Config(layers=2, heads=2, ffn_size=32,
                                                       mask="prefix"), ctx).eval()
    x = torch.randn(2, 6, 16)
    prefix = torch.tensor([3, 1])
    y = enc(x, None, prefix_lengths=prefix)
    # change token 2 (inside row 0's prefix, after row 1's): row 0 changes from position 0 on,
    # row 1 (prefix 1: causal from position 1) only from position 2 on
    x2 = x.clone()
    x2[:, 2] += 1.0
    y2 = enc(x2, None, prefix_lengths=prefix)
    assert not torch.allclose(y[0, 0], y2[0, 0])
    torch.testing.assert_close(y[1, :2], y2[1, :2], rtol=0, atol=0)
    # change token 4 (after both prefixes): positions before it never change
    x3 = x.clone()
    x3[:, 4] += 1.0
    y3 = enc(x3, None, prefix_lengths=prefix)
    torch.testing.assert_close(y[:, :4], y3[:, :4], rtol=0, atol=0)
    # a prefix of 0 is the causal encoder, a full prefix the fully visible one
    causal = TransformerEncoder(TransformerEncoder.Config(layers=2, heads=2, ffn_size=32,
                                                          mask="causal"), ctx).eval()
    causal.load_state_dict(enc.state_dict())
    torch.testing.assert_close(enc(x, None, prefix_lengths=torch.tensor([0, 0])), causal(x),
                               rtol=1e-5, atol=1e-6)
    full = TransformerEncoder(TransformerEncoder.Config(layers=2, heads=2, ffn_size=32), ctx)
    full.load_state_dict(enc.state_dict())
    torch.testing.assert_close(enc(x, None, prefix_lengths=torch.tensor([6, 6])), full.eval()(x),
                               rtol=1e-5, atol=1e-6)
    # padding is still hidden
    pad = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    x4 = x.clone()
    x4[1, 4:] = 99.0
    torch.testing.assert_close(enc(x4, pad, prefix_lengths=prefix)[1, :4],
                               enc(x, pad, prefix_lengths=prefix)[1, :4], rtol=1e-5, atol=1e-6)
    with pytest.raises(TpError, match="prefix_lengths"):
        enc(x, None)


@pytest.mark.parametrize("position", ["relative", "rotary"])
def test_head_size_apart_from_hidden_size(position: str) -> None:
    """heads * head_size != hidden_size (T5 v1.1-small, T5-3B): 3 heads of 16 over 32 channels;
    the same q/k/v and output weights as the default layout otherwise, and rotary tables of
    head_size. The causal stack keeps the past and decodes through its cache alike."""
    from tpcli.layers.attention import KVCache

    enc = perturbed(encoder(heads=3, head_size=16, mask="causal", pre_norm=True,
                            norm="rmsnorm", position=position))
    sd = enc.state_dict()
    assert sd["layers.0.attn.qkv.weight"].shape == (3 * 48, H)
    assert sd["layers.0.attn.out.weight"].shape == (H, 48)
    assert set(sd) == set(encoder(heads=4, mask="causal", pre_norm=True, norm="rmsnorm",
                                  position=position).state_dict())
    if position == "rotary":
        assert enc.rotary is not None and enc.rotary.head_dim == 16
    x = torch.randn(2, 7, H)
    with torch.no_grad():
        full = enc(x)
        cache = KVCache()
        steps = [enc(x[:, :3], cache=cache)] + [enc(x[:, i:i + 1], cache=cache)
                                                 for i in range(3, 7)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)


def test_head_size_is_validated() -> None:
    ctx = BuildContext(hidden_size=H, vocab_size=100)
    with pytest.raises(ValueError, match="head_size"):
        TransformerEncoder.Config(layers=1, heads=3, head_size=0)
    with pytest.raises(TpError, match="even head size, got 9") as err:
        TransformerEncoder(TransformerEncoder.Config(layers=1, heads=4, head_size=9,
                                                     position="rotary"), ctx)
    assert "model.encoder.head_size" in str(err.value.hint)
    with pytest.raises(TpError, match="not divisible by heads 3") as err:
        TransformerEncoder(TransformerEncoder.Config(layers=1, heads=3), ctx)
    assert "model.encoder.head_size" in str(err.value.hint)
