"""tp's ALBERT (factorized embedding, one shared layer, mlm + sentence order) against a tiny
random `transformers` AlbertForPreTraining: logits with padding in both directions, the key map's
bit-exact round trip, and the built-in recipe's spelling of the same model."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from tpcli.errors import CheckpointError
from tpcli.model import TpModel
from tpcli.recipes import load_recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
from tp_text.convert_albert import CONVERTER  # noqa: E402
from tpcli.testing.convert import (assert_round_trip, hf_from_tp, logits_diff,  # noqa: E402
                                   perturbed, random_hf, tp_model_for)

V, E, H = 1000, 16, 64
HF_CONFIG = dict(vocab_size=V, embedding_size=E, hidden_size=H, num_hidden_layers=3,
                 num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
                 type_vocab_size=2, hidden_act="gelu_new", layer_norm_eps=1e-12)
HF_CLASSES = (transformers.AlbertForPreTraining, transformers.AlbertConfig)


def test_logits_match_hf(hf_model: Any, tp_model: TpModel) -> None:
    assert "stack.embedding.project.weight" in tp_model.state_dict()
    assert not any(k.startswith("stack.encoder.layers.1.") for k in tp_model.state_dict())
    assert logits_diff(CONVERTER, hf_model, tp_model) <= 1e-5


def test_tp_to_hf_logits_match(tp_model: TpModel) -> None:
    fresh = tp_model_for(CONVERTER.config_to_recipe(transformers.AlbertConfig(**HF_CONFIG)
                                                    .to_dict()), V)
    perturbed(fresh, seed=3)
    hf = hf_from_tp(CONVERTER, fresh, transformers.AlbertForPreTraining)
    assert logits_diff(CONVERTER, hf, fresh) <= 1e-5


def test_keys_round_trip_bit_identical(hf_model: Any, tp_model: TpModel) -> None:
    assert_round_trip(CONVERTER, hf_model, tp_model)


def test_builtin_recipe_is_the_translated_model() -> None:
    shrunk = load_recipe("albert-base", [f"model.hidden_size={H}", f"model.embedding_size={E}",
                                         f"model.vocab_size={V}", "model.encoder.layers=3",
                                         "model.encoder.heads=4", "model.encoder.ffn_size=128",
                                         "model.embedding.pos.max_length=64"]).model
    config = CONVERTER.recipe_to_config(shrunk, V)
    ref = transformers.AlbertConfig(**HF_CONFIG).to_dict()
    for key in ("embedding_size", "hidden_size", "num_hidden_layers", "hidden_act",
                "intermediate_size", "num_attention_heads", "type_vocab_size"):
        assert config[key] == ref[key], key


def test_several_layer_groups_are_refused() -> None:
    with pytest.raises(Exception, match="several layer groups"):
        CONVERTER.config_to_recipe({**HF_CONFIG, "num_hidden_groups": 2})
    sd = dict(random_hf(*HF_CLASSES, **HF_CONFIG).state_dict())
    sd["albert.encoder.albert_layer_groups.1.albert_layers.0.ffn.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="albert_layer_groups.1"):
        CONVERTER.hf_to_tp(sd)
