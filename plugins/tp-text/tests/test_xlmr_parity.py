"""tp's XLM-RoBERTa (the roberta key map under model_type xlm-roberta) against a tiny random
`transformers` XLMRobertaForMaskedLM: logits with padding in both directions, the bit-exact
round trip, and the converter chosen by model_type."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tpcli.model import TpModel
from tpcli.plugins import get_plugins

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
from tp_text.convert_roberta import XLMR_CONVERTER as CONVERTER  # noqa: E402
from tpcli.convert.hf import choose_hf_converter  # noqa: E402
from tpcli.testing.convert import (assert_round_trip, hf_config_dict, hf_from_tp,  # noqa: E402
                                   logits_diff, perturbed, tp_model_for)

V, H = 1000, 64
HF_CONFIG = dict(vocab_size=V, hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=66, type_vocab_size=1,
                 pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
HF_CLASSES = (transformers.XLMRobertaForMaskedLM, transformers.XLMRobertaConfig)


def test_chosen_by_model_type(hf_model: Any) -> None:
    config = hf_config_dict(hf_model)
    assert config["model_type"] == "xlm-roberta"
    conv, base = choose_hf_converter(config, get_plugins())
    assert conv.name == "xlm-roberta" and not base


def test_logits_match_hf(hf_model: Any, tp_model: TpModel) -> None:
    assert logits_diff(CONVERTER, hf_model, tp_model) <= 1e-5


def test_tp_to_hf_logits_match() -> None:
    fresh = perturbed(tp_model_for(CONVERTER.config_to_recipe(
        transformers.XLMRobertaConfig(**HF_CONFIG).to_dict()), V), seed=3)
    hf = hf_from_tp(CONVERTER, fresh, transformers.XLMRobertaForMaskedLM)
    assert type(hf).__name__ == "XLMRobertaForMaskedLM"
    assert logits_diff(CONVERTER, hf, fresh) <= 1e-5


def test_keys_round_trip_bit_identical(hf_model: Any, tp_model: TpModel) -> None:
    assert_round_trip(CONVERTER, hf_model, tp_model)
