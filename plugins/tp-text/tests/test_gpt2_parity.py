"""tp's GPT-2 (the `gpt2` recipe, shrunk) against Hugging Face `transformers`: logits and the LM
loss of a tiny random GPT2LMHeadModel, padded and not, and the key map in both directions.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from tpcli.recipes.config import build_recipe
from tpcli.errors import CheckpointError
from tpcli.model import TpModel
from tpcli.plugins import get_plugins
from tpcli.recipes import load_recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
from tp_text.convert_gpt2 import CONVERTER  # noqa: E402
from tp_text.lm import next_token_labels  # noqa: E402
from tpcli.testing.convert import assert_round_trip  # noqa: E402

V, H, LAYERS, HEADS, FFN, POS = 1000, 64, 2, 4, 128, 64
HF_CONFIG = dict(vocab_size=V, n_embd=H, n_layer=LAYERS, n_head=HEADS, n_inner=FFN,
                 n_positions=POS, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                 bos_token_id=0, eos_token_id=0)
HF_CLASSES = (transformers.GPT2LMHeadModel, transformers.GPT2Config)
# the built-in recipe, shrunk: everything else (pre-norm, causal, gelu_tanh, no embedding norm,
# eps 1e-5, tied lm) is what the recipe says
OVERRIDES = [f"model.hidden_size={H}", f"model.vocab_size={V}", f"model.encoder.layers={LAYERS}",
             f"model.encoder.heads={HEADS}", f"model.encoder.ffn_size={FFN}",
             f"model.embedding.pos.max_length={POS}"]
B, T = 4, 16
LENGTHS = (16, 11, 7, 3)


def recipe_model() -> Any:
    return load_recipe("gpt2", OVERRIDES).model


def inputs(padded: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if padded:
        for row, n in enumerate(LENGTHS):
            mask[row, n:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


def test_recipe_matches_config_translation() -> None:
    """The shrunk built-in recipe and the one translated from HF's config are the same model."""
    translated = CONVERTER.config_to_recipe(transformers.GPT2Config(**HF_CONFIG).to_dict())
    recipe = load_recipe("gpt2", OVERRIDES)
    ours = recipe.model
    theirs = build_recipe({**recipe.raw, "model": translated}, get_plugins().registry).model
    assert ours == theirs
    assert CONVERTER.recipe_to_config(ours, V)["activation_function"] == "gelu_new"


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_logits_match_hf(hf_model: Any, tp_model: TpModel, padded: bool) -> None:
    batch = inputs(padded)
    with torch.no_grad():
        ref = hf_model(**batch).logits
    ours = tp_model.predict(batch)["lm"]
    real = batch["attention_mask"].bool()
    assert ours.shape == ref.shape == (B, T, V)
    assert (ours - ref)[real].abs().max() <= 1e-5


def test_loss_matches_hf_labels_input_ids(hf_model: Any, tp_model: TpModel) -> None:
    """No lm_labels: tp shifts input_ids itself, as HF does with labels=input_ids."""
    batch = inputs(False)
    with torch.no_grad():
        ref = hf_model(**batch, labels=batch["input_ids"]).loss
        out = tp_model(batch)
    assert abs(out.loss.item() - ref.item()) <= 1e-5
    assert out.metrics["lm.count"].item() == B * (T - 1)


def test_padded_loss_ignores_padding(hf_model: Any, tp_model: TpModel) -> None:
    """Padded: only real next tokens are predicted (HF told so by -100 labels at padding)."""
    batch = inputs(True)
    hf_labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        ref = hf_model(**batch, labels=hf_labels).loss
        out = tp_model(batch)
        explicit = tp_model({**batch, "lm_labels": next_token_labels(batch["input_ids"],
                                                                      batch["attention_mask"])})
    assert abs(out.loss.item() - ref.item()) <= 1e-5
    assert out.metrics["lm.count"].item() == sum(n - 1 for n in LENGTHS)
    assert torch.equal(out.loss, explicit.loss)


def test_keys_round_trip_bit_identical(hf_model: Any, tp_model: TpModel) -> None:
    assert_round_trip(CONVERTER, hf_model, tp_model)


def test_conversion_is_strict(hf_model: Any) -> None:
    hf_sd = dict(hf_model.state_dict())
    untied = {**hf_sd, "lm_head.weight": hf_sd["lm_head.weight"] + 1}
    with pytest.raises(CheckpointError, match="not tied"):
        CONVERTER.hf_to_tp(untied)
    missing = {k: v for k, v in hf_sd.items() if k != "transformer.ln_f.bias"}
    with pytest.raises(CheckpointError, match="transformer.ln_f.bias"):
        CONVERTER.hf_to_tp(missing)
