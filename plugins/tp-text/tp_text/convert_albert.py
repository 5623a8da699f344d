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

from tpcli.convert import Concat, Converter, Drop, Rename, Rule, Tied
from tpcli.errors import TpError
from tp_text.convert_bert import _ACT_FROM_HF, _ACT_TO_HF

_TP_LAYER = "stack.encoder.layers.0."  # the one shared layer


def _pair(hf: str, tp: str, optional: bool = False) -> list[Rule]:
    """weight and bias of one Linear / LayerNorm."""
    return [Rename(f"{hf}.{p}", f"{tp}.{p}", optional) for p in ("weight", "bias")]


def body_rules(prefix: str) -> list[Rule]:
    """Embeddings, projection and the shared layer; `prefix` "albert." or "" (AlbertModel)."""
    e = f"{prefix}embeddings."
    L = f"{prefix}encoder.albert_layer_groups.0.albert_layers.0."
    rules: list[Rule] = [
        Rename(f"{e}word_embeddings.weight", "stack.embedding.parts.word.embedding.weight"),
        Rename(f"{e}position_embeddings.weight", "stack.embedding.parts.pos.embedding.weight"),
        Rename(f"{e}token_type_embeddings.weight", "stack.embedding.parts.seg.embedding.weight"),
        *_pair(f"{e}LayerNorm", "stack.embedding.norm"),
        Drop(f"{e}position_ids"),
        Drop(f"{e}token_type_ids"),
        *_pair(f"{prefix}encoder.embedding_hidden_mapping_in", "stack.embedding.project"),
    ]
    for p in ("weight", "bias"):
        qkv = tuple(f"{L}attention.{n}.{p}" for n in ("query", "key", "value"))
        rules.append(Concat(qkv, f"{_TP_LAYER}attn.qkv.{p}"))
    return rules + [
        *_pair(f"{L}attention.dense", f"{_TP_LAYER}attn.out"),
        *_pair(f"{L}attention.LayerNorm", f"{_TP_LAYER}attn_norm"),
        *_pair(f"{L}ffn", f"{_TP_LAYER}ffn.fc1"),
        *_pair(f"{L}ffn_output", f"{_TP_LAYER}ffn.fc2"),
        *_pair(f"{L}full_layer_layer_norm", f"{_TP_LAYER}ffn_norm"),
    ]


def pretraining_rules() -> list[Rule]:
    """AlbertForPreTraining: body + pooler + MLM head + sentence-order head."""
    return [
        *body_rules("albert."),
        *_pair("albert.pooler", "targets.sp.pooler"),
        *_pair("sop_classifier.classifier", "targets.sp.classifier"),
        *_pair("predictions.dense", "targets.mlm.dense"),
        *_pair("predictions.LayerNorm", "targets.mlm.norm"),
        Rename("predictions.bias", "targets.mlm.bias"),
        Tied("predictions.decoder.weight", "albert.embeddings.word_embeddings.weight"),
        Tied("predictions.decoder.bias", "predictions.bias"),
    ]


def base_rules() -> list[Rule]:
    """AlbertModel (headless); its pooler, when present, is the sp target's pooler."""
    return [*body_rules(""), *_pair("pooler", "targets.sp.pooler", optional=True)]


def config_to_recipe(hf: dict[str, Any]) -> dict[str, Any]:
    """HF AlbertConfig (config.json as a dict) -> the recipe's model section."""
    act = hf.get("hidden_act", "gelu_new")
    if act not in _ACT_FROM_HF:
        raise TpError(f"ALBERT hidden_act {act!r} has no tp equivalent",
                      hint=f"supported: {', '.join(_ACT_FROM_HF)}")
    if hf.get("num_hidden_groups", 1) != 1 or hf.get("inner_group_num", 1) != 1:
        raise TpError("ALBERT with several layer groups is not supported",
                      hint="tp shares one layer: num_hidden_groups = inner_group_num = 1")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise TpError(f"ALBERT position_embedding_type {hf['position_embedding_type']!r} is not "
                      "supported", hint="tp's pos embedding is learned absolute positions")
    activation = _ACT_FROM_HF[act]
    hidden, emb = hf["hidden_size"], hf.get("embedding_size", 128)
    return {
        "hidden_size": hidden,
        "embedding_size": None if emb == hidden else emb,
        "vocab_size": hf["vocab_size"],
        "dropout": hf.get("hidden_dropout_prob", 0.0),
        "norm_eps": hf.get("layer_norm_eps", 1e-12),
        "init_std": hf.get("initializer_range", 0.02),
        "embedding_norm": "layernorm",
        "tie_weights": True,
        "embedding": {
            "word": {},
            "pos": {"max_length": hf.get("max_position_embeddings", 512)},
            "seg": {"types": hf.get("type_vocab_size", 2)},
        },
        "encoder": {
            "name": "transformer",
            "layers": hf["num_hidden_layers"],
            "heads": hf["num_attention_heads"],
            "ffn_size": hf["intermediate_size"],
            "activation": activation,
            "pre_norm": False,
            "mask": "fully_visible",
            "attention_dropout": hf.get("attention_probs_dropout_prob", 0.0),
            "bias": True,
            "share_layers": True,
        },
        "target": {"mlm": {"activation": activation}, "sp": {}},
    }


def recipe_to_config(spec: Any, vocab_size: int) -> dict[str, Any]:
    """A validated tpcli.config.ModelSpec of the ALBERT recipe -> HF AlbertConfig dict."""
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
        "vocab_size": o.vocab_size or vocab_size,
        "embedding_size": o.embedding_size or o.hidden_size,
        "hidden_size": o.hidden_size,
        "num_hidden_layers": enc.layers,
        "num_hidden_groups": 1,
        "inner_group_num": 1,
        "num_attention_heads": enc.heads,
        "intermediate_size": enc.ffn_size,
        "hidden_act": _ACT_TO_HF[enc.activation],
        "hidden_dropout_prob": o.dropout,
        "attention_probs_dropout_prob": (
            o.dropout if enc.attention_dropout is None else enc.attention_dropout),
        "max_position_embeddings": emb["pos"].max_length,
        "type_vocab_size": emb["seg"].types,
        "initializer_range": o.init_std,
        "layer_norm_eps": o.norm_eps,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }


def processor(hf: dict[str, Any]) -> dict[str, Any]:
    """Sentence pairs in order or swapped (sentence-order prediction), dynamic masking."""
    return {"name": "albert", "seq_length": min(512, hf.get("max_position_embeddings", 512))}


CONVERTER = Converter(
    name="albert",
    hf_architecture="AlbertForPreTraining",
    rules=pretraining_rules(),
    config_to_recipe=config_to_recipe,
    recipe_to_config=recipe_to_config,
    base_architecture="AlbertModel",
    base_rules=base_rules(),
    processor=processor,
    outputs={"mlm": "prediction_logits", "sp": "sop_logits"},
)
