"""GPT-2 <-> tp: the key map and config translation for `transformers`' GPT-2.

tp's GPT-2 is the recipe `embedding: [word, pos]`, `embedding_norm: none`, `encoder: transformer`
with `pre_norm: true, mask: causal, activation: gelu_tanh` (its final norm is HF's `ln_f`) and
`target: lm`, tied to the word embedding. HF's GPT-2 uses Conv1D layers, whose weight is stored
(in, out), the transpose of nn.Linear's (out, in); its fused q|k|v columns are in tp's qkv row
order, so one transpose suffices. `lm_head.weight` is the word embedding under a second name.
"""

from __future__ import annotations

from typing import Any

from tpcli.convert import Converter, Drop, Rename, Rule, Tied, Transpose
from tpcli.errors import TpError

_TP_LAYER = "stack.encoder.layers.{i}."
_ACT_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                "relu": "relu", "silu": "silu", "swish": "silu"}
_ACT_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


def _norm(hf: str, tp: str) -> list[Rule]:
    return [Rename(f"{hf}.{p}", f"{tp}.{p}") for p in ("weight", "bias")]


def _conv1d(hf: str, tp: str) -> list[Rule]:
    """A Conv1D (weight (in, out)) <-> an nn.Linear (weight (out, in)); the bias is the same."""
    return [Transpose(f"{hf}.weight", f"{tp}.weight"), Rename(f"{hf}.bias", f"{tp}.bias")]


def body_rules(prefix: str) -> list[Rule]:
    """Embeddings, layers and ln_f; `prefix` is "transformer." in GPT2LMHeadModel, "" headless."""
    L = f"{prefix}h.{{i}}."
    return [
        Rename(f"{prefix}wte.weight", "stack.embedding.parts.word.embedding.weight"),
        Rename(f"{prefix}wpe.weight", "stack.embedding.parts.pos.embedding.weight"),
        # causal-mask buffers that older checkpoints saved (exact keys: not c_attn.bias)
        Drop(f"{L}attn.bias"),
        Drop(f"{L}attn.masked_bias"),
        *_norm(f"{L}ln_1", f"{_TP_LAYER}attn_norm"),
        *_conv1d(f"{L}attn.c_attn", f"{_TP_LAYER}attn.qkv"),
        *_conv1d(f"{L}attn.c_proj", f"{_TP_LAYER}attn.out"),
        *_norm(f"{L}ln_2", f"{_TP_LAYER}ffn_norm"),
        *_conv1d(f"{L}mlp.c_fc", f"{_TP_LAYER}ffn.fc1"),
        *_conv1d(f"{L}mlp.c_proj", f"{_TP_LAYER}ffn.fc2"),
        *_norm(f"{prefix}ln_f", "stack.encoder.final_norm"),
    ]


def lm_rules() -> list[Rule]:
    """GPT2LMHeadModel: body + the tied LM head (after the rename that makes wte)."""
    return [*body_rules("transformer."), Tied("lm_head.weight", "transformer.wte.weight")]


def config_to_recipe(hf: dict[str, Any]) -> dict[str, Any]:
    """HF GPT2Config (config.json as a dict) -> the recipe's model section."""
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACT_FROM_HF:
        raise TpError(f"GPT-2 activation_function {act!r} has no tp equivalent",
                      hint=f"supported: {', '.join(_ACT_FROM_HF)}")
    if not hf.get("tie_word_embeddings", True):
        raise TpError("this GPT-2 has an untied lm_head; the gpt2 converter maps a tied one",
                      hint="tie the checkpoint's lm_head to wte, or convert the headless model")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
        raise TpError("GPT-2 attention scaling other than 1/sqrt(head_dim) is not supported",
                      hint="tp's attention scales by 1/sqrt(head_dim), as the released GPT-2")
    hidden = hf["n_embd"]
    return {
        "hidden_size": hidden,
        "vocab_size": hf["vocab_size"],
        "dropout": hf.get("resid_pdrop", 0.1),
        "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
        "init_std": hf.get("initializer_range", 0.02),
        "embedding_norm": "none",
        "tie_weights": True,
        "embedding": {"word": {}, "pos": {"max_length": hf.get("n_positions", 1024)}},
        "encoder": {
            "name": "transformer",
            "layers": hf["n_layer"],
            "heads": hf["n_head"],
            "ffn_size": hf.get("n_inner") or 4 * hidden,
            "activation": _ACT_FROM_HF[act],
            "pre_norm": True,
            "mask": "causal",
            "attention_dropout": hf.get("attn_pdrop", 0.1),
            "bias": True,
        },
        "target": {"lm": {}},
    }


def recipe_to_config(spec: Any, vocab_size: int) -> dict[str, Any]:
    """A validated tpcli.recipes.config.ModelSpec of the GPT-2 recipe -> HF GPT2Config dict."""
    stack = spec.stacks.get("")
    if stack is None or stack.encoder is None or stack.encoder.name != "transformer":
        raise TpError("the gpt2 converter needs a single-stream model with a transformer encoder")
    emb = {m.name: m.options for m in stack.embedding}
    if set(emb) != {"word", "pos"}:
        raise TpError(f"the gpt2 converter needs embedding [word, pos], not {list(emb)}")
    enc = stack.encoder.options
    if not enc.pre_norm or enc.mask != "causal" or not enc.bias:
        raise TpError("the gpt2 converter needs a pre-norm, causal encoder with biases",
                      hint="model.encoder: {pre_norm: true, mask: causal, bias: true}")
    o = spec.options
    targets = {t.name: t.options for t in spec.targets}
    if set(targets) != {"lm"} or targets["lm"].bias or not o.tie_weights:
        raise TpError("the gpt2 converter needs the single target lm, tied, without a bias")
    if o.embedding_norm != "none":
        raise TpError("the gpt2 converter needs model.embedding_norm=none")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": o.vocab_size or vocab_size,
        "n_positions": emb["pos"].max_length,
        "n_embd": o.hidden_size,
        "n_layer": enc.layers,
        "n_head": enc.heads,
        "n_inner": enc.ffn_size,
        "activation_function": _ACT_TO_HF[enc.activation],
        "resid_pdrop": o.dropout,
        "embd_pdrop": o.dropout,
        "attn_pdrop": o.dropout if enc.attention_dropout is None else enc.attention_dropout,
        "layer_norm_epsilon": o.norm_eps,
        "initializer_range": o.init_std,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
    }


def processor(hf: dict[str, Any]) -> dict[str, Any]:
    """Packed documents for next-token prediction, one full context per example."""
    return {"name": "lm", "seq_length": hf.get("n_positions", 1024)}


CONVERTER = Converter(
    name="gpt2",
    hf_architecture="GPT2LMHeadModel",
    rules=lm_rules(),
    config_to_recipe=config_to_recipe,
    recipe_to_config=recipe_to_config,
    base_architecture="GPT2Model",
    base_rules=body_rules(""),
    processor=processor,
)
