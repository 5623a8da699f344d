"""ALBERT <-> tp: the key map and config translation for `transformers`' AlbertForPreTraining.

tp's ALBERT is BERT's recipe with two model options: `embedding_size` (the word/pos/seg tables
are E wide, normalised at E, then `stack.embedding.project` maps E -> H: HF's
`encoder.embedding_hidden_mapping_in`) and the encoder's `share_layers` (ONE layer's weights,
HF's single layer group `albert_layer_groups.0.albert_layers.0`, applied `layers` times). The
targets are mlm (its transform maps H -> E, and the tied decoder is the (V, E) word table) and sp
fed sentence-order labels (HF's `sop_classifier`, after the tanh pooler).
"""

from __future__ import annotations

from typing import Any

from tpcli.convert import Converter, Drop, Rename, Rule, Tied
from tpcli.errors import TpError
from tp_text.convert_bert import (
    embedding_rules, family_config, family_recipe, hf_activation, pair, qkv_rules,
)

_TP_LAYER = "stack.encoder.layers.0."  # the one shared layer


def body_rules(prefix: str) -> list[Rule]:
    """Embeddings, projection and the shared layer; `prefix` "albert." or "" (AlbertModel)."""
    e = f"{prefix}embeddings."
    L = f"{prefix}encoder.albert_layer_groups.0.albert_layers.0."
    return [
        *embedding_rules(e),
        Drop(f"{e}token_type_ids"),
        *pair(f"{prefix}encoder.embedding_hidden_mapping_in", "stack.embedding.project"),
        *qkv_rules(f"{L}attention.", _TP_LAYER),
        *pair(f"{L}attention.dense", f"{_TP_LAYER}attn.out"),
        *pair(f"{L}attention.LayerNorm", f"{_TP_LAYER}attn_norm"),
        *pair(f"{L}ffn", f"{_TP_LAYER}ffn.fc1"),
        *pair(f"{L}ffn_output", f"{_TP_LAYER}ffn.fc2"),
        *pair(f"{L}full_layer_layer_norm", f"{_TP_LAYER}ffn_norm"),
    ]


def pretraining_rules() -> list[Rule]:
    """AlbertForPreTraining: body + pooler + MLM head + sentence-order head."""
    return [
        *body_rules("albert."),
        *pair("albert.pooler", "targets.sp.pooler"),
        *pair("sop_classifier.classifier", "targets.sp.classifier"),
        *pair("predictions.dense", "targets.mlm.dense"),
        *pair("predictions.LayerNorm", "targets.mlm.norm"),
        Rename("predictions.bias", "targets.mlm.bias"),
        Tied("predictions.decoder.weight", "albert.embeddings.word_embeddings.weight"),
        Tied("predictions.decoder.bias", "predictions.bias"),
    ]


def base_rules() -> list[Rule]:
    """AlbertModel (headless); its pooler, when present, is the sp target's pooler."""
    return [*body_rules(""), *pair("pooler", "targets.sp.pooler", optional=True)]


def config_to_recipe(hf: dict[str, Any]) -> dict[str, Any]:
    """HF AlbertConfig (config.json as a dict) -> the recipe's model section."""
    activation = hf_activation(hf, "ALBERT", "gelu_new")
    if hf.get("num_hidden_groups", 1) != 1 or hf.get("inner_group_num", 1) != 1:
        raise TpError("ALBERT with several layer groups is not supported",
                      hint="tp shares one layer: num_hidden_groups = inner_group_num = 1")
    recipe = family_recipe(hf, "ALBERT", activation, 0.0)
    recipe["encoder"]["share_layers"] = True
    hidden, emb = hf["hidden_size"], hf.get("embedding_size", 128)
    # embedding_size right after hidden_size, where recipe.yaml shows it
    return {"hidden_size": recipe.pop("hidden_size"),
            "embedding_size": None if emb == hidden else emb, **recipe}


def recipe_to_config(spec: Any, vocab_size: int) -> dict[str, Any]:
    """A validated tpcli.recipes.config.ModelSpec of the ALBERT recipe -> HF AlbertConfig dict."""
    stack = spec.stacks.get("")
    if stack is None or stack.encoder is None or stack.encoder.name != "transformer":
        raise TpError("the albert converter needs a single-stream model with a transformer encoder")
    emb = {m.name: m.options for m in stack.embedding}
    if set(emb) != {"word", "pos", "seg"}:
        raise TpError(f"the albert converter needs embedding [word, pos, seg], not {list(emb)}")
    enc, o = stack.encoder.options, spec.options
    if not enc.share_layers:
        raise TpError("the albert converter needs model.encoder.share_layers: true")
    if (enc.pre_norm or enc.mask != "fully_visible" or not enc.bias or enc.norm != "layernorm"
            or enc.position != "none" or enc.ffn_gate or enc.kv_heads not in (None, enc.heads)
            or not enc.scale_attention):
        raise TpError("the albert converter needs BERT's layer: post-norm, fully visible, "
                      "layernorm, biases, no gate, no position option")
    targets = {t.name: t.options for t in spec.targets}
    if set(targets) != {"mlm", "sp"} or not o.tie_weights or o.embedding_norm != "layernorm":
        raise TpError("the albert converter needs targets [mlm, sp], tied, with "
                      "embedding_norm layernorm")
    if targets["mlm"].activation != enc.activation:
        raise TpError("the albert converter needs the mlm activation to be the encoder's",
                      hint="HF ALBERT uses hidden_act in both places")
    return {
        "architectures": ["AlbertForPreTraining"],
        "model_type": "albert",
        **family_config(emb, enc, o, vocab_size),
        "embedding_size": o.embedding_size or o.hidden_size,
        "num_hidden_groups": 1,
        "inner_group_num": 1,
    }


def processor(hf: dict[str, Any]) -> dict[str, Any]:
    """Sentence pairs in order or swapped (sentence-order prediction), dynamic masking."""
    return {"name": "albert", "seq_length": min(512, hf.get("max_position_embeddings", 512))}


CONVERTER = Converter(
    name="albert",
    hf_architecture="AlbertForPreTraining",
    # albert-base-v2 and friends: config.json names AlbertForMaskedLM; the weights hold the MLM
    # head and no SOP head (which starts fresh)
    also_reads=("AlbertForMaskedLM",),
    rules=pretraining_rules(),
    config_to_recipe=config_to_recipe,
    recipe_to_config=recipe_to_config,
    base_architecture="AlbertModel",
    base_rules=base_rules(),
    processor=processor,
    outputs={"mlm": "prediction_logits", "sp": "sop_logits"},
)
