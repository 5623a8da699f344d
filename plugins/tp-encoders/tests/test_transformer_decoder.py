"""The transformer decoder against Hugging Face `transformers` on tiny random models: BART's
post-norm decoder and T5's pre-norm decoder (relative bias, RMSNorm), padded target and source.
"""

from __future__ import annotations

import pytest
import torch

from tp_encoders.transformer_decoder import TransformerDecoder
from tpcli.testing.convert import perturbed
from tpcli.model.module import BuildContext

transformers = pytest.importorskip("transformers")

H, HEADS, FFN, LAYERS = 32, 4, 64, 2
B, T_SRC, T_TGT = 3, 11, 9


def right_padded(lengths: list[int], t: int) -> torch.Tensor:
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # (B, T) bool


def decoder(eps: float = 1e-5, **options: object) -> TransformerDecoder:
    torch.manual_seed(0)
    cfg = TransformerDecoder.Config(
        **{"layers": LAYERS, "heads": HEADS, "ffn_size": FFN, **options})
    return TransformerDecoder(
        cfg, BuildContext(hidden_size=H, vocab_size=50, dropout=0.0, norm_eps=eps)).eval()


def load_exactly(module: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    assert set(sd) == set(module.state_dict()), set(sd) ^ set(module.state_dict())
    module.load_state_dict(sd, strict=True)


def inputs(padded: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    y, memory = torch.randn(B, T_TGT, H), torch.randn(B, T_SRC, H)
    tmask = right_padded([9, 6, 3] if padded else [T_TGT] * B, T_TGT)
    mmask = right_padded([11, 4, 7] if padded else [T_SRC] * B, T_SRC)
    return y, tmask, memory, mmask


def bart_keys(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {}
    for i in range(LAYERS):
        p = f"layers.{i}."
        for w in ("weight", "bias"):
            sd |= {
                f"{p}attn.qkv.{w}": torch.cat(
                    [hf[f"{p}self_attn.{n}_proj.{w}"] for n in "qkv"]),
                f"{p}attn.out.{w}": hf[f"{p}self_attn.out_proj.{w}"],
                f"{p}attn_norm.{w}": hf[f"{p}self_attn_layer_norm.{w}"],
                f"{p}cross.q.{w}": hf[f"{p}encoder_attn.q_proj.{w}"],
                f"{p}cross.kv.{w}": torch.cat(
                    [hf[f"{p}encoder_attn.{n}_proj.{w}"] for n in "kv"]),
                f"{p}cross.out.{w}": hf[f"{p}encoder_attn.out_proj.{w}"],
                f"{p}cross_norm.{w}": hf[f"{p}encoder_attn_layer_norm.{w}"],
                f"{p}ffn.fc1.{w}": hf[f"{p}fc1.{w}"],
                f"{p}ffn.fc2.{w}": hf[f"{p}fc2.{w}"],
                f"{p}ffn_norm.{w}": hf[f"{p}final_layer_norm.{w}"],
            }
    return sd


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_bart_decoder_matches_hf(padded: bool) -> None:
    """Post-norm: y = LN(y + attn(y)); y = LN(y + cross(y, mem)); y = LN(y + ffn(y))."""
    cfg = transformers.BartConfig(
        vocab_size=50, d_model=H, decoder_layers=LAYERS, decoder_attention_heads=HEADS,
        decoder_ffn_dim=FFN, encoder_layers=1, encoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN, max_position_embeddings=32, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, activation_function="gelu", use_cache=False,
        attn_implementation="eager",
    )
    hf_dec = perturbed(transformers.models.bart.modeling_bart.BartDecoder(cfg))
    with torch.no_grad():  # positions are the embedding's job in tp: zero them in HF
        hf_dec.embed_positions.weight.zero_()
    ours = decoder()
    load_exactly(ours, bart_keys(hf_dec.state_dict()))
    y, tmask, memory, mmask = inputs(padded)
    with torch.no_grad():
        want = hf_dec(inputs_embeds=y, attention_mask=tmask.long(), encoder_hidden_states=memory,
                      encoder_attention_mask=mmask.long()).last_hidden_state
        # BART normalises its embeddings before the first layer; in tp that is EmbeddingSum's
        got = ours(hf_dec.layernorm_embedding(y), tmask, memory, mmask)
    # real positions: padded ones skip the feed-forward (tpcli.layers.unpad)
    torch.testing.assert_close(got[tmask], want[tmask], rtol=0, atol=1e-5)


@pytest.mark.parametrize("gated", [False, True], ids=["relu", "gated_gelu"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_t5_decoder_matches_hf(gated: bool, padded: bool) -> None:
    """Pre-norm with a final RMSNorm, unidirectional relative bias, unscaled attention."""
    cfg = transformers.T5Config(
        vocab_size=50, d_model=H, d_kv=H // HEADS, d_ff=FFN, num_layers=LAYERS,
        num_heads=HEADS, relative_attention_num_buckets=8, relative_attention_max_distance=6,
        dropout_rate=0.0, layer_norm_epsilon=1e-6, use_cache=False, is_decoder=True,
        feed_forward_proj="gated-gelu" if gated else "relu",
    )
    hf_stack = perturbed(transformers.models.t5.modeling_t5.T5Stack(cfg))
    ours = decoder(eps=1e-6, norm="rmsnorm", position="relative", pre_norm=True, bias=False,
                   scale_attention=False, activation="gelu_tanh" if gated else "relu",
                   ffn_gate=gated, relative_buckets=8, relative_max_distance=6)
    hf = hf_stack.state_dict()
    sd = {"relative_bias.embedding.weight":
          hf["block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
          "final_norm.weight": hf["final_layer_norm.weight"]}
    for i in range(LAYERS):
        b, p = f"block.{i}.layer.", f"layers.{i}."
        dense = b + "2.DenseReluDense."
        sd |= {
            p + "attn.qkv.weight": torch.cat(
                [hf[f"{b}0.SelfAttention.{n}.weight"] for n in "qkv"]),
            p + "attn.out.weight": hf[b + "0.SelfAttention.o.weight"],
            p + "attn_norm.weight": hf[b + "0.layer_norm.weight"],
            p + "cross.q.weight": hf[b + "1.EncDecAttention.q.weight"],
            p + "cross.kv.weight": torch.cat(
                [hf[f"{b}1.EncDecAttention.{n}.weight"] for n in "kv"]),
            p + "cross.out.weight": hf[b + "1.EncDecAttention.o.weight"],
            p + "cross_norm.weight": hf[b + "1.layer_norm.weight"],
            p + "ffn.fc1.weight": torch.cat([hf[dense + "wi_0.weight"], hf[dense + "wi_1.weight"]])
            if gated else hf[dense + "wi.weight"],
            p + "ffn.fc2.weight": hf[dense + "wo.weight"],
            p + "ffn_norm.weight": hf[b + "2.layer_norm.weight"],
        }
    load_exactly(ours, sd)
    y, tmask, memory, mmask = inputs(padded)
    with torch.no_grad():
        want = hf_stack(inputs_embeds=y, attention_mask=tmask.long(),
                        encoder_hidden_states=memory,
                        encoder_attention_mask=mmask.long()).last_hidden_state
        got = ours(y, tmask, memory, mmask)
    # real positions: padded ones skip the feed-forward (tpcli.layers.unpad)
    torch.testing.assert_close(got[tmask], want[tmask], rtol=0, atol=1e-5)


@pytest.mark.parametrize("position", ["none", "relative", "rotary"])
def test_decoder_is_causal_and_reads_only_real_memory(position: str) -> None:
    dec = decoder(position=position, pre_norm=position != "none")
    y, tmask, memory, mmask = inputs(padded=True)
    later = y.clone()
    later[:, 4:] = torch.randn(B, T_TGT - 4, H)
    noisy = memory.clone()
    noisy[~mmask] = 100.0  # source padding must not matter
    with torch.no_grad():
        a = dec(y, tmask, memory, mmask)
        torch.testing.assert_close(dec(later, tmask, memory, mmask)[:, :4], a[:, :4], rtol=0,
                                   atol=1e-6)
        torch.testing.assert_close(dec(y, tmask, noisy, mmask), a, rtol=0, atol=1e-5)
        # row 1 alone, without any padding (the unmasked fast paths), gives the same numbers
        alone = dec(y[1:2, :6], None, memory[1:2, :4], None)
        torch.testing.assert_close(a[1:2, :6], alone, rtol=0, atol=1e-5)
        assert (dec(y, tmask, memory.flip(1), mmask) - a).abs().max() > 1e-3  # memory is read


def test_decoder_state_dict_keys() -> None:
    per_layer = {"attn.qkv", "attn.out", "attn_norm", "cross.q", "cross.kv", "cross.out",
                 "cross_norm", "ffn.fc1", "ffn.fc2", "ffn_norm"}
    assert set(decoder().state_dict()) == {
        f"layers.{i}.{k}.{w}" for i in range(LAYERS) for k in per_layer
        for w in ("weight", "bias")}
    t5 = decoder(norm="rmsnorm", position="relative", pre_norm=True, bias=False).state_dict()
    assert set(t5) == {f"layers.{i}.{k}.weight" for i in range(LAYERS) for k in per_layer} | {
        "relative_bias.embedding.weight", "final_norm.weight"}
    assert t5["layers.0.cross.kv.weight"].shape == (2 * H, H)  # [W_k; W_v]
    shared = decoder(share_layers=True).state_dict()
    assert {k.split(".")[1] for k in shared} == {"0"}


@pytest.mark.parametrize("position", ["relative", "rotary"])
def test_head_size_apart_from_hidden_size_decodes_through_the_cache(position: str) -> None:
    """3 heads of 16 over 32 channels in self- and cross-attention: token by token through a
    KVCache (cross-attention's memory projected once) gives the full forward's outputs."""
    from tpcli.layers.attention import KVCache

    dec = perturbed(decoder(heads=3, head_size=16, position=position, pre_norm=True,
                            norm="rmsnorm", bias=False))
    sd = dec.state_dict()
    assert sd["layers.0.attn.qkv.weight"].shape == (3 * 48, H)
    assert sd["layers.0.cross.q.weight"].shape == (48, H)
    assert sd["layers.0.cross.kv.weight"].shape == (2 * 48, H)
    assert sd["layers.0.cross.out.weight"].shape == (H, 48)
    y, _, memory, mmask = inputs(padded=True)
    with torch.no_grad():
        full = dec(y, None, memory, mmask)
        cache = KVCache()
        steps = [dec(y[:, i:i + 1], None, memory, mmask, cache=cache) for i in range(T_TGT)]
    assert cache.cross(0).k is not None and cache.cross(0).k.shape == (B, 3, T_SRC, 16)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)
