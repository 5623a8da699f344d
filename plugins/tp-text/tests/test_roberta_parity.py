"""tp's RoBERTa (the roberta-base recipe, shrunk) against Hugging Face `transformers`: MLM logits
of a tiny random RobertaForMaskedLM with and without padding, the key map in both directions,
the config translation, and two training steps of the recipe.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from tpcli.recipes.config import build_recipe, read_recipe_file
from tpcli.model import TpModel
from tpcli.plugins import get_plugins
from tpcli.recipes import resolve_recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
from tp_text.convert_roberta import CONVERTER  # noqa: E402
from tpcli.testing.convert import assert_round_trip  # noqa: E402

PAD = 1  # HF RoBERTa's pad_token_id: positions start at row PAD + 1
HF_CONFIG = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=34, type_vocab_size=1,
                 hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=PAD)
HF_CLASSES = (transformers.RobertaForMaskedLM, transformers.RobertaConfig)
# the built-in recipe, shrunk: only sizes change, the layout options come from the recipe file
OVERRIDES = ["model.hidden_size=64", "model.vocab_size=1000", "model.encoder.layers=2",
             "model.encoder.heads=4", "model.encoder.ffn_size=128",
             "model.embedding.pos.max_length=34"]
B, T = 4, 16
LENGTHS = (16, 11, 7, 3)


def recipe_model(overrides: list[str] = OVERRIDES, model: dict[str, Any] | None = None) -> Any:
    reg = get_plugins().registry
    raw = read_recipe_file(resolve_recipe("roberta-base")[2])
    if model is not None:
        raw = {**raw, "model": model}
    return build_recipe(raw, reg, overrides=overrides).model


def inputs(padded: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (B, T), generator=g)  # never PAD: HF finds padding by id
    mask = torch.ones(B, T, dtype=torch.long)
    if padded:
        for row, n in enumerate(LENGTHS):
            mask[row, n:] = 0
    ids = ids.masked_fill(mask == 0, PAD)
    return {"input_ids": ids, "attention_mask": mask}


def test_recipe_matches_config_translation() -> None:
    """The shrunk built-in recipe and the one translated from HF's config are the same model."""
    translated = CONVERTER.config_to_recipe(transformers.RobertaConfig(**HF_CONFIG).to_dict())
    assert recipe_model(overrides=["model.encoder.attention_dropout=0.1"]
                        + OVERRIDES) == recipe_model([], translated)


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_logits_match_hf(hf_model: Any, tp_model: TpModel, padded: bool) -> None:
    batch = inputs(padded)
    with torch.no_grad():
        ref = hf_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ours = tp_model.predict(batch)["mlm"]
    assert ours.shape == ref.shape == (B, T, 1000)
    real = batch["attention_mask"].bool()
    assert (ours - ref)[real].abs().max() <= 1e-5
    # padded slots are not compared: tp's feed-forward skips them (tpcli.layers.unpad); the
    # position rows they read are test_positions_follow_hf's


def test_positions_follow_hf(tp_model: TpModel) -> None:
    """Real tokens read rows PAD+1.., padding reads row PAD (HF's create_position_ids...)."""
    batch = inputs(True)
    table = tp_model.stack.embedding.parts.pos.embedding.weight  # (34, H)
    got = tp_model.stack.embedding.parts.pos(batch)  # (B, T, H)
    want = transformers.models.roberta.modeling_roberta.RobertaEmbeddings \
        .create_position_ids_from_input_ids(batch["input_ids"], PAD)  # (B, T)
    assert torch.equal(got, table[want])


def test_keys_round_trip_bit_identical(hf_model: Any, tp_model: TpModel) -> None:
    assert_round_trip(CONVERTER, hf_model, tp_model)


def test_recipe_to_config_rebuilds_hf(hf_model: Any, tp_model: TpModel) -> None:
    """tp -> HF config: a fresh RobertaForMaskedLM loads the converted weights, same logits."""
    config = CONVERTER.recipe_to_config(recipe_model(), 1000)
    assert config["pad_token_id"] == PAD and config["type_vocab_size"] == 1
    hf = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**config)).eval()
    hf.load_state_dict(CONVERTER.tp_to_hf(tp_model.state_dict()), strict=True)
    batch = inputs(True)
    with torch.no_grad():
        ref = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    real = batch["attention_mask"].bool()
    assert (tp_model.predict(batch)["mlm"] - ref)[real].abs().max() <= 1e-5
