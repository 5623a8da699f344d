"""tp's ViT blocks against Hugging Face `transformers.ViTModel`, block by block.

A tiny random ViT (hidden 32, 2 layers, 4 heads, 32x48 images in 8x8 patches) and the tp modules
a ViT recipe is built from (`embedding: [patch, pos]`, a pre-norm `transformer` encoder, `first`
pooling, the `cls` target's tanh pooler), under the names they have in a tp model. HF's weights
are copied into tp through `vit_key_map`, the precursor of the ViT converter; the last hidden
states and the pooled output must agree within 1e-5 in fp32, in eval mode.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from tp_encoders.pooling import FirstPooling
from tp_encoders.transformer import TransformerEncoder
from tp_text.pos import PosEmbedding
from tp_vision.patch import PatchEmbedding
from tpcli.model import EmbeddingSum
from tpcli.model.module import BuildContext
from tpcli.testing.convert import copy_weights

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

H, LAYERS, HEADS, FFN, IMAGE, PATCH = 32, 2, 4, 37, (32, 48), 8
N = (IMAGE[0] // PATCH) * (IMAGE[1] // PATCH)  # 24 patches


def vit_key_map(layers: int, qkv_bias: bool = True) -> dict[str, list[str]]:
    """tp key -> the HF `ViTModel` keys (transformers 5 names) concatenated along dim 0 into it,
    then reshaped to the tp tensor's shape (cls_token (1, 1, H) -> (H,), the position table
    (1, 1 + N, H) -> (1 + N, H)). HF's separate q, k, v go into tp's fused `attn.qkv`."""
    e, s = "stack.embedding.parts.", "stack.encoder."
    out = {
        f"{e}patch.cls_token": ["embeddings.cls_token"],
        f"{e}patch.projection.weight": ["embeddings.patch_embeddings.projection.weight"],
        f"{e}patch.projection.bias": ["embeddings.patch_embeddings.projection.bias"],
        f"{e}pos.embedding.weight": ["embeddings.position_embeddings"],
        f"{s}final_norm.weight": ["layernorm.weight"],
        f"{s}final_norm.bias": ["layernorm.bias"],
        "targets.cls.pooler.weight": ["pooler.dense.weight"],
        "targets.cls.pooler.bias": ["pooler.dense.bias"],
    }
    for i in range(layers):
        hf, tp = f"layers.{i}.", f"{s}layers.{i}."
        out[f"{tp}attn.qkv.weight"] = [f"{hf}attention.{p}_proj.weight" for p in "qkv"]
        if qkv_bias:
            out[f"{tp}attn.qkv.bias"] = [f"{hf}attention.{p}_proj.bias" for p in "qkv"]
        for tp_name, hf_name in (("attn.out", "attention.o_proj"), ("attn_norm", "layernorm_before"),
                                 ("ffn.fc1", "mlp.fc1"), ("ffn.fc2", "mlp.fc2"),
                                 ("ffn_norm", "layernorm_after")):
            for p in ("weight", "bias"):
                out[f"{tp}{tp_name}.{p}"] = [f"{hf}{hf_name}.{p}"]
    return out


class ClsPooler(nn.Module):
    """The part of tp-text's `cls` target (pooler=true) that HF's ViTPooler is."""

    def __init__(self) -> None:
        super().__init__()
        self.pooler = nn.Linear(H, H)


class TpVit(nn.Module):
    """tp's ViT modules at their tp model paths (`stack.*`, `targets.cls.*`)."""

    def __init__(self, qkv_bias: bool) -> None:
        super().__init__()
        ctx = BuildContext(hidden_size=H, vocab_size=1, dropout=0.0, norm_eps=1e-12)
        self.stack = nn.Module()
        self.stack.embedding = EmbeddingSum({  # embedding_norm: none, as ViT has none
            "patch": PatchEmbedding(PatchEmbedding.Config(image_size=IMAGE, patch_size=PATCH),
                                    ctx),
            "pos": PosEmbedding(PosEmbedding.Config(max_length=1 + N), ctx),
        }, nn.Identity(), dropout=0.0)
        self.stack.encoder = TransformerEncoder(TransformerEncoder.Config(
            layers=LAYERS, heads=HEADS, ffn_size=FFN, activation="gelu", pre_norm=True,
            qkv_bias=None if qkv_bias else "none"), ctx)
        self.stack.pooling = FirstPooling(FirstPooling.Config(), ctx)
        self.targets = nn.ModuleDict({"cls": ClsPooler()})

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stack.embedding({"pixel_values": pixels})  # (B, 1 + N, H), pos sized by patch
        h = self.stack.encoder(x)  # (B, 1 + N, H)
        pooled = torch.tanh(self.targets["cls"].pooler(self.stack.pooling(h)))  # (B, H)
        return h, pooled


def random_hf_vit(qkv_bias: bool) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, image_size=list(IMAGE), patch_size=PATCH, qkv_bias=qkv_bias,
        hidden_act="gelu", layer_norm_eps=1e-12)
    model = transformers.ViTModel(config).eval()
    with torch.no_grad():  # every tensor random (HF starts biases and norms at 0 and 1)
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize("qkv_bias", [True, False], ids=["qkv_bias", "no_qkv_bias"])
def test_vit_matches_hf(qkv_bias: bool) -> None:
    hf = random_hf_vit(qkv_bias)
    tp = TpVit(qkv_bias).eval()
    copy_weights(tp, hf, vit_key_map(LAYERS, qkv_bias))
    pixels = torch.randn(2, 3, *IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(pixel_values=pixels)
        hidden, pooled = tp(pixels)
    assert hidden.shape == want.last_hidden_state.shape == (2, 1 + N, H)
    torch.testing.assert_close(hidden, want.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, want.pooler_output, atol=1e-5, rtol=0)
    assert want.last_hidden_state.std() > 0.1  # the comparison is not between near-zeros


def test_no_qkv_bias_keeps_the_output_and_ffn_biases() -> None:
    keys = set(TpVit(qkv_bias=False).state_dict())
    layer = "stack.encoder.layers.0."
    assert f"{layer}attn.qkv.bias" not in keys
    assert {f"{layer}attn.out.bias", f"{layer}ffn.fc1.bias", f"{layer}ffn.fc2.bias"} <= keys


def test_a_wrong_weight_is_seen() -> None:
    """The comparison can fail: swapping q and k in one layer moves the output."""
    hf = random_hf_vit(True)
    tp = TpVit(True).eval()
    key_map = vit_key_map(LAYERS)
    q, k, v = key_map["stack.encoder.layers.1.attn.qkv.weight"]
    key_map["stack.encoder.layers.1.attn.qkv.weight"] = [k, q, v]
    copy_weights(tp, hf, key_map)
    pixels = torch.randn(1, 3, *IMAGE)
    with torch.no_grad():
        diff = (tp(pixels)[0] - hf(pixel_values=pixels).last_hidden_state).abs().max()
    assert diff > 1e-3  # a hundred times the tolerance
