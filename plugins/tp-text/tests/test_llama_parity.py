"""tp's llama-style model (RMSNorm, rotary, SwiGLU, grouped-query attention) against a tiny
random `transformers` LlamaForCausalLM: logits with padding in both directions, tied and untied
heads, the config-dependent key map's bit-exact round trip."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tpcli.errors import CheckpointError
from tpcli.model import TpModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
from tp_text.convert_llama import CONVERTER  # noqa: E402
from tpcli.testing.convert import (assert_round_trip, hf_config_dict, hf_from_tp,  # noqa: E402
                                   logits_diff, perturbed, random_hf, tp_from_hf,
                                   tp_model_for)

V, H, HEADS, KV = 1000, 64, 8, 2
HF_CONFIG = dict(vocab_size=V, hidden_size=H, num_hidden_layers=2, num_attention_heads=HEADS,
                 num_key_value_heads=KV, intermediate_size=96, rms_norm_eps=1e-6,
                 max_position_embeddings=64, rope_theta=5000.0, pad_token_id=0)
HF_CLASSES = (transformers.LlamaForCausalLM, transformers.LlamaConfig)


def test_translation(hf_model: Any) -> None:
    model = CONVERTER.config_to_recipe(hf_config_dict(hf_model))
    assert model["encoder"]["kv_heads"] == KV and model["encoder"]["rotary_base"] == 5000.0
    assert model["tie_weights"] is False


def test_logits_match_hf(hf_model: Any, tp_model: TpModel) -> None:
    qkv = tp_model.state_dict()["stack.encoder.layers.0.attn.qkv.weight"]
    assert qkv.shape == (H + 2 * KV * H // HEADS, H)  # GQA: q rows + smaller k and v
    assert logits_diff(CONVERTER, hf_model, tp_model) <= 1e-5


def test_tied_head() -> None:
    hf = random_hf(*HF_CLASSES, **HF_CONFIG, tie_word_embeddings=True)
    tp = tp_from_hf(CONVERTER, hf)
    assert "targets.lm.decoder.weight" not in tp.state_dict()
    assert logits_diff(CONVERTER, hf, tp) <= 1e-5


def test_tp_to_hf_logits_match() -> None:
    fresh = perturbed(tp_model_for(CONVERTER.config_to_recipe(
        transformers.LlamaConfig(**HF_CONFIG).to_dict()), V), seed=3)
    hf = hf_from_tp(CONVERTER, fresh, transformers.LlamaForCausalLM)
    assert logits_diff(CONVERTER, hf, fresh) <= 1e-5


def test_keys_round_trip_bit_identical(hf_model: Any, tp_model: TpModel) -> None:
    assert_round_trip(CONVERTER, hf_model, tp_model)


def test_gqa_split_needs_the_right_config(tp_model: TpModel) -> None:
    wrong = {**HF_CONFIG, "num_key_value_heads": 4}
    with pytest.raises(CheckpointError, match=r"splits it into \[64, 32, 32\]"):
        CONVERTER.tp_to_hf(tp_model.state_dict(), hf_config=wrong)
