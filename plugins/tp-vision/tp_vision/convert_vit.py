"""ViT <-> tp: the key map and config translation for `transformers`' ViT (and what BEiT shares).

tp's ViT is the recipe `embedding: [patch, pos]` (no embedding norm), a pre-norm `transformer`
encoder ending in a norm, and the `cls` target on the class token (`pooling: first`):

    ViTForImageClassification (model_type vit)  <->  target cls {labels, pooling: first}
    ViTModel (headless)                          <->  the body; its pooler (dense + tanh on the
                                                      class token) is the cls target's `pooler`

ViTModel's pooler maps to `cls.pooler` (the same Linear + tanh, BERT's), so a headless ViT keeps
it (`tp convert` starts only the classifier fresh); ViTForImageClassification has no pooler
(transformers builds its ViTModel with add_pooling_layer=False and classifies the class token
directly), so a tp model whose cls head has `pooler: true` has no HF counterpart and is refused.

Key spellings. Files hold the names transformers has always saved (`vit.encoder.layer.0.
attention.attention.query.weight`); transformers 5 renames them in memory (`vit.layers.0.
attention.q_proj.weight`) and back when it saves. tp reads either spelling and writes the one
the installed transformers holds in memory (what `tp convert --to hf` checks the export against
and what `from_pretrained` loads in that version). q, k and v are fused into tp's `attn.qkv`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable

from tpcli.convert import Concat, Converter, Drop, Rename, Reshape, Rule
from tpcli.errors import TpError

from tp_vision.hf_preprocessing import ImagePreprocessing, check_batch, classification_task

HfConfig = dict[str, Any]
PATCH, POS = "stack.embedding.parts.patch", "stack.embedding.parts.pos.embedding.weight"
LAYER = "stack.encoder.layers.{i}."
FINAL_NORM = "stack.encoder.final_norm"

# HF hidden_act -> tp activation, and back (the first HF name of each)
ACT_FROM_HF = {"gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu",
               "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
ACT_TO_HF = {"gelu": "gelu", "relu": "relu", "silu": "silu", "gelu_tanh": "gelu_new"}


# ------------------------------------------------------------------------ the two spellings

@dataclass(frozen=True)
class Names:
    """The HF names of one layer's parts (after `{prefix}{layer}`) in one spelling."""

    layer: str
    query: str
    key: str
    value: str
    out: str
    fc1: str
    fc2: str
    layer_table: str  # BEiT: a layer's own relative position table
    shared_table: str  # BEiT: the table all layers share (after the model prefix)


LEGACY = Names("encoder.layer.{i}.", "attention.attention.query", "attention.attention.key",
               "attention.attention.value", "attention.output.dense", "intermediate.dense",
               "output.dense",
               "attention.attention.relative_position_bias.relative_position_bias_table",
               "encoder.relative_position_bias.relative_position_bias_table")
CURRENT = Names("layers.{i}.", "attention.q_proj", "attention.k_proj", "attention.v_proj",
                "attention.o_proj", "mlp.fc1", "mlp.fc2",
                "relative_position_bias.relative_position_bias_table",
                "shared_position_bias.relative_position_bias_table")
LEGACY_KEY = re.compile(r"(^|\.)encoder\.layer\.\d+\.")  # only the legacy spelling has these


@functools.cache
def memory_spelling(family: str) -> Names:
    """The spelling of the installed transformers' in-memory state dict (`vit` or `beit`): a
    one-layer model built on the meta device tells. LEGACY without transformers."""
    try:
        import torch
        import transformers
    except ImportError:
        return LEGACY
    config_cls, model_cls = {"vit": (transformers.ViTConfig, transformers.ViTModel),
                             "beit": (transformers.BeitConfig, transformers.BeitModel)}[family]
    config = config_cls(hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=4, image_size=4, patch_size=4)
    with torch.device("meta"):
        keys = model_cls(config).state_dict().keys()
    return LEGACY if any(LEGACY_KEY.search(k) for k in keys) else CURRENT


@dataclass(frozen=True)
class Spelled:
    """A key map given in both spellings (see the module docstring): HF -> tp applies the one
    the source's keys are in, tp -> HF the installed transformers' in-memory one."""

    family: str
    legacy: tuple[Rule, ...]
    current: tuple[Rule, ...]

    def apply(self, run: Any) -> None:
        if run.direction == "hf_to_tp":
            old = any(LEGACY_KEY.search(k) for k in run.src)
        else:
            old = memory_spelling(self.family) is LEGACY
        for rule in self.legacy if old else self.current:
            rule.apply(run)


def spelled(family: str, build: Callable[[HfConfig, bool, Names], list[Rule]], hf: HfConfig,
            base: bool) -> list[Rule]:
    """`build(hf, base, names)`'s rules in both spellings, as one rule."""
    return [Spelled(family, tuple(build(hf, base, LEGACY)), tuple(build(hf, base, CURRENT)))]


# ------------------------------------------------------------------------ shared rule pieces

def pair(hf: str, tp: str, optional: bool = False) -> list[Rule]:
    """weight and bias of one Linear / LayerNorm / Conv2d."""
    return [Rename(f"{hf}.{p}", f"{tp}.{p}", optional) for p in ("weight", "bias")]


def attention_rules(layer: str, n: Names, qkv_bias: str) -> list[Rule]:
    """HF's separate q, k, v under `layer` <-> tp's fused qkv; the biases as `qkv_bias` says
    (all: fused; qv: BEiT's q and v biases, tp's `q_bias` / `v_bias`; none)."""
    parts = (n.query, n.key, n.value)
    rules: list[Rule] = [Concat(tuple(f"{layer}{p}.weight" for p in parts),
                                f"{LAYER}attn.qkv.weight")]
    if qkv_bias == "all":
        rules.append(Concat(tuple(f"{layer}{p}.bias" for p in parts), f"{LAYER}attn.qkv.bias"))
    elif qkv_bias == "qv":
        rules += [Rename(f"{layer}{n.query}.bias", f"{LAYER}attn.q_bias"),
                  Rename(f"{layer}{n.value}.bias", f"{LAYER}attn.v_bias")]
    return [*rules, *pair(f"{layer}{n.out}", f"{LAYER}attn.out"),
            *pair(f"{layer}layernorm_before", f"{LAYER}attn_norm"),
            *pair(f"{layer}{n.fc1}", f"{LAYER}ffn.fc1"),
            *pair(f"{layer}{n.fc2}", f"{LAYER}ffn.fc2"),
            *pair(f"{layer}layernorm_after", f"{LAYER}ffn_norm")]


def token_rule(hf: str, tp: str, hidden: int) -> Rule:
    """A (1, 1, H) token (class, mask) <-> tp's (H,)."""
    return Reshape(hf, tp, (1, 1, hidden), (hidden,))


# ------------------------------------------------------------------------ shared config pieces

def architecture(hf: HfConfig, default: str) -> str:
    archs = hf.get("architectures") or [default]
    return str(archs[0])


def hf_activation(hf: HfConfig, family: str) -> str:
    act = hf.get("hidden_act", "gelu")
    if act not in ACT_FROM_HF:
        raise TpError(f"{family} hidden_act {act!r} has no tp equivalent",
                      hint=f"tp converts hidden_act {', '.join(ACT_FROM_HF)}")
    return ACT_FROM_HF[act]


def num_labels(hf: HfConfig, family: str) -> int:
    """The classifier's outputs (num_labels, or the length of id2label); at least two."""
    n = hf.get("num_labels") or len(hf.get("id2label") or {}) or 2
    if n < 2:
        raise TpError(f"{family} num_labels={n} is a regression head, not a classifier; tp's "
                      "`cls` target needs two classes or more",
                      hint="convert a classification checkpoint (num_labels >= 2)")
    return int(n)


def geometry(hf: HfConfig, family: str) -> tuple[Any, Any, int]:
    """(image_size, patch_size) as tp's patch options take them (an int, or [h, w]) and the
    number of patches; TpError when the image does not split into whole patches."""
    def side(v: Any) -> tuple[int, int]:
        return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))

    (h, w), (ph, pw) = side(hf.get("image_size", 224)), side(hf.get("patch_size", 16))
    if h % ph or w % pw:
        raise TpError(f"{family} image_size {h}x{w} does not split into whole {ph}x{pw} patches "
                      "(patch_size); tp's patch embedding needs it to",
                      hint="convert a checkpoint whose image_size is a multiple of patch_size")
    image = h if h == w else [h, w]
    patch = ph if ph == pw else [ph, pw]
    return image, patch, (h // ph) * (w // pw)


def model_options(hf: HfConfig) -> dict[str, Any]:
    """The model-wide options of a ViT-family recipe."""
    return {"hidden_size": hf["hidden_size"], "dropout": hf.get("hidden_dropout_prob", 0.0),
            "norm_eps": hf.get("layer_norm_eps", 1e-12),
            "init_std": hf.get("initializer_range", 0.02), "embedding_norm": "none"}


def encoder_section(hf: HfConfig, family: str, **options: Any) -> dict[str, Any]:
    """The pre-norm transformer of a ViT-family recipe, plus `options`."""
    return {"name": "transformer", "layers": hf["num_hidden_layers"],
            "heads": hf["num_attention_heads"], "ffn_size": hf["intermediate_size"],
            "activation": hf_activation(hf, family), "pre_norm": True,
            "attention_dropout": hf.get("attention_probs_dropout_prob", 0.0), **options}


def vision_body(spec: Any, family: str) -> tuple[dict[str, Any], Any, list[str]]:
    """The embeddings (name -> options) and encoder options of a single-stream image model,
    and what in the model section a ViT-family HF model cannot express."""
    stack = spec.stacks.get("")
    if stack is None or stack.encoder is None or stack.encoder.name != "transformer" \
            or spec.decoder is not None:
        raise TpError(f"the {family} converter needs a single-stream model with a transformer "
                      "encoder and no decoder")
    enc, o = stack.encoder.options, spec.options
    want = {"model.embedding_norm": (o.embedding_norm, "none"),
            "model.embedding_size": (o.embedding_size, None),
            "model.encoder.pre_norm": (enc.pre_norm, True),
            "model.encoder.mask": (enc.mask, "fully_visible"),
            "model.encoder.norm": (enc.norm, "layernorm"),
            "model.encoder.bias": (enc.bias, True),
            "model.encoder.ffn_gate": (enc.ffn_gate, False),
            "model.encoder.scale_attention": (enc.scale_attention, True),
            "model.encoder.share_layers": (enc.share_layers, False),
            "model.encoder.kv_heads": (enc.kv_heads or enc.heads, enc.heads)}
    problems = [f"{path}={got} (needs {need})" for path, (got, need) in want.items()
                if got != need]
    emb = {m.name: m.options for m in stack.embedding}
    patch = emb.get("patch", emb.get("masked_patch"))
    if patch is not None and (not patch.class_token or not patch.bias):
        problems.append("model.embedding.patch needs class_token=true and bias=true")
    return emb, enc, problems


def refuse(family: str, arch: str, problems: list[str]) -> None:
    if problems:
        raise TpError(f"the {family} converter cannot express this model as {arch}: "
                      + "; ".join(problems),
                      hint="keep the checkpoint in tp format, or change the options named")


def hf_body(o: Any, enc: Any, patch: Any) -> dict[str, Any]:
    """HF config keys every ViT-family export shares."""
    def listed(v: Any) -> Any:
        return v if isinstance(v, int) else list(v)

    return {"hidden_size": o.hidden_size, "num_hidden_layers": enc.layers,
            "num_attention_heads": enc.heads, "intermediate_size": enc.ffn_size,
            "hidden_act": ACT_TO_HF[enc.activation], "hidden_dropout_prob": o.dropout,
            "attention_probs_dropout_prob": o.dropout if enc.attention_dropout is None
            else enc.attention_dropout,
            "initializer_range": o.init_std, "layer_norm_eps": o.norm_eps,
            "image_size": listed(patch.image_size), "patch_size": listed(patch.patch_size),
            "num_channels": patch.channels}


# ------------------------------------------------------------------------ ViT

def vit_rules(hf: HfConfig, base: bool, n: Names) -> list[Rule]:
    """ViTForImageClassification (`vit.` prefix, classifier) or the headless ViTModel (no
    prefix, its pooler when saved) in spelling `n`."""
    p, hidden = ("" if base else "vit."), hf["hidden_size"]
    e = f"{p}embeddings."
    rules = [token_rule(f"{e}cls_token", f"{PATCH}.cls_token", hidden),
             Reshape(f"{e}position_embeddings", POS, (1, -1, hidden), (-1, hidden)),
             *pair(f"{e}patch_embeddings.projection", f"{PATCH}.projection"),
             *attention_rules(f"{p}{n.layer}", n, "all" if hf.get("qkv_bias", True) else "none"),
             *pair(f"{p}layernorm", FINAL_NORM)]
    if base:
        return [*rules, *pair("pooler.dense", "targets.cls.pooler", optional=True)]
    # a pooler saved beside ViTForImageClassification's weights is one it never runs
    return [*rules, *pair("classifier", "targets.cls.classifier"),
            Drop("vit.pooler.dense.weight"), Drop("vit.pooler.dense.bias")]


def rules(hf: HfConfig, base: bool) -> list[Rule]:
    return spelled("vit", vit_rules, hf, base)


def config_to_recipe(hf: HfConfig) -> dict[str, Any]:
    """HF ViTConfig (config.json as a dict) -> the recipe's model section."""
    headless = architecture(hf, "ViTForImageClassification") == "ViTModel"
    image, patch, n = geometry(hf, "ViT")
    head: dict[str, Any] = {"labels": num_labels(hf, "ViT"), "pooling": "first"}
    if headless:
        if hf.get("pooler_act", "tanh") != "tanh" or \
                hf.get("pooler_output_size") not in (None, hf["hidden_size"]):
            raise TpError("ViT's pooler must be tanh over hidden_size outputs (pooler_act, "
                          "pooler_output_size) to be tp's cls pooler",
                          hint="convert a checkpoint with the default pooler")
        head["pooler"] = True
    qkv = "all" if hf.get("qkv_bias", True) else "none"
    return {**model_options(hf),
            "embedding": {"patch": {"image_size": image, "patch_size": patch,
                                    "channels": hf.get("num_channels", 3)},
                          "pos": {"max_length": n + 1}},
            "encoder": encoder_section(hf, "ViT", qkv_bias=qkv),
            "target": {"cls": head}}


def recipe_to_config(spec: Any, vocab_size: int) -> HfConfig:
    """A validated ModelSpec of a ViT recipe -> HF ViTConfig dict (ViTForImageClassification)."""
    emb, enc, problems = vision_body(spec, "vit")
    if list(emb) != ["patch", "pos"]:
        raise TpError(f"the vit converter needs embedding [patch, pos], not {list(emb)}")
    patch, pos = emb["patch"], emb["pos"]
    image, psize, n = geometry({"image_size": patch.image_size, "patch_size": patch.patch_size},
                               "ViT")
    qkv = enc.qkv_bias or ("all" if enc.bias else "none")
    final = enc.pre_norm if enc.final_norm is None else enc.final_norm
    problems += [f"{path}={got} (needs {need})" for path, (got, need) in {
        "model.embedding.pos.max_length": (pos.max_length, n + 1),
        "model.embedding.pos.offset": (pos.offset, 0),
        "model.encoder.position": (enc.position, "none"),
        "model.encoder.layer_scale": (enc.layer_scale, None),
        "model.encoder.final_norm": (final, True)}.items() if got != need]
    if qkv == "qv":
        problems.append("model.encoder.qkv_bias=qv (ViT has all or none)")
    problems += cls_problems(spec)
    refuse("vit", "ViTForImageClassification", problems)
    cls = spec.targets[0].options
    return {"architectures": ["ViTForImageClassification"], "model_type": "vit",
            **hf_body(spec.options, enc, patch), "qkv_bias": qkv == "all",
            "num_labels": cls.labels}


def cls_problems(spec: Any, pooled: bool = False) -> list[str]:
    """Why the targets are not one `cls` head on the class token (or, `pooled`, on the stack's
    pooling), as an HF image classifier's."""
    names = [t.name for t in spec.targets]
    if names != ["cls"]:
        return [f"target {names} (needs [cls])"]
    cls, pooling = spec.targets[0].options, spec.stacks[""].pooling
    problems = []
    if cls.pooler:
        problems.append("model.target.cls.pooler=true (HF's image classifiers have no pooler: "
                        "fine-tune with pooler=false)")
    if not pooled and (pooling is not None and pooling.name != "first"
                       or pooling is None and cls.pooling != "first"):
        problems.append("the cls head must read the class token (model.target.cls.pooling=first, "
                        "no other model.pooling)")
    return problems


CONVERTER = Converter(
    name="vit",
    hf_architecture="ViTForImageClassification",
    rules=(),
    config_to_recipe=config_to_recipe,
    recipe_to_config=recipe_to_config,
    base_architecture="ViTModel",
    config_rules=rules,
    preprocessing=ImagePreprocessing("ViTImageProcessor"),
    check_batch=check_batch,
    task=classification_task,
)
