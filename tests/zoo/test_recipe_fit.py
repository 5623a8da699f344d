"""The built-in recipes fit the weights their zoo cards publish: `tp finetune bert-base --init
zoo:bert-base-uncased` and `tp generate` on `zoo:gpt2` need every body tensor of the converted
checkpoint to have the recipe's shape. The cards' config.json files are rebuilt here byte for byte
(their sha256 equals the card's: these are the published files), translated by the converters
and compared with the recipes' models, built on the meta device."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
import torch

from tpcli.api import load_recipe, load_tokenizer
from tpcli.recipes.config import build_recipe
from tpcli.model import build_model as build_from_spec
from tpcli.plugins import get_plugins
from tpcli.zoo.ops import catalog

BERT_BASE_UNCASED = {  # google-bert/bert-base-uncased config.json, key order as published
    "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1,
    "gradient_checkpointing": False, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
    "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0,
    "position_embedding_type": "absolute", "transformers_version": "4.6.0.dev0",
    "type_vocab_size": 2, "use_cache": True, "vocab_size": 30522}
GPT2 = {  # openai-community/gpt2 config.json
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768,
    "n_head": 12, "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1,
    "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
    "summary_type": "cls_index", "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257}

ROBERTA_LARGE = {  # FacebookAI/roberta-large config.json (the card is not pinned: no hash to check)
    "architectures": ["RobertaForMaskedLM"], "attention_probs_dropout_prob": 0.1,
    "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 4096,
    "layer_norm_eps": 1e-05, "max_position_embeddings": 514, "model_type": "roberta",
    "num_attention_heads": 16, "num_hidden_layers": 24, "pad_token_id": 1, "type_vocab_size": 1,
    "vocab_size": 50265}


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("card_name, config, end, recipe_name", [
    ("bert-base-uncased", BERT_BASE_UNCASED, "\n", "bert-base"),
    ("gpt2", GPT2, "", "gpt2"),  # published without a final newline
    ("roberta-large", ROBERTA_LARGE, "\n", "roberta-large"),
])
def test_recipe_fits_the_published_weights(card_name: str, config: dict[str, Any], end: str,
                                           recipe_name: str) -> None:
    plugins = get_plugins()
    card = catalog(plugins).find(card_name)
    published = (json.dumps(config, indent=2) + end).encode()
    entry = {f.path: f for f in card.files}["config.json"]
    if entry.sha256 is not None:
        assert hashlib.sha256(published).hexdigest() == entry.sha256  # the very file
    assert card.recipe == recipe_name
    conv = plugins.registry.get("converter", config["model_type"])
    recipe = load_recipe(recipe_name)
    tokenizer = load_tokenizer(recipe)
    # tp finetune takes the checkpoint's tokenizer (with_checkpoint_tokenizer): its vocabulary
    vocab = config["vocab_size"]
    translated = build_recipe({"model": conv.config_to_recipe(config),
                               "data": recipe.raw["data"], "pretrain": {}}, plugins.registry)
    with torch.device("meta"):
        ours = build_from_spec(recipe.model, plugins.registry, vocab, tokenizer.special_ids)
        theirs = build_from_spec(translated.model, plugins.registry, vocab,
                                 tokenizer.special_ids)
    assert shapes(ours) == shapes(theirs)
