"""T5 <-> tp: the key map and config translation for `transformers`' T5ForConditionalGeneration.

tp's T5 is a seq2seq recipe: `embedding: [word]` -> pre-norm `transformer` encoder (rmsnorm, no
biases, `position: relative`, `scale_attention: false`), `tgt_embedding: [word]` -> the same
decoder, `target: lm`. T5 keeps each stack's relative-position table in its block 0
(`block.0.layer.0.SelfAttention.relative_attention_bias`); tp keeps one per stack
(`stack.encoder.relative_bias`, `decoder.relative_bias`). One vocabulary table (`shared`, also
named `encoder.embed_tokens`, `decoder.embed_tokens` and, tied, `lm_head`): `share_embeddings`
+ `tie_weights`; the original T5 scales the decoder output by d_model ** -0.5 before its tied
head (`rescale_hidden`). T5 v1.1's gated FFN (`wi_0` gate, `wi_1` up) is `ffn_gate` with fc1
rows [wi_0; wi_1]. The key map depends on the config (gated or not, tied head or not).
T5's `d_kv` (channels per head) is tp's `head_size` when it is not d_model / num_heads (T5 v1.1
small: 6 heads of 64 for d_model 512; T5-3B/11B: 32 or 128 heads of 128 for 1024).
"""

from __future__ import annotations

from typing import Any

from tpcli.convert import Concat, Converter, Rename, Rule, Tied
from tpcli.errors import TpError

_ACT_FROM_HF = {"relu": "relu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu": "gelu", "silu": "silu", "swish": "silu"}
_ACT_TO_HF = {"relu": "relu", "gelu_tanh": "gelu_new", "gelu": "gelu", "silu": "silu"}


def _gated(hf: dict[str, Any]) -> bool:
    return str(hf.get("feed_forward_proj", "relu")).startswith("gated-")


def _tied(hf: dict[str, Any]) -> bool:
    """The original T5: lm_head is the shared table and the decoder output is rescaled; v1.1:
    its own lm_head, no rescale. transformers < 5 says so with tie_word_embeddings, >= 5 with
    scale_decoder_outputs (it writes tie_word_embeddings: true for both)."""
    return (hf.get("tie_word_embeddings", True) is not False
            and hf.get("scale_decoder_outputs", True) is not False)


def _stack_rules(side: str, tp: str, ffn_layer: int, gated: bool) -> list[Rule]:
    """One HF stack (`encoder` / `decoder`) <-> tp's `stack.encoder` / `decoder`."""
    B, T = f"{side}.block.{{i}}.", f"{tp}.layers.{{i}}."
    att = f"{B}layer.0.SelfAttention."
    rules: list[Rule] = [
        Concat((f"{att}q.weight", f"{att}k.weight", f"{att}v.weight"), f"{T}attn.qkv.weight"),
        Rename(f"{att}o.weight", f"{T}attn.out.weight"),
        Rename(f"{B}layer.0.layer_norm.weight", f"{T}attn_norm.weight"),
        Rename(f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
               f"{tp}.relative_bias.embedding.weight"),
    ]
    if ffn_layer == 2:  # the decoder's cross-attention
        x = f"{B}layer.1.EncDecAttention."
        rules += [
            Rename(f"{x}q.weight", f"{T}cross.q.weight"),
            Concat((f"{x}k.weight", f"{x}v.weight"), f"{T}cross.kv.weight"),
            Rename(f"{x}o.weight", f"{T}cross.out.weight"),
            Rename(f"{B}layer.1.layer_norm.weight", f"{T}cross_norm.weight"),
        ]
    ff = f"{B}layer.{ffn_layer}."
    if gated:
        rules.append(Concat((f"{ff}DenseReluDense.wi_0.weight", f"{ff}DenseReluDense.wi_1.weight"),
                            f"{T}ffn.fc1.weight"))
    else:
        rules.append(Rename(f"{ff}DenseReluDense.wi.weight", f"{T}ffn.fc1.weight"))
    return rules + [
        Rename(f"{ff}DenseReluDense.wo.weight", f"{T}ffn.fc2.weight"),
        Rename(f"{ff}layer_norm.weight", f"{T}ffn_norm.weight"),
        Rename(f"{side}.final_layer_norm.weight", f"{tp}.final_norm.weight"),
    ]


def rules(hf: dict[str, Any], base: bool = False) -> list[Rule]:
    """T5ForConditionalGeneration (or T5Model with `base`: no lm_head) for this config."""
    gated = _gated(hf)
    out: list[Rule] = [
        Rename("shared.weight", "stack.embedding.parts.word.embedding.weight"),
        *_stack_rules("encoder", "stack.encoder", 1, gated),
        *_stack_rules("decoder", "decoder", 2, gated),
        Tied("encoder.embed_tokens.weight", "shared.weight"),
        Tied("decoder.embed_tokens.weight", "shared.weight"),
    ]
    if base:
        return out
    if _tied(hf):
        return [*out, Tied("lm_head.weight", "shared.weight")]
    return [*out, Rename("lm_head.weight", "targets.lm.decoder.weight")]


def _activation(hf: dict[str, Any]) -> str:
    proj = str(hf.get("feed_forward_proj", "relu"))
    act = hf.get("dense_act_fn") or proj.split("-")[-1]
    if proj == "gated-gelu":
        act = "gelu_new"  # as transformers reads it
    if act not in _ACT_FROM_HF:
        raise TpError(f"T5 feed_forward_proj {proj!r} has no tp equivalent",
                      hint=f"supported activations: {', '.join(_ACT_FROM_HF)}")
    return _ACT_FROM_HF[act]


def config_to_recipe(hf: dict[str, Any]) -> dict[str, Any]:
    """HF T5Config (config.json as a dict) -> the recipe's model section."""
    d_model, heads = hf["d_model"], hf["num_heads"]
    d_kv = hf.get("d_kv") or d_model // heads
    # only a head size that differs from tp's default is written: a plain T5 keeps its recipe
    head_size = None if d_kv * heads == d_model else d_kv
    activation = _activation(hf)
    rescale = _tied(hf)

    def stack(layers: int) -> dict[str, Any]:
        return {
            "name": "transformer",
            "layers": layers,
            "heads": heads,
            **({"head_size": head_size} if head_size is not None else {}),
            "ffn_size": hf["d_ff"],
            "activation": activation,
            "ffn_gate": _gated(hf),
            "pre_norm": True,
            "norm": "rmsnorm",
            "bias": False,
            "position": "relative",
            "relative_buckets": hf.get("relative_attention_num_buckets", 32),
            "relative_max_distance": hf.get("relative_attention_max_distance", 128),
            "scale_attention": False,
        }

    return {
        "hidden_size": d_model,
        "vocab_size": hf["vocab_size"],
        "dropout": hf.get("dropout_rate", 0.1),
        "norm_eps": hf.get("layer_norm_epsilon", 1e-6),
        "init_std": 0.02,
        "embedding_norm": "none",
        "share_embeddings": True,
        "tie_weights": _tied(hf),
        "embedding": {"word": {}},
        "encoder": stack(hf["num_layers"]),
        "tgt_embedding": {"word": {}},
        "decoder": stack(hf.get("num_decoder_layers") or hf["num_layers"]),
        "target": {"lm": {"rescale_hidden": rescale}},
    }


def recipe_to_config(spec: Any, vocab_size: int) -> dict[str, Any]:
    """A validated tpcli.recipes.config.ModelSpec of the t5 recipe -> HF T5Config dict."""
    stack = spec.stacks.get("")
    if (stack is None or stack.encoder is None or spec.decoder is None
            or stack.encoder.name != "transformer" or spec.decoder.name != "transformer"):
        raise TpError("the t5 converter needs a transformer encoder and a transformer decoder")
    if [m.name for m in stack.embedding] != ["word"] or [m.name for m in spec.tgt_embedding] != [
            "word"]:
        raise TpError("the t5 converter needs embedding [word] and tgt_embedding [word]")
    o = spec.options
    if not o.share_embeddings or o.embedding_norm != "none":
        raise TpError("the t5 converter needs share_embeddings and embedding_norm none")
    enc, dec = stack.encoder.options, spec.decoder.options
    keys = ("heads", "ffn_size", "activation", "ffn_gate", "relative_buckets",
            "relative_max_distance")
    for side in (enc, dec):
        if not (side.pre_norm and side.norm == "rmsnorm" and not side.bias
                and side.position == "relative" and not side.scale_attention
                and side.kv_heads in (None, side.heads) and not side.share_layers):
            raise TpError("the t5 converter needs pre-norm rmsnorm transformers without biases, "
                          "with relative positions and unscaled attention")
    if any(getattr(enc, k) != getattr(dec, k) for k in keys):
        raise TpError(f"the t5 converter needs the same {', '.join(keys)} on both sides")
    d_kv = {side.head_size or o.hidden_size // side.heads for side in (enc, dec)}
    if len(d_kv) != 1:
        raise TpError(f"the t5 converter needs one head size on both sides, got "
                      f"{sorted(d_kv)}", hint="set the same model.encoder.head_size and "
                      "model.decoder.head_size (T5 has one d_kv)")
    targets = {t.name: t.options for t in spec.targets}
    lm = targets.get("lm")
    if set(targets) != {"lm"} or lm.bias or lm.prefix_lm:
        raise TpError("the t5 converter needs the single target lm, without bias")
    if lm.rescale_hidden != o.tie_weights:
        raise TpError("the t5 converter needs lm.rescale_hidden exactly when the head is tied",
                      hint="T5 scales the decoder output before its tied head only")
    act = _ACT_TO_HF[enc.activation]
    if enc.ffn_gate:
        proj = "gated-gelu" if act == "gelu_new" else f"gated-{act}"
    else:
        proj = act
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": o.vocab_size or vocab_size,
        "d_model": o.hidden_size,
        "d_kv": d_kv.pop(),
        "d_ff": enc.ffn_size,
        "num_layers": enc.layers,
        "num_decoder_layers": dec.layers,
        "num_heads": enc.heads,
        "relative_attention_num_buckets": enc.relative_buckets,
        "relative_attention_max_distance": enc.relative_max_distance,
        "dropout_rate": o.dropout,
        "layer_norm_epsilon": o.norm_eps,
        "feed_forward_proj": proj,
        "tie_word_embeddings": o.tie_weights,
    }


def processor(hf: dict[str, Any]) -> dict[str, Any]:
    """Span corruption with sentinels."""
    return {"name": "t5", "seq_length": 512}


CONVERTER = Converter(
    name="t5",
    hf_architecture="T5ForConditionalGeneration",
    # the name transformers used before 3.0; early t5-* config.json files still carry it
    also_reads=("T5WithLMHeadModel",),
    rules=(),
    config_to_recipe=config_to_recipe,
    recipe_to_config=recipe_to_config,
    base_architecture="T5Model",
    config_rules=rules,
    processor=processor,
    # relative positions take any length; 512 is what T5 was trained on and HF's t5 tokenizers
    # ship
    max_length=lambda hf: 512,
)
