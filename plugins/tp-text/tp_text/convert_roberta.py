"""RoBERTa <-> tp: the key map and config translation for `transformers`' RoBERTa.

tp's RoBERTa is BERT's body without next-sentence prediction: `embedding: [word, pos, seg]`,
`encoder: transformer`, `target: [mlm]`. Two details of HF's RoBERTa are spelled generically:

- positions start at `pad_token_id + 1` and padding reads row `pad_token_id`: the pos embedding
  with `offset: pad_token_id + 1` and `padding_aware: true` (table of max_position_embeddings
  rows, 514 for 512 tokens);
- a one-row token_type table, added to every token: `seg` with `types: 1`. Folding that row into
  the position table would drop the seg module but is not bit-exact in either direction (the sum
  is rounded differently, and tp -> HF could not split it back), so the row stays its own module.

HF keeps the tied decoder under a second name (`lm_head.decoder.weight` = the word embedding,
`lm_head.decoder.bias` = `lm_head.bias`); tp does not duplicate them.
"""

from __future__ import annotations

from typing import Any

from tpcli.convert import Converter, Rename, Rule, Tied
from tpcli.errors import TpError
from tp_text.convert_bert import body_rules, encoder_config, pair
from tp_text.convert_bert import config_to_recipe as bert_config_to_recipe


def masked_lm_rules() -> list[Rule]:
    """RobertaForMaskedLM: body + the LM head."""
    return [
        *body_rules("roberta."),
        *pair("lm_head.dense", "targets.mlm.dense"),
        *pair("lm_head.layer_norm", "targets.mlm.norm"),
        Rename("lm_head.bias", "targets.mlm.bias"),
        # after the renames: tp -> HF copies what they produced
        Tied("lm_head.decoder.weight", "roberta.embeddings.word_embeddings.weight"),
        Tied("lm_head.decoder.bias", "lm_head.bias"),
    ]


def config_to_recipe(hf: dict[str, Any]) -> dict[str, Any]:
    """HF RobertaConfig (config.json as a dict) -> the recipe's model section."""
    model = bert_config_to_recipe(hf)  # same body options; BERT's checks on act and positions
    pad = hf.get("pad_token_id", 1)
    if pad is None or pad < 0:
        raise TpError(f"RoBERTa pad_token_id {pad!r} gives no position offset",
                      hint="HF RoBERTa numbers positions from pad_token_id + 1")
    model["embedding"]["pos"].update(offset=pad + 1, padding_aware=True)
    model["embedding"]["seg"] = {"types": hf.get("type_vocab_size", 1)}
    # HF's RobertaLMHead applies gelu whatever hidden_act says
    model["target"] = {"mlm": {"activation": "gelu"}}
    return model


def recipe_to_config(spec: Any, vocab_size: int) -> dict[str, Any]:
    """A validated tpcli.recipes.config.ModelSpec of the RoBERTa recipe -> HF RobertaConfig dict."""
    emb, config = encoder_config(
        spec, vocab_size, "roberta",
        seg_hint="HF RoBERTa has a one-row token_type table: add `seg: {types: 1}`")
    targets = {t.name: t.options for t in spec.targets}
    if set(targets) != {"mlm"}:
        raise TpError(f"the roberta converter needs the single target mlm, not {list(targets)}")
    pos = emb["pos"]
    if not pos.padding_aware or pos.offset < 1:
        raise TpError("the roberta converter needs pos with padding_aware: true and offset >= 1",
                      hint="HF RoBERTa: offset = pad_token_id + 1 (2)")
    return {"architectures": ["RobertaForMaskedLM"], "model_type": "roberta", **config,
            "pad_token_id": pos.offset - 1}


def processor(hf: dict[str, Any]) -> dict[str, Any]:
    """Full sentences across documents (RoBERTa's FULL-SENTENCES), dynamic masking."""
    rows = hf.get("max_position_embeddings", 514) - hf.get("pad_token_id", 1) - 1
    return {"name": "mlm", "seq_length": max(8, min(512, rows))}


def max_length(hf: dict[str, Any]) -> int:
    """Positions start after the padding id (offset pad_token_id + 1): 514 rows take 512
    tokens, the model_max_length HF ships with roberta-base."""
    return int(hf.get("max_position_embeddings", 514)) - int(hf.get("pad_token_id", 1)) - 1


CONVERTER = Converter(
    name="roberta",
    hf_architecture="RobertaForMaskedLM",
    rules=masked_lm_rules(),
    config_to_recipe=config_to_recipe,
    recipe_to_config=recipe_to_config,
    base_architecture="RobertaModel",
    base_rules=body_rules(""),  # RobertaModel; its pooler has no tp module: ignore="pooler.*"
    processor=processor,
    max_length=max_length,
)


def xlmr_recipe_to_config(spec: Any, vocab_size: int) -> dict[str, Any]:
    """XLM-RoBERTa is RoBERTa's model with a 250k SentencePiece vocabulary: the same config."""
    config = recipe_to_config(spec, vocab_size)
    return {**config, "architectures": ["XLMRobertaForMaskedLM"], "model_type": "xlm-roberta"}


# XLM-R: the roberta key map and translation under its own model_type and class names
XLMR_CONVERTER = Converter(
    name="xlm-roberta",
    hf_architecture="XLMRobertaForMaskedLM",
    rules=masked_lm_rules(),
    config_to_recipe=config_to_recipe,
    recipe_to_config=xlmr_recipe_to_config,
    base_architecture="XLMRobertaModel",
    base_rules=body_rules(""),
    processor=processor,
    max_length=max_length,
)
