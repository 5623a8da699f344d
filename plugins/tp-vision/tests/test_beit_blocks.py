"""tp's BEiT blocks against Hugging Face `transformers.BeitModel` / `BeitForMaskedImageModeling`.

Tiny random BEiTs (hidden 32, 2 layers, 4 heads, 32x32 images in 8x8 patches: a 4x4 grid) and
the tp modules a BEiT recipe is built from: `patch` (or `masked_patch`), a pre-norm `transformer`
encoder with `qkv_bias: qv`, `layer_scale` and `position: relative_2d` (one shared table, or one
per layer), then `first` pooling after a final norm, or `mean` pooling (`skip_first`, `norm`)
without one. HF's weights are copied into tp through `beit_key_map` (the precursor of the BEiT
converter); hidden states, pooled outputs and MIM logits must agree within 1e-5 in fp32.

The grids here are square: HF's BeitRelativePositionBias resamples its table even at the trained
size, and for a non-square grid that resampling is not the identity (its table is reshaped to
(2w-1, 2h-1) before it is resized to (2h-1, 2w-1)); tp indexes the table as BEiT's authors do.
tests/layers/test_positions.py checks the index of a non-square grid against HF's.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from tp_encoders.pooling import FirstPooling, MeanPooling
from tp_encoders.transformer import TransformerEncoder
from tp_vision.masked_patch import MaskedPatchEmbedding
from tp_vision.patch import PatchEmbedding
from tpcli.model import EmbeddingSum
from tpcli.model.module import BuildContext
from tpcli.testing.convert import copy_weights

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

H, LAYERS, HEADS, FFN, IMAGE, PATCH, VISUAL_TOKENS = 32, 2, 4, 37, 32, 8, 50
GRID = (IMAGE // PATCH, IMAGE // PATCH)
N = GRID[0] * GRID[1]  # 16 patches


def pair(hf: str, tp: str) -> dict[str, list[str]]:
    return {f"{tp}.{p}": [f"{hf}.{p}"] for p in ("weight", "bias")}


def beit_key_map(layers: int, *, shared_bias: bool, mean_pooling: bool, mask_token: bool = False,
                 prefix: str = "") -> dict[str, list[str]]:
    """tp key -> the HF keys (transformers 5 names, under `prefix`: "" for BeitModel, "beit."
    in BeitForMaskedImageModeling) concatenated along dim 0 into it, then reshaped to the tp
    tensor's shape ((1, 1, H) tokens -> (H,)). BEiT's k has no bias: tp's `qv` keeps q's and v's
    as `attn.q_bias` and `attn.v_bias`."""
    e, s, patch = f"{prefix}embeddings.", "stack.encoder.", "stack.embedding.parts."
    patch += "masked_patch" if mask_token else "patch"
    out = {f"{patch}.cls_token": [f"{e}cls_token"],
           **pair(f"{e}patch_embeddings.projection", f"{patch}.projection")}
    if mask_token:
        out[f"{patch}.mask_token"] = [f"{e}mask_token"]
    if shared_bias:
        out[f"{s}relative_bias.table"] = [f"{prefix}shared_position_bias."
                                          "relative_position_bias_table"]
    if mean_pooling:
        out.update(pair(f"{prefix}pooler.layernorm", "stack.pooling.norm"))
    else:
        out.update(pair(f"{prefix}layernorm", f"{s}final_norm"))
    for i in range(layers):
        hf, tp = f"{prefix}layers.{i}.", f"{s}layers.{i}."
        out[f"{tp}attn.qkv.weight"] = [f"{hf}attention.{p}_proj.weight" for p in "qkv"]
        out[f"{tp}attn.q_bias"] = [f"{hf}attention.q_proj.bias"]
        out[f"{tp}attn.v_bias"] = [f"{hf}attention.v_proj.bias"]
        out[f"{tp}attn_scale.weight"] = [f"{hf}lambda_1"]
        out[f"{tp}ffn_scale.weight"] = [f"{hf}lambda_2"]
        if not shared_bias:
            out[f"{tp}relative_bias.table"] = [f"{hf}relative_position_bias."
                                               "relative_position_bias_table"]
        for tp_name, hf_name in (("attn.out", "attention.o_proj"), ("attn_norm", "layernorm_before"),
                                 ("ffn.fc1", "mlp.fc1"), ("ffn.fc2", "mlp.fc2"),
                                 ("ffn_norm", "layernorm_after")):
            out.update(pair(f"{hf}{hf_name}", f"{tp}{tp_name}"))
    return out


class MimHead(nn.Module):
    """The weights of tp-vision's `mim` target (HF's `layernorm` and `lm_head`)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(H, eps=1e-12)
        self.head = nn.Linear(H, VISUAL_TOKENS)


class TpBeit(nn.Module):
    """tp's BEiT modules at their tp model paths (`stack.*`, `targets.mim.*`)."""

    def __init__(self, *, shared_bias: bool, mean_pooling: bool, mim: bool = False) -> None:
        super().__init__()
        ctx = BuildContext(hidden_size=H, vocab_size=VISUAL_TOKENS, dropout=0.0, norm_eps=1e-12)
        embedding = MaskedPatchEmbedding if mim else PatchEmbedding
        self.stack = nn.Module()
        self.stack.embedding = EmbeddingSum({embedding.name: embedding(  # no norm, as BEiT
            embedding.Config(image_size=IMAGE, patch_size=PATCH), ctx)}, nn.Identity(), 0.0)
        self.stack.encoder = TransformerEncoder(TransformerEncoder.Config(
            layers=LAYERS, heads=HEADS, ffn_size=FFN, activation="gelu", pre_norm=True,
            qkv_bias="qv", layer_scale=0.1, position="relative_2d", grid=GRID,
            share_position_bias=shared_bias, final_norm=not mean_pooling), ctx)
        self.stack.pooling = (MeanPooling(MeanPooling.Config(skip_first=True, norm=True), ctx)
                              if mean_pooling else FirstPooling(FirstPooling.Config(), ctx))
        if mim:
            self.targets = nn.ModuleDict({"mim": MimHead()})

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stack.encoder(self.stack.embedding(batch))  # (B, 1 + N, H)
        return h, self.stack.pooling(h)  # (B, 1 + N, H), (B, H)


def hf_config(*, shared_bias: bool, mean_pooling: bool, mask_token: bool = False) -> object:
    return transformers.BeitConfig(
        hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, image_size=IMAGE, patch_size=PATCH, hidden_act="gelu",
        layer_scale_init_value=0.1, use_shared_relative_position_bias=shared_bias,
        use_relative_position_bias=not shared_bias, use_mean_pooling=mean_pooling,
        use_absolute_position_embeddings=False, use_mask_token=mask_token,
        vocab_size=VISUAL_TOKENS, layer_norm_eps=1e-12)


def randomise(model: nn.Module) -> nn.Module:
    """Every tensor random (HF starts the tables, tokens, biases and norms at constants)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def pixels(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("shared_bias, mean_pooling",
                         [(True, False), (False, True)], ids=["shared_bias", "layer_bias_mean"])
def test_beit_matches_hf(shared_bias: bool, mean_pooling: bool) -> None:
    hf = randomise(transformers.BeitModel(hf_config(shared_bias=shared_bias,
                                                    mean_pooling=mean_pooling)))
    tp = TpBeit(shared_bias=shared_bias, mean_pooling=mean_pooling).eval()
    copy_weights(tp, hf, beit_key_map(LAYERS, shared_bias=shared_bias,
                                      mean_pooling=mean_pooling))
    x = pixels()
    with torch.no_grad():
        want = hf(pixel_values=x)
        hidden, pooled = tp({"pixel_values": x})
    assert hidden.shape == want.last_hidden_state.shape == (2, 1 + N, H)
    torch.testing.assert_close(hidden, want.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, want.pooler_output, atol=1e-5, rtol=0)
    assert want.last_hidden_state.std() > 0.1  # the comparison is not between near-zeros


def test_beit_mim_backbone_and_logits_match_hf() -> None:
    """BeitForMaskedImageModeling with bool_masked_pos = tp's masked_patch with mim_mask."""
    hf = randomise(transformers.BeitForMaskedImageModeling(
        hf_config(shared_bias=True, mean_pooling=False, mask_token=True)))
    tp = TpBeit(shared_bias=True, mean_pooling=False, mim=True).eval()
    key_map = beit_key_map(LAYERS, shared_bias=True, mean_pooling=False, mask_token=True,
                           prefix="beit.")
    key_map.update({**pair("layernorm", "targets.mim.norm"), **pair("lm_head", "targets.mim.head")})
    copy_weights(tp, hf, key_map)
    x = pixels()
    masked = torch.rand(2, N, generator=torch.Generator().manual_seed(2)) < 0.4  # (B, N)
    with torch.no_grad():
        want = hf.beit(pixel_values=x, bool_masked_pos=masked).last_hidden_state
        want_logits = hf(pixel_values=x, bool_masked_pos=masked).logits  # (B, N, V)
        hidden, _ = tp({"pixel_values": x, "mim_mask": masked})
        head = tp.targets["mim"]
        logits = head.head(head.norm(hidden[:, 1:]))
        unmasked, _ = tp({"pixel_values": x})
    torch.testing.assert_close(hidden, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=0)
    assert (unmasked - hidden).abs().max() > 1e-2  # the mask did change the input


def test_fresh_layer_scale_and_tables_start_as_hf() -> None:
    """Built, not copied: the layer scales start at the given value and the 2-D tables at
    zeros, as in a fresh HF BEiT."""
    hf = transformers.BeitModel(hf_config(shared_bias=False, mean_pooling=True))
    tp = TpBeit(shared_bias=False, mean_pooling=True)
    enc = tp.stack.encoder
    for i in range(LAYERS):
        torch.testing.assert_close(enc.layers[i].attn_scale.weight, hf.layers[i].lambda_1)
        torch.testing.assert_close(enc.layers[i].ffn_scale.weight, hf.layers[i].lambda_2)
        table = hf.layers[i].relative_position_bias.relative_position_bias_table
        assert enc.layers[i].relative_bias.table.shape == table.shape == ((2 * 4 - 1) ** 2 + 3,
                                                                          HEADS)
        assert not enc.layers[i].relative_bias.table.any()
    assert not any(k.endswith("index") for k in tp.state_dict())  # the index is not saved
