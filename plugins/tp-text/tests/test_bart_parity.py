"""tp's BART (seq2seq transformer, shared vocabulary table, lm with bias) against a tiny random
`transformers` BartForConditionalGeneration: decoder logits with padding on both sides in both
directions, and the key map's bit-exact round trip (final_logits_bias (1, V) <-> (V,))."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tpcli.model import TpModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
from tp_text.convert_bart import CONVERTER  # noqa: E402
from tpcli.testing.convert import (assert_round_trip, hf_from_tp, logits_diff,  # noqa: E402
                                   perturbed, tp_model_for)

V, H = 1000, 64
HF_CONFIG = dict(vocab_size=V, d_model=H, encoder_layers=2, decoder_layers=2,
                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                 decoder_ffn_dim=128, max_position_embeddings=64, pad_token_id=1,
                 bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, dropout=0.1,
                 attention_dropout=0.0, activation_dropout=0.0)
HF_CLASSES = (transformers.BartForConditionalGeneration, transformers.BartConfig)


def test_one_vocabulary_table(tp_model: TpModel) -> None:
    keys = set(tp_model.state_dict())
    assert "stack.embedding.parts.word.embedding.weight" in keys
    assert not any(k.startswith("tgt_embedding.parts.word") for k in keys)
    assert tp_model.state_dict()["targets.lm.bias"].shape == (V,)


def test_logits_match_hf(hf_model: Any, tp_model: TpModel) -> None:
    assert hf_model.final_logits_bias.abs().sum() > 0  # perturbed: the bias is really compared
    assert logits_diff(CONVERTER, hf_model, tp_model) <= 1e-5


def test_tp_to_hf_logits_match() -> None:
    fresh = perturbed(tp_model_for(CONVERTER.config_to_recipe(
        transformers.BartConfig(**HF_CONFIG).to_dict()), V), seed=3)
    hf = hf_from_tp(CONVERTER, fresh, transformers.BartForConditionalGeneration)
    assert logits_diff(CONVERTER, hf, fresh) <= 1e-5


def test_keys_round_trip_bit_identical(hf_model: Any, tp_model: TpModel) -> None:
    assert_round_trip(CONVERTER, hf_model, tp_model)
    back = CONVERTER.tp_to_hf(tp_model.state_dict())
    assert back["final_logits_bias"].shape == (1, V)
