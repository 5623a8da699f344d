"""The encoder options ViT and BEiT need: qkv_bias, layer_scale, position relative_2d (grid,
share_position_bias), final_norm; and mean pooling's skip_first and norm. Defaults change
nothing; each option against an equivalent computation it must reproduce."""

from __future__ import annotations

import pytest
import torch

from tp_encoders.pooling import MeanPooling
from tp_encoders.transformer import TransformerEncoder
from tpcli.errors import TpError
from tpcli.layers.pooling import mean_pool
from tpcli.model.module import BuildContext

H, GRID = 32, (2, 3)  # 6 patches, 7 positions with the class token
CTX = BuildContext(hidden_size=H, vocab_size=1, dropout=0.0)


def encoder(**options: object) -> TransformerEncoder:
    torch.manual_seed(0)
    cfg = TransformerEncoder.Config(**{"layers": 2, "heads": 4, "ffn_size": 64, **options})
    return TransformerEncoder(cfg, CTX).eval()


def beit(**options: object) -> TransformerEncoder:
    return encoder(**{"pre_norm": True, "position": "relative_2d", "grid": GRID, **options})


def layer_keys(enc: TransformerEncoder) -> set[str]:
    return {k.removeprefix("layers.0.") for k in enc.state_dict() if k.startswith("layers.0.")}


def random_tables(enc: TransformerEncoder) -> None:
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("relative_bias.table"):
                p.normal_()


BERT_LAYER = {f"{m}.{p}" for m in ("attn.qkv", "attn.out", "attn_norm", "ffn.fc1", "ffn.fc2",
                                   "ffn_norm") for p in ("weight", "bias")}


def test_new_options_default_to_todays_encoder() -> None:
    cfg = TransformerEncoder.Config()
    assert (cfg.qkv_bias, cfg.layer_scale, cfg.final_norm, cfg.grid) == (None, None, None, None)
    assert cfg.position == "none" and cfg.share_position_bias is False
    assert layer_keys(encoder()) == BERT_LAYER
    assert "final_norm.weight" not in encoder().state_dict()
    assert "final_norm.weight" in encoder(pre_norm=True).state_dict()
    assert layer_keys(encoder(bias=False)) == {"attn.qkv.weight", "attn.out.weight",
                                               "attn_norm.weight", "attn_norm.bias",
                                               "ffn.fc1.weight", "ffn.fc2.weight",
                                               "ffn_norm.weight", "ffn_norm.bias"}


def test_qkv_bias_choices_reach_every_layer() -> None:
    assert layer_keys(encoder(qkv_bias="none")) == BERT_LAYER - {"attn.qkv.bias"}
    qv = encoder(qkv_bias="qv")
    assert layer_keys(qv) == BERT_LAYER - {"attn.qkv.bias"} | {"attn.q_bias", "attn.v_bias"}
    assert not any("k_bias" in k for k in qv.state_dict())
    assert layer_keys(encoder(bias=False, qkv_bias="all")) >= {"attn.qkv.bias"}


@pytest.mark.parametrize("pre_norm", [True, False])
def test_layer_scale_of_one_is_no_layer_scale(pre_norm: bool) -> None:
    plain = encoder(pre_norm=pre_norm)
    scaled = encoder(pre_norm=pre_norm, layer_scale=1.0)
    assert layer_keys(scaled) == BERT_LAYER | {"attn_scale.weight", "ffn_scale.weight"}
    scaled.load_state_dict({**scaled.state_dict(), **plain.state_dict()})
    x = torch.randn(2, 5, H)
    torch.testing.assert_close(scaled(x), plain(x), atol=1e-6, rtol=0)


def test_layer_scale_starts_at_its_value_and_scales_each_branch() -> None:
    enc = encoder(pre_norm=True, final_norm=False, layer_scale=1e-6)
    for layer in enc.layers:
        assert torch.equal(layer.attn_scale.weight, torch.full((H,), 1e-6))
    x = torch.randn(2, 5, H)
    # both branches start near zero: the stack starts near the identity (why BEiT-large trains)
    assert (enc(x) - x).abs().max() < 1e-4
    assert (encoder(pre_norm=True, final_norm=False)(x) - x).abs().max() > 0.1


def test_layer_scale_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TransformerEncoder.Config(layer_scale=0.0)


def test_final_norm_overrides_pre_norm() -> None:
    x = torch.randn(2, 5, H)
    off = encoder(pre_norm=True, final_norm=False)
    assert "final_norm.weight" not in off.state_dict()
    on = encoder(pre_norm=True)
    on_out = on.final_norm(off(x))  # the same weights (same seed), then the norm
    torch.testing.assert_close(on(x), on_out, atol=1e-6, rtol=0)
    assert "final_norm.weight" in encoder(final_norm=True).state_dict()  # post-norm + a norm


def test_relative_2d_shared_keeps_one_table_per_stack() -> None:
    enc = beit(share_position_bias=True)
    tables = [k for k in enc.state_dict() if k.endswith("table")]
    assert tables == ["relative_bias.table"]
    assert enc.relative_bias.table.shape == ((2 * 2 - 1) * (2 * 3 - 1) + 3, 4)
    per_layer = [k for k in beit().state_dict() if k.endswith("table")]
    assert per_layer == ["layers.0.relative_bias.table", "layers.1.relative_bias.table"]
    assert [k for k in beit(share_layers=True).state_dict() if k.endswith("table")] == [
        "layers.0.relative_bias.table"]


@pytest.mark.parametrize("share", [True, False])
def test_zero_tables_are_no_position_bias(share: bool) -> None:
    plain, enc = encoder(pre_norm=True), beit(share_position_bias=share)
    enc.load_state_dict({**enc.state_dict(), **plain.state_dict()})
    x = torch.randn(2, 7, H)
    torch.testing.assert_close(enc(x), plain(x), atol=1e-6, rtol=0)
    random_tables(enc)
    assert (enc(x) - plain(x)).abs().max() > 1e-3


def test_a_shared_table_is_every_layer_having_that_table() -> None:
    shared, per_layer = beit(share_position_bias=True), beit()
    random_tables(shared)
    table = shared.relative_bias.table.detach()
    state = {k: v for k, v in shared.state_dict().items() if k != "relative_bias.table"}
    per_layer.load_state_dict({**state, "layers.0.relative_bias.table": table,
                               "layers.1.relative_bias.table": table})
    x = torch.randn(2, 7, H)
    torch.testing.assert_close(per_layer(x), shared(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(per_layer(x[:, 1:]), shared(x[:, 1:]), atol=1e-6, rtol=0)


def test_relative_2d_user_errors() -> None:
    with pytest.raises(TpError) as e:
        beit(grid=None)
    assert "needs the patch grid" in str(e.value) and "model.encoder.grid" in e.value.hint
    with pytest.raises(TpError, match="fully visible"):
        beit(mask="causal")
    with pytest.raises(TpError) as e:
        beit()(torch.randn(2, 9, H))
    assert "2x3 grid expects 7 positions (class token + 6 patches) or 6, got 9" in str(e.value)
    with pytest.raises(TpError, match=r"grid \[0, 3\] has a side below 1"):
        beit(grid=(0, 3))


def test_a_padded_key_gets_no_weight_beside_the_bias() -> None:
    enc = beit(share_position_bias=True)
    random_tables(enc)
    x = torch.randn(1, 7, H)
    mask = torch.ones(1, 7, dtype=torch.bool)
    mask[0, 6] = False
    changed = x.clone()
    changed[0, 6] = 50.0
    torch.testing.assert_close(enc(x, mask)[:, :6], enc(changed, mask)[:, :6], atol=1e-5,
                               rtol=0)


def mean(**options: bool) -> MeanPooling:
    return MeanPooling(MeanPooling.Config(**options), CTX)


def test_mean_pooling_defaults_are_mean_pool() -> None:
    h, mask = torch.randn(3, 5, H), torch.tensor([[1, 1, 1, 0, 0], [1] * 5, [0] * 5]).bool()
    assert list(mean().state_dict()) == []
    assert torch.equal(mean()(h, mask), mean_pool(h, mask))
    assert torch.equal(mean()(h), mean_pool(h))


def test_mean_pooling_skip_first_and_norm() -> None:
    h, mask = torch.randn(2, 5, H), torch.tensor([[1, 1, 1, 0, 0], [1] * 5]).bool()
    skip = mean(skip_first=True)
    torch.testing.assert_close(skip(h), h[:, 1:].mean(1))
    torch.testing.assert_close(skip(h, mask)[0], h[0, 1:3].mean(0))
    normed = mean(skip_first=True, norm=True)
    assert set(normed.state_dict()) == {"norm.weight", "norm.bias"}
    with torch.no_grad():
        normed.norm.weight.normal_()
        normed.norm.bias.normal_()
    want = torch.nn.functional.layer_norm(h[:, 1:].mean(1), (H,), normed.norm.weight,
                                          normed.norm.bias, eps=CTX.norm_eps)
    torch.testing.assert_close(normed(h), want)
