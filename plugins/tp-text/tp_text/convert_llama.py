"""LLaMA <-> tp: the key map and config translation for `transformers`' LlamaForCausalLM.

tp's LLaMA is `embedding: [word]` (no position table), a causal pre-norm `transformer` with
`norm: rmsnorm`, `position: rotary`, `ffn_gate: true` (SwiGLU: activation silu), no biases, and
`kv_heads` for grouped-query attention, then `target: lm`. The key map depends on the config:
with grouped-query attention the fused `attn.qkv` rows are [q (heads * head_dim); k (kv_heads *
head_dim); v (kv_heads * head_dim)], so splitting it back needs the sizes (`config_rules`). The
gated FFN's fused `fc1` rows are [gate_proj; up_proj]. `lm_head` is its own matrix unless the
config ties it to the embedding (`tie_word_embeddings`).
"""

from __future__ import annotations

from typing import Any

from tpcli.convert import Concat, Converter, Drop, Rename, Rule, Tied
from tpcli.errors import TpError

_L = "model.layers.{i}."
_TP_LAYER = "stack.encoder.layers.{i}."
_ACT_FROM_HF = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
_ACT_TO_HF = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}


def _sizes(hf: dict[str, Any]) -> tuple[int, int, int]:
    """Rows of W_q, W_k, W_v."""
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    kv = hf.get("num_key_value_heads") or heads
    return heads * head_dim, kv * head_dim, kv * head_dim


def rules(hf: dict[str, Any], base: bool = False) -> list[Rule]:
    """LlamaForCausalLM (or LlamaModel with `base`: no `model.` prefix, no lm_head)."""
    prefix = "" if base else "model."
    L = _L.replace("model.", prefix)
    bias = bool(hf.get("attention_bias", False))
    params = ("weight", "bias") if bias else ("weight",)
    out: list[Rule] = [
        Rename(f"{prefix}embed_tokens.weight", "stack.embedding.parts.word.embedding.weight"),
        Drop(f"{L}self_attn.rotary_emb.inv_freq"),  # a buffer old checkpoints saved
    ]
    for p in params:
        qkv = tuple(f"{L}self_attn.{n}_proj.{p}" for n in ("q", "k", "v"))
        out.append(Concat(qkv, f"{_TP_LAYER}attn.qkv.{p}", sizes=_sizes(hf)))
        out.append(Rename(f"{L}self_attn.o_proj.{p}", f"{_TP_LAYER}attn.out.{p}"))
        out.append(Concat((f"{L}mlp.gate_proj.{p}", f"{L}mlp.up_proj.{p}"),
                          f"{_TP_LAYER}ffn.fc1.{p}"))
        out.append(Rename(f"{L}mlp.down_proj.{p}", f"{_TP_LAYER}ffn.fc2.{p}"))
    out += [
        Rename(f"{L}input_layernorm.weight", f"{_TP_LAYER}attn_norm.weight"),
        Rename(f"{L}post_attention_layernorm.weight", f"{_TP_LAYER}ffn_norm.weight"),
        Rename(f"{prefix}norm.weight", "stack.encoder.final_norm.weight"),
    ]
    if base:
        return out
    if hf.get("tie_word_embeddings", False):
        return [*out, Tied("lm_head.weight", "model.embed_tokens.weight")]
    return [*out, Rename("lm_head.weight", "targets.lm.decoder.weight")]


def _rope_theta(hf: dict[str, Any]) -> float:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else None
    if kind not in ("default", None):
        raise TpError(f"LLaMA rope_type {kind!r} is not supported",
                      hint="tp's rotary positions are plain RoPE (rope_type default)")
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    return float(theta if theta is not None else hf.get("rope_theta", 10000.0))


def config_to_recipe(hf: dict[str, Any]) -> dict[str, Any]:
    """HF LlamaConfig (config.json as a dict) -> the recipe's model section."""
    act = hf.get("hidden_act", "silu")
    if act not in _ACT_FROM_HF:
        raise TpError(f"LLaMA hidden_act {act!r} has no tp equivalent",
                      hint=f"supported: {', '.join(_ACT_FROM_HF)}")
    heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
    if (hf.get("head_dim") or hidden // heads) * heads != hidden:
        raise TpError(f"LLaMA head_dim {hf.get('head_dim')} x {heads} heads != hidden_size "
                      f"{hidden}", hint="tp's attention has hidden_size / heads per head")
    if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
        raise TpError("LLaMA with attention_bias != mlp_bias is not supported",
                      hint="tp's transformer has one `bias` switch for attention and FFN")
    if hf.get("pretraining_tp", 1) != 1:
        raise TpError("LLaMA pretraining_tp > 1 is not supported")
    kv = hf.get("num_key_value_heads") or heads
    tied = bool(hf.get("tie_word_embeddings", False))
    return {
        "hidden_size": hidden,
        "vocab_size": hf["vocab_size"],
        "dropout": hf.get("attention_dropout", 0.0),
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "init_std": hf.get("initializer_range", 0.02),
        "embedding_norm": "none",
        "tie_weights": tied,
        "embedding": {"word": {}},
        "encoder": {
            "name": "transformer",
            "layers": hf["num_hidden_layers"],
            "heads": heads,
            "kv_heads": None if kv == heads else kv,
            "ffn_size": hf["intermediate_size"],
            "ffn_gate": True,
            "activation": _ACT_FROM_HF[act],
            "pre_norm": True,
            "norm": "rmsnorm",
            "bias": bool(hf.get("attention_bias", False)),
            "position": "rotary",
            "rotary_base": _rope_theta(hf),
            "mask": "causal",
        },
        "target": {"lm": {}},
    }


def recipe_to_config(spec: Any, vocab_size: int) -> dict[str, Any]:
    """A validated tpcli.recipes.config.ModelSpec of the llama-style recipe -> HF LlamaConfig dict."""
    stack = spec.stacks.get("")
    if stack is None or stack.encoder is None or stack.encoder.name != "transformer":
        raise TpError("the llama converter needs a single-stream model with a transformer encoder")
    emb = [m.name for m in stack.embedding]
    if emb != ["word"]:
        raise TpError(f"the llama converter needs embedding [word] (rotary positions), not {emb}")
    enc, o = stack.encoder.options, spec.options
    if not (enc.pre_norm and enc.mask == "causal" and enc.norm == "rmsnorm"
            and enc.position == "rotary" and enc.ffn_gate and enc.scale_attention
            and not enc.share_layers):
        raise TpError("the llama converter needs a causal pre-norm encoder with rmsnorm, rotary "
                      "positions and a gated FFN",
                      hint="model.encoder: {pre_norm: true, mask: causal, norm: rmsnorm, "
                      "position: rotary, ffn_gate: true}")
    targets = {t.name: t.options for t in spec.targets}
    lm = targets.get("lm")
    if set(targets) != {"lm"} or lm.bias or lm.rescale_hidden or lm.prefix_lm:
        raise TpError("the llama converter needs the single target lm, without bias or rescale")
    if o.embedding_norm != "none" or o.embedding_size not in (None, o.hidden_size):
        raise TpError("the llama converter needs model.embedding_norm=none")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": o.vocab_size or vocab_size,
        "hidden_size": o.hidden_size,
        "intermediate_size": enc.ffn_size,
        "num_hidden_layers": enc.layers,
        "num_attention_heads": enc.heads,
        "num_key_value_heads": enc.kv_heads or enc.heads,
        "head_dim": o.hidden_size // enc.heads,
        "hidden_act": _ACT_TO_HF[enc.activation],
        "rms_norm_eps": o.norm_eps,
        "initializer_range": o.init_std,
        "rope_theta": enc.rotary_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": enc.rotary_base},
        "attention_bias": enc.bias,
        "mlp_bias": enc.bias,
        "attention_dropout": o.dropout if enc.attention_dropout is None else enc.attention_dropout,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": o.tie_weights,
    }


def processor(hf: dict[str, Any]) -> dict[str, Any]:
    """Documents packed end to end for next-token prediction."""
    return {"name": "lm", "seq_length": min(2048, hf.get("max_position_embeddings", 2048))}


CONVERTER = Converter(
    name="llama",
    hf_architecture="LlamaForCausalLM",
    rules=(),
    config_to_recipe=config_to_recipe,
    recipe_to_config=recipe_to_config,
    base_architecture="LlamaModel",
    config_rules=rules,
    processor=processor,
)
