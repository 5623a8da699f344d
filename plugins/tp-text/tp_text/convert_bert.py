"""BERT <-> tp: the key map and config translation for `transformers`' BERT.

tp's BERT is the recipe `embedding: [word, pos, seg]`, `encoder: transformer`, `target: [mlm, sp]`.
HF's BertForPreTraining stores q, k and v separately (tp fuses them) and keeps a second name for
the tied decoder (`cls.predictions.decoder.weight`, the word embedding; `.decoder.bias`, the
prediction bias), which tp does not duplicate. The headless BertModel (sentence-transformers
checkpoints such as all-MiniLM-L6-v2) has the same body without the `bert.` prefix.
"""

from __future__ import annotations

from typing import Any

from tpcli.convert import Concat, Converter, Drop, Rename, Rule, Tied
from tpcli.errors import TpError

_LAYER = "encoder.layer.{i}."
_TP_LAYER = "stack.encoder.layers.{i}."

# HF hidden_act -> tp activation (and back: the first HF name of each)
_ACT_FROM_HF = {
    "gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu",
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
}
_ACT_TO_HF = {"gelu": "gelu", "relu": "relu", "silu": "silu", "gelu_tanh": "gelu_new"}


def pair(hf: str, tp: str, optional: bool = False) -> list[Rule]:
    """weight and bias of one Linear / LayerNorm."""
    return [Rename(f"{hf}.{p}", f"{tp}.{p}", optional) for p in ("weight", "bias")]


def embedding_rules(e: str) -> list[Rule]:
    """The BERT family's [word, pos, seg] tables and their LayerNorm; `e` is the HF prefix
    ("bert.embeddings.", "albert.embeddings.", ...)."""
    return [
        Rename(f"{e}word_embeddings.weight", "stack.embedding.parts.word.embedding.weight"),
        Rename(f"{e}position_embeddings.weight", "stack.embedding.parts.pos.embedding.weight"),
        Rename(f"{e}token_type_embeddings.weight", "stack.embedding.parts.seg.embedding.weight"),
        *pair(f"{e}LayerNorm", "stack.embedding.norm"),
        Drop(f"{e}position_ids"),  # a buffer that old checkpoints saved
    ]


def qkv_rules(attention: str, tp_layer: str) -> list[Rule]:
    """HF's separate query/key/value under `attention` <-> tp's fused `{tp_layer}attn.qkv`."""
    return [Concat(tuple(f"{attention}{n}.{p}" for n in ("query", "key", "value")),
                   f"{tp_layer}attn.qkv.{p}") for p in ("weight", "bias")]


def body_rules(prefix: str) -> list[Rule]:
    """Embeddings and encoder layers; `prefix` is "bert." in the pre-training model, "" headless."""
    e, L = f"{prefix}embeddings.", f"{prefix}{_LAYER}"
    rules = embedding_rules(e) + qkv_rules(f"{L}attention.self.", _TP_LAYER)
    rules += [
        *pair(f"{L}attention.output.dense", f"{_TP_LAYER}attn.out"),
        *pair(f"{L}attention.output.LayerNorm", f"{_TP_LAYER}attn_norm"),
        *pair(f"{L}intermediate.dense", f"{_TP_LAYER}ffn.fc1"),
        *pair(f"{L}output.dense", f"{_TP_LAYER}ffn.fc2"),
        *pair(f"{L}output.LayerNorm", f"{_TP_LAYER}ffn_norm"),
    ]
    return rules


def pretraining_rules() -> list[Rule]:
    """BertForPreTraining: body + pooler + MLM head + NSP head."""
    return [
        *body_rules("bert."),
        *pair("bert.pooler.dense", "targets.sp.pooler"),
        *pair("cls.seq_relationship", "targets.sp.classifier"),
        *pair("cls.predictions.transform.dense", "targets.mlm.dense"),
        *pair("cls.predictions.transform.LayerNorm", "targets.mlm.norm"),
        Rename("cls.predictions.bias", "targets.mlm.bias"),
        # after the renames: tp -> HF copies what they produced
        Tied("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
        Tied("cls.predictions.decoder.bias", "cls.predictions.bias"),
    ]


def base_rules() -> list[Rule]:
    """BertModel (headless): body; its pooler, when present, is the sp target's pooler."""
    return [*body_rules(""), *pair("pooler.dense", "targets.sp.pooler", optional=True)]


def hf_activation(hf: dict[str, Any], family: str, default: str) -> str:
    """The tp activation of HF's `hidden_act` (`default` when absent); TpError when tp has none."""
    act = hf.get("hidden_act", default)
    if act not in _ACT_FROM_HF:
        raise TpError(f"{family} hidden_act {act!r} has no tp equivalent",
                      hint=f"supported: {', '.join(_ACT_FROM_HF)}")
    return _ACT_FROM_HF[act]


def family_recipe(hf: dict[str, Any], family: str, activation: str,
                  dropout: float) -> dict[str, Any]:
    """The BERT family's model section (BERT, ALBERT): [word, pos, seg] into a post-norm, fully
    visible transformer with targets [mlm, sp]; `dropout` is the default of both HF dropouts."""
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise TpError(f"{family} position_embedding_type {hf['position_embedding_type']!r} is not "
                      "supported", hint="tp's pos embedding is learned absolute positions")
    return {
        "hidden_size": hf["hidden_size"],
        "vocab_size": hf["vocab_size"],
        "dropout": hf.get("hidden_dropout_prob", dropout),
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
            "attention_dropout": hf.get("attention_probs_dropout_prob", dropout),
            "bias": True,
        },
        "target": {"mlm": {"activation": activation}, "sp": {}},
    }


def config_to_recipe(hf: dict[str, Any]) -> dict[str, Any]:
    """HF BertConfig (config.json as a dict) -> the recipe's model section."""
    return family_recipe(hf, "BERT", hf_activation(hf, "BERT", "gelu"), 0.1)


def encoder_config(spec: Any, vocab_size: int, family: str,
                   seg_hint: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Checks and HF config keys shared by the BERT family (BERT, RoBERTa): a single stream of
    [word, pos, seg] into a post-norm, fully visible transformer. Returns (embeddings, config)."""
    stack = spec.stacks.get("")
    if stack is None or stack.encoder is None or stack.encoder.name != "transformer":
        raise TpError(f"the {family} converter needs a single-stream model with a transformer "
                      "encoder")
    emb = {m.name: m.options for m in stack.embedding}
    if set(emb) != {"word", "pos", "seg"}:
        raise TpError(f"the {family} converter needs embedding [word, pos, seg], not {list(emb)}",
                      hint=seg_hint)
    enc, o = stack.encoder.options, spec.options
    if enc.pre_norm or enc.mask != "fully_visible" or not enc.bias:
        raise TpError(f"the {family} converter needs a post-norm, fully visible encoder with "
                      "biases")
    if enc.position != "none":  # HF BERT has learned absolute positions only
        raise TpError(f"the {family} converter needs positions from the `pos` embedding alone, "
                      f"but the encoder adds model.encoder.position={enc.position}: Hugging "
                      "Face's model would compute other outputs",
                      hint="keep the checkpoint in tp format, or train with "
                      "model.encoder.position=none")
    if o.embedding_norm != "layernorm":
        raise TpError(f"the {family} converter needs model.embedding_norm=layernorm")
    return emb, family_config(emb, enc, o, vocab_size)


def family_config(emb: dict[str, Any], enc: Any, o: Any, vocab_size: int) -> dict[str, Any]:
    """HF config keys shared by the BERT family from the checked embeddings `emb`, encoder
    options `enc` and model options `o`."""
    return {
        "vocab_size": o.vocab_size or vocab_size,
        "hidden_size": o.hidden_size,
        "num_hidden_layers": enc.layers,
        "num_attention_heads": enc.heads,
        "intermediate_size": enc.ffn_size,
        "hidden_act": _ACT_TO_HF[enc.activation],
        "hidden_dropout_prob": o.dropout,
        "attention_probs_dropout_prob": (
            o.dropout if enc.attention_dropout is None else enc.attention_dropout
        ),
        "max_position_embeddings": emb["pos"].max_length,
        "type_vocab_size": emb["seg"].types,
        "initializer_range": o.init_std,
        "layer_norm_eps": o.norm_eps,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }


def recipe_to_config(spec: Any, vocab_size: int) -> dict[str, Any]:
    """A validated tpcli.recipes.config.ModelSpec of the BERT recipe -> HF BertConfig dict."""
    _, config = encoder_config(spec, vocab_size, "bert")
    targets = {t.name: t.options for t in spec.targets}
    if set(targets) != {"mlm", "sp"}:
        raise TpError(f"the bert converter needs targets [mlm, sp], not {list(targets)}")
    return {"architectures": ["BertForPreTraining"], "model_type": "bert", **config}


def processor(hf: dict[str, Any]) -> dict[str, Any]:
    """Sentence pairs with next-sentence prediction, as long as the position table allows."""
    return {"name": "bert", "seq_length": min(512, hf.get("max_position_embeddings", 512))}


CONVERTER = Converter(
    name="bert",
    hf_architecture="BertForPreTraining",
    # google-bert/bert-base-uncased and -large: config.json names BertForMaskedLM, the weights
    # are the full pre-training model's (pooler and NSP head included)
    also_reads=("BertForMaskedLM",),
    rules=pretraining_rules(),
    config_to_recipe=config_to_recipe,
    recipe_to_config=recipe_to_config,
    base_architecture="BertModel",
    base_rules=base_rules(),
    processor=processor,
    outputs={"mlm": "prediction_logits", "sp": "seq_relationship_logits"},
)
