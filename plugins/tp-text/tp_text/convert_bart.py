"""BART <-> tp: the key map and config translation for `transformers`' BartForConditionalGeneration.

tp's BART is a seq2seq recipe: `embedding: [word, pos]` -> post-norm `transformer` encoder,
`tgt_embedding: [word, pos]` -> post-norm `transformer` decoder, `target: lm` with a bias.
- Both position tables reserve two rows (HF's offset 2): `pos` with `offset: 2` and
  `max_length: max_position_embeddings + 2`; `layernorm_embedding` is `embedding_norm`.
- One vocabulary table (`model.shared`, HF also names it `encoder.embed_tokens`,
  `decoder.embed_tokens` and `lm_head`): `share_embeddings` + `tie_weights`, one tp key.
- `final_logits_bias` is (1, V), tp's lm bias (V,): a Reshape rule.
- q, k, v are fused into `attn.qkv`; the cross-attention's k, v into `cross.kv`.
"""

from __future__ import annotations

from typing import Any

from tpcli.convert import Concat, Converter, Rename, Reshape, Rule, Tied
from tpcli.errors import TpError
from tp_text.convert_bert import _ACT_FROM_HF, _ACT_TO_HF, pair

OFFSET = 2  # rows BART's learned position tables reserve before position 0


def _attention(hf: str, tp: str, cross: bool) -> list[Rule]:
    """q/k/v/out_proj of one HF attention <-> tp's fused projections."""
    rules: list[Rule] = []
    for p in ("weight", "bias"):
        if cross:
            rules.append(Rename(f"{hf}.q_proj.{p}", f"{tp}.q.{p}"))
            rules.append(Concat((f"{hf}.k_proj.{p}", f"{hf}.v_proj.{p}"), f"{tp}.kv.{p}"))
        else:
            qkv = tuple(f"{hf}.{n}_proj.{p}" for n in ("q", "k", "v"))
            rules.append(Concat(qkv, f"{tp}.qkv.{p}"))
        rules.append(Rename(f"{hf}.out_proj.{p}", f"{tp}.out.{p}"))
    return rules


def body_rules(prefix: str) -> list[Rule]:
    """Both stacks; `prefix` is "model." in BartForConditionalGeneration, "" in BartModel."""
    enc, dec = f"{prefix}encoder.", f"{prefix}decoder."
    E, D = f"{enc}layers.{{i}}.", f"{dec}layers.{{i}}."
    te, td = "stack.encoder.layers.{i}.", "decoder.layers.{i}."
    return [
        Rename(f"{prefix}shared.weight", "stack.embedding.parts.word.embedding.weight"),
        Rename(f"{enc}embed_positions.weight", "stack.embedding.parts.pos.embedding.weight"),
        *pair(f"{enc}layernorm_embedding", "stack.embedding.norm"),
        *_attention(f"{E}self_attn", f"{te}attn", cross=False),
        *pair(f"{E}self_attn_layer_norm", f"{te}attn_norm"),
        *pair(f"{E}fc1", f"{te}ffn.fc1"),
        *pair(f"{E}fc2", f"{te}ffn.fc2"),
        *pair(f"{E}final_layer_norm", f"{te}ffn_norm"),
        Rename(f"{dec}embed_positions.weight", "tgt_embedding.parts.pos.embedding.weight"),
        *pair(f"{dec}layernorm_embedding", "tgt_embedding.norm"),
        *_attention(f"{D}self_attn", f"{td}attn", cross=False),
        *pair(f"{D}self_attn_layer_norm", f"{td}attn_norm"),
        *_attention(f"{D}encoder_attn", f"{td}cross", cross=True),
        *pair(f"{D}encoder_attn_layer_norm", f"{td}cross_norm"),
        *pair(f"{D}fc1", f"{td}ffn.fc1"),
        *pair(f"{D}fc2", f"{td}ffn.fc2"),
        *pair(f"{D}final_layer_norm", f"{td}ffn_norm"),
        # the shared table's other names (after the rename that makes it)
        Tied(f"{enc}embed_tokens.weight", f"{prefix}shared.weight"),
        Tied(f"{dec}embed_tokens.weight", f"{prefix}shared.weight"),
    ]


def generation_rules() -> list[Rule]:
    """BartForConditionalGeneration: both stacks + the tied head and its (1, V) bias."""
    return [
        *body_rules("model."),
        Reshape("final_logits_bias", "targets.lm.bias", hf_shape=(1, -1), tp_shape=(-1,)),
        Tied("lm_head.weight", "model.shared.weight"),
    ]


def _stack(hf: dict[str, Any], side: str, activation: str) -> dict[str, Any]:
    return {
        "name": "transformer",
        "layers": hf[f"{side}_layers"],
        "heads": hf[f"{side}_attention_heads"],
        "ffn_size": hf[f"{side}_ffn_dim"],
        "activation": activation,
        "pre_norm": False,
        "attention_dropout": hf.get("attention_dropout", 0.0),
        "bias": True,
    }


def config_to_recipe(hf: dict[str, Any]) -> dict[str, Any]:
    """HF BartConfig (config.json as a dict) -> the recipe's model section."""
    act = hf.get("activation_function", "gelu")
    if act not in _ACT_FROM_HF:
        raise TpError(f"BART activation_function {act!r} has no tp equivalent",
                      hint=f"supported: {', '.join(_ACT_FROM_HF)}")
    if hf.get("scale_embedding"):
        raise TpError("BART with scale_embedding: true is not supported",
                      hint="tp's word embedding is not multiplied by sqrt(d_model)")
    if hf.get("normalize_before") or hf.get("add_final_layer_norm"):
        raise TpError("pre-norm BART variants (mBART) are not supported by the bart converter")
    if hf.get("activation_dropout", 0.0):
        raise TpError("BART activation_dropout > 0 is not supported",
                      hint="tp's feed-forward has no dropout between fc1 and fc2")
    pos = {"max_length": hf.get("max_position_embeddings", 1024) + OFFSET, "offset": OFFSET}
    activation = _ACT_FROM_HF[act]
    return {
        "hidden_size": hf["d_model"],
        "vocab_size": hf["vocab_size"],
        "dropout": hf.get("dropout", 0.1),
        "norm_eps": 1e-5,  # BART's LayerNorms use torch's default
        "init_std": hf.get("init_std", 0.02),
        "embedding_norm": "layernorm",
        "share_embeddings": True,
        "tie_weights": True,
        "embedding": {"word": {}, "pos": dict(pos)},
        "encoder": _stack(hf, "encoder", activation),
        "tgt_embedding": {"word": {}, "pos": dict(pos)},
        "decoder": _stack(hf, "decoder", activation),
        "target": {"lm": {"bias": True}},
    }


def recipe_to_config(spec: Any, vocab_size: int) -> dict[str, Any]:
    """A validated tpcli.recipes.config.ModelSpec of the bart recipe -> HF BartConfig dict."""
    stack = spec.stacks.get("")
    if (stack is None or stack.encoder is None or spec.decoder is None
            or stack.encoder.name != "transformer" or spec.decoder.name != "transformer"):
        raise TpError("the bart converter needs a transformer encoder and a transformer decoder")
    emb = {m.name: m.options for m in stack.embedding}
    temb = {m.name: m.options for m in spec.tgt_embedding}
    if set(emb) != {"word", "pos"} or set(temb) != {"word", "pos"}:
        raise TpError("the bart converter needs embedding and tgt_embedding [word, pos]")
    o = spec.options
    if not (o.share_embeddings and o.tie_weights and o.embedding_norm == "layernorm"):
        raise TpError("the bart converter needs share_embeddings, tie_weights and "
                      "embedding_norm layernorm")
    for p in (emb["pos"], temb["pos"]):
        if p.offset != OFFSET or p.padding_aware or p.max_length != emb["pos"].max_length:
            raise TpError(f"the bart converter needs both pos tables with offset {OFFSET}, the "
                          "same max_length, not padding_aware")
    enc, dec = stack.encoder.options, spec.decoder.options
    for side in (enc, dec):
        if (side.pre_norm or not side.bias or side.norm != "layernorm" or side.position != "none"
                or side.ffn_gate or side.kv_heads not in (None, side.heads)
                or not side.scale_attention or side.share_layers):
            raise TpError("the bart converter needs post-norm layernorm transformers with biases")
    if enc.activation != dec.activation or enc.attention_dropout != dec.attention_dropout:
        raise TpError("the bart converter needs the same activation and attention dropout on "
                      "both sides")
    targets = {t.name: t.options for t in spec.targets}
    if set(targets) != {"lm"} or not targets["lm"].bias or targets["lm"].rescale_hidden:
        raise TpError("the bart converter needs the single target lm with bias: true")
    if o.norm_eps != 1e-5:
        raise TpError("the bart converter needs model.norm_eps=1e-5 (HF BART's LayerNorm)")
    return {
        "architectures": ["BartForConditionalGeneration"],
        "model_type": "bart",
        "vocab_size": o.vocab_size or vocab_size,
        "d_model": o.hidden_size,
        "encoder_layers": enc.layers,
        "decoder_layers": dec.layers,
        "encoder_attention_heads": enc.heads,
        "decoder_attention_heads": dec.heads,
        "encoder_ffn_dim": enc.ffn_size,
        "decoder_ffn_dim": dec.ffn_size,
        "activation_function": _ACT_TO_HF[enc.activation],
        "dropout": o.dropout,
        "attention_dropout": o.dropout if enc.attention_dropout is None else enc.attention_dropout,
        "activation_dropout": 0.0,
        "max_position_embeddings": emb["pos"].max_length - OFFSET,
        "init_std": o.init_std,
        "scale_embedding": False,
        "tie_word_embeddings": True,
    }


def processor(hf: dict[str, Any]) -> dict[str, Any]:
    """Text infilling and sentence permutation."""
    return {"name": "bart", "seq_length": min(1024, hf.get("max_position_embeddings", 1024))}


CONVERTER = Converter(
    name="bart",
    hf_architecture="BartForConditionalGeneration",
    rules=generation_rules(),
    config_to_recipe=config_to_recipe,
    recipe_to_config=recipe_to_config,
    base_architecture="BartModel",
    base_rules=body_rules(""),
    processor=processor,
)
