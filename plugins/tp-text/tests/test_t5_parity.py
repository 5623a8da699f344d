"""tp's T5 (relative position buckets, RMS norms, no biases, shared vocabulary, tied head with
rescale) against a tiny random `transformers` T5ForConditionalGeneration: decoder logits with
padding on both sides in both directions, the gated (v1.1) feed-forward, and the key map's
bit-exact round trip."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from tpcli.model import TpModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
from tp_text.convert_t5 import CONVERTER  # noqa: E402
from tpcli.testing.convert import (assert_round_trip, hf_config_dict, hf_from_tp,  # noqa: E402
                                   logits_diff, perturbed, random_hf, tp_from_hf,
                                   tp_model_for)

V, H = 1000, 64
HF_CONFIG = dict(vocab_size=V, d_model=H, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                 num_heads=4, relative_attention_num_buckets=8,
                 relative_attention_max_distance=20, feed_forward_proj="relu",
                 layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1,
                 decoder_start_token_id=0)
HF_CLASSES = (transformers.T5ForConditionalGeneration, transformers.T5Config)


def test_keys(tp_model: TpModel) -> None:
    keys = set(tp_model.state_dict())
    assert {"stack.encoder.relative_bias.embedding.weight",
            "decoder.relative_bias.embedding.weight"} <= keys
    assert not any(k.startswith("tgt_embedding.parts.word") for k in keys)
    assert tp_model.spec.targets[0].options.rescale_hidden


def test_logits_match_hf(hf_model: Any, tp_model: TpModel) -> None:
    assert logits_diff(CONVERTER, hf_model, tp_model) <= 1e-5


def test_gated_ffn() -> None:
    hf = random_hf(*HF_CLASSES, **{**HF_CONFIG, "feed_forward_proj": "gated-gelu"})
    tp = tp_from_hf(CONVERTER, hf)
    assert tp.state_dict()["stack.encoder.layers.0.ffn.fc1.weight"].shape == (2 * 128, H)
    assert logits_diff(CONVERTER, hf, tp) <= 1e-5
    assert CONVERTER.recipe_to_config(tp.spec, V)["feed_forward_proj"] == "gated-gelu"


def test_untied_head_v1_1() -> None:
    """T5 v1.1: its own lm_head and no rescale (transformers >= 5 marks it with
    scale_decoder_outputs: false; tp -> HF -> tp keeps the two tables apart)."""
    hf = random_hf(*HF_CLASSES, **{**HF_CONFIG, "tie_word_embeddings": False,
                                   "feed_forward_proj": "gated-gelu"})
    config = hf_config_dict(hf)
    with torch.no_grad():
        # its own table, at the scale of the tied head (v1.1 does not rescale the output)
        head = hf.shared.weight.detach() * H ** -0.5 + 0.01
        hf.lm_head.weight = torch.nn.Parameter(head.clone())
    tp = tp_from_hf(CONVERTER, hf)
    assert "targets.lm.decoder.weight" in tp.state_dict()
    assert not tp.spec.targets[0].options.rescale_hidden
    assert logits_diff(CONVERTER, hf, tp) <= 1e-5
    back = CONVERTER.tp_to_hf(tp.state_dict(), hf_config=config)
    assert torch.equal(back["lm_head.weight"], hf.lm_head.weight)
    assert not torch.equal(back["lm_head.weight"], back["shared.weight"])


def test_tp_to_hf_logits_match() -> None:
    fresh = perturbed(tp_model_for(CONVERTER.config_to_recipe(
        transformers.T5Config(**HF_CONFIG).to_dict()), V), seed=3)
    hf = hf_from_tp(CONVERTER, fresh, transformers.T5ForConditionalGeneration)
    assert logits_diff(CONVERTER, hf, fresh) <= 1e-5


def test_keys_round_trip_bit_identical(hf_model: Any, tp_model: TpModel) -> None:
    assert_round_trip(CONVERTER, hf_model, tp_model)
    config = hf_config_dict(hf_model)
    back = CONVERTER.tp_to_hf(tp_model.state_dict(), hf_config=config)
    # the relative tables go back to block 0 only
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in back
    assert "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in back


# T5 v1.1-small and T5-3B/11B: heads * d_kv != d_model (here 3 heads of 16 over 32 channels)
D_KV_CONFIG = {**HF_CONFIG, "d_model": 32, "num_heads": 3, "d_kv": 16}


@pytest.mark.parametrize("v1_1", [False, True])
def test_d_kv_apart_from_d_model(v1_1: bool) -> None:
    """d_kv becomes each stack's head_size; logits match HF, the key map round-trips bit for
    bit, and `--to hf` writes d_kv back (and an HF model built from it matches too)."""
    options = {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False} if v1_1 else {}
    hf = random_hf(*HF_CLASSES, **{**D_KV_CONFIG, **options})
    recipe = CONVERTER.config_to_recipe(hf_config_dict(hf))
    assert recipe["encoder"]["head_size"] == recipe["decoder"]["head_size"] == 16
    tp = tp_from_hf(CONVERTER, hf)
    assert tp.state_dict()["stack.encoder.layers.0.attn.out.weight"].shape == (32, 48)
    # float32 rounding: 5e-6 on an AVX-512 Xeon, 1.2e-5 on an AVX2 EPYC (its kernels sum in
    # another order), the same with every layer's rows computed
    assert logits_diff(CONVERTER, hf, tp) <= 2e-5
    assert_round_trip(CONVERTER, hf, tp)
    config = CONVERTER.recipe_to_config(tp.spec, V)
    assert (config["d_kv"], config["num_heads"], config["d_model"]) == (16, 3, 32)
    back = hf_from_tp(CONVERTER, tp, transformers.T5ForConditionalGeneration)
    assert logits_diff(CONVERTER, back, tp) <= 2e-5


def test_d_kv_of_d_model_over_heads_writes_no_head_size() -> None:
    """A plain T5 (d_kv = d_model / num_heads) keeps its recipe as before: no head_size."""
    recipe = CONVERTER.config_to_recipe(transformers.T5Config(**HF_CONFIG).to_dict())
    assert "head_size" not in recipe["encoder"] and "head_size" not in recipe["decoder"]
