"""BEiT <-> tp: the key map and config translation for `transformers`' BEiT, one converter for
its three architectures (model_type beit):

    BeitForMaskedImageModeling (pre-training)  <->  target mim {vocab_size, norm}: HF's
                                                    `layernorm` + `lm_head` over the patches
                                                    (or, exported: a mim target without norm
                                                    after the encoder's final norm, beit-tiny's)
    BeitForImageClassification                 <->  target cls {labels}; with use_mean_pooling
                                                    the stack's pooling is `mean` {skip_first,
                                                    norm} (HF's pooler LayerNorm), else the
                                                    class token after the encoder's final norm
    BeitModel (headless)                       <->  the body (and that pooling)

The body: `patch` (`masked_patch` when use_mask_token), `pos` when
use_absolute_position_embeddings, a pre-norm transformer with `qkv_bias: qv` (BEiT's k has no
bias), `layer_scale` (layer_scale_init_value > 0), `position: relative_2d` over the patch grid
(one table shared by all layers, or one per layer) and a final norm unless use_mean_pooling.

One registration serves the three: the key map (`config_rules`) and the recipe follow config.json's
`architectures[0]`, and `recipe_to_config` picks the architecture from the targets (mim ->
BeitForMaskedImageModeling, cls -> BeitForImageClassification). BeitForImageClassification is
one of its `full_architectures`: read, written and `--check`ed as itself.

Refused (TpError naming the option): non-square image_size or patch_size (HF resamples the 2-D
table of a non-square grid even at its trained size, which is not BEiT's table), both
use_relative_position_bias and use_shared_relative_position_bias (tp adds one table per layer
or one for all). drop_path_rate (stochastic depth in training) has no tp counterpart; it changes
no weight and no output at inference, and an export says 0.0, what tp trains with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tpcli.convert import Converter, Drop, Rename, Reshape, Rule
from tpcli.errors import TpError

from tp_vision.convert_vit import (FINAL_NORM, LAYER, LEGACY, POS, HfConfig, Names,
                                   architecture, attention_rules, cls_problems, encoder_section,
                                   geometry, hf_body, model_options, num_labels, pair, refuse,
                                   spelled, token_rule, vision_body)
from tp_vision.hf_preprocessing import ImagePreprocessing, check_batch, classification_task

MIM, CLS, BASE = "BeitForMaskedImageModeling", "BeitForImageClassification", "BeitModel"
POOLING_NORM = "stack.pooling.norm"
INDEX = "relative_position_bias.relative_position_index"  # a buffer old checkpoints saved


@dataclass(frozen=True)
class OneOf:
    """One HF tensor that a tp model holds under one of several names. BEiT's MIM head norm
    (`layernorm`, with use_mean_pooling) is `targets.mim.norm`, or, in a recipe whose encoder
    ends in its final norm and whose mim target has none (tp's beit-tiny), that final norm: the
    same function. HF -> tp writes the first name; tp -> HF reads whichever the source has."""

    hf: str
    tp: tuple[str, ...]

    def apply(self, run: Any) -> None:
        have = [t for t in self.tp if t in run.src] if run.direction == "tp_to_hf" else []
        Rename(self.hf, (have or self.tp)[0]).apply(run)


def body_rules(hf: HfConfig, p: str, n: Names) -> list[Rule]:
    """Embeddings, the position tables and the layers under prefix `p`, in spelling `n`."""
    hidden, layer = hf["hidden_size"], f"{p}{n.layer}"
    e = f"{p}embeddings."
    emb = "stack.embedding.parts." + ("masked_patch" if hf.get("use_mask_token") else "patch")
    rules = [token_rule(f"{e}cls_token", f"{emb}.cls_token", hidden),
             *pair(f"{e}patch_embeddings.projection", f"{emb}.projection")]
    if hf.get("use_mask_token"):
        rules.append(token_rule(f"{e}mask_token", f"{emb}.mask_token", hidden))
    if hf.get("use_absolute_position_embeddings"):
        rules.append(Reshape(f"{e}position_embeddings", POS, (1, -1, hidden), (-1, hidden)))
    if hf.get("use_shared_relative_position_bias"):
        rules += [Rename(f"{p}{n.shared_table}", "stack.encoder.relative_bias.table"),
                  Drop(f"{p}encoder.{INDEX}")]
    if hf.get("use_relative_position_bias"):
        rules += [Rename(f"{layer}{n.layer_table}", f"{LAYER}relative_bias.table"),
                  Drop(f"{p}{LEGACY.layer}attention.attention.{INDEX}")]
    if hf.get("layer_scale_init_value", 0.1) > 0:  # else HF multiplies by a constant 1.0
        rules += [Rename(f"{layer}lambda_1", f"{LAYER}attn_scale.weight"),
                  Rename(f"{layer}lambda_2", f"{LAYER}ffn_scale.weight")]
    rules += attention_rules(layer, n, "qv")
    if not hf.get("use_mean_pooling", True):  # else HF's `layernorm` is an Identity
        rules += pair(f"{p}layernorm", FINAL_NORM)
    return rules


def beit_rules(hf: HfConfig, base: bool, n: Names) -> list[Rule]:
    """The key map of config.json's architecture (the headless BeitModel with `base`)."""
    mean = hf.get("use_mean_pooling", True)
    if base:
        return [*body_rules(hf, "", n), *(pair("pooler.layernorm", POOLING_NORM) if mean else [])]
    rules = body_rules(hf, "beit.", n)
    if architecture(hf, MIM) == CLS:
        pooler = pair("beit.pooler.layernorm", POOLING_NORM) if mean else []
        return [*rules, *pooler, *pair("classifier", "targets.cls.classifier")]
    head_norm = [OneOf(f"layernorm.{p}", (f"targets.mim.norm.{p}", f"{FINAL_NORM}.{p}"))
                 for p in ("weight", "bias")] if mean else pair("layernorm", "targets.mim.norm")
    return [*rules, *head_norm, *pair("lm_head", "targets.mim.head")]


def rules(hf: HfConfig, base: bool) -> list[Rule]:
    return spelled("beit", beit_rules, hf, base)


def config_to_recipe(hf: HfConfig) -> dict[str, Any]:
    """HF BeitConfig (config.json as a dict) -> the recipe's model section."""
    arch = architecture(hf, MIM)
    image, patch, n = geometry(hf, "BEiT")
    if not isinstance(image, int) or not isinstance(patch, int):
        raise TpError(f"BEiT image_size {image} / patch_size {patch} is not square: transformers "
                      "resamples the relative position table of a non-square grid, tp keeps "
                      "BEiT's", hint="convert a checkpoint with square image_size and patch_size")
    layer_bias = hf.get("use_relative_position_bias", False)
    shared = hf.get("use_shared_relative_position_bias", False)
    if layer_bias and shared:
        raise TpError("BEiT use_relative_position_bias and use_shared_relative_position_bias are "
                      "both true: tp adds one 2-D table per layer or one shared by all, not both",
                      hint="convert a checkpoint that uses one of them")
    mean = hf.get("use_mean_pooling", True)
    scale = hf.get("layer_scale_init_value", 0.1)
    position = {"position": "relative_2d", "grid": [image // patch] * 2,
                "share_position_bias": shared} if layer_bias or shared else {}
    encoder = encoder_section(hf, "BEiT", qkv_bias="qv", layer_scale=scale if scale > 0 else None,
                              final_norm=not mean, **position)
    embedding: dict[str, Any] = {("masked_patch" if hf.get("use_mask_token") else "patch"): {
        "image_size": image, "patch_size": patch, "channels": hf.get("num_channels", 3)}}
    if hf.get("use_absolute_position_embeddings"):
        embedding["pos"] = {"max_length": n + 1}
    section = {**model_options(hf), "vocab_size": hf.get("vocab_size", 8192),
               "embedding": embedding, "encoder": encoder}
    if arch == MIM:
        return {**section, "target": {"mim": {"vocab_size": hf.get("vocab_size", 8192)}}}
    head: dict[str, Any] = {"labels": num_labels(hf, "BEiT"), "pooling": "first"}
    if mean:
        section["pooling"] = {"name": "mean", "skip_first": True, "norm": True}
        # a headless model's pooler LayerNorm is the stack's; `pooler: true` (a fresh part of the
        # head) keeps `tp convert` from dropping HF's `pooler.*` keys as it does for a headless
        # model whose head has no pooler (tpcli/convert/from_hf.py, `_to_tp`)
        head["pooler"] = arch == BASE
    return {**section, "target": {"cls": head}}


def recipe_to_config(spec: Any, vocab_size: int) -> HfConfig:
    """A validated ModelSpec of a BEiT recipe -> HF BeitConfig dict: BeitForMaskedImageModeling
    for a `mim` target, BeitForImageClassification for a `cls` one."""
    emb, enc, problems = vision_body(spec, "beit")
    names = list(emb)
    if not names or names[0] not in ("patch", "masked_patch") or names[1:] not in ([], ["pos"]):
        raise TpError(f"the beit converter needs embedding [patch] or [masked_patch] (then "
                      f"optionally pos), not {names}")
    patch = emb[names[0]]
    image, psize, n = geometry({"image_size": patch.image_size, "patch_size": patch.patch_size},
                               "BEiT")
    if not isinstance(image, int) or not isinstance(psize, int):
        problems.append(f"model.embedding.{names[0]}.image_size / patch_size not square")
    if "pos" in emb and (emb["pos"].max_length != n + 1 or emb["pos"].offset != 0):
        problems.append(f"model.embedding.pos needs max_length={n + 1} and offset=0")
    problems += encoder_problems(enc, image, psize)
    arch, head = (MIM, mim_config(spec, vocab_size, problems)) if [
        t.name for t in spec.targets] == ["mim"] else (CLS, cls_config(spec, problems))
    refuse("beit", arch, problems)
    relative = enc.position == "relative_2d"
    return {"architectures": [arch], "model_type": "beit", **hf_body(spec.options, enc, patch),
            "use_mask_token": names[0] == "masked_patch",
            "use_absolute_position_embeddings": "pos" in emb,
            "use_relative_position_bias": relative and not enc.share_position_bias,
            "use_shared_relative_position_bias": relative and enc.share_position_bias,
            "layer_scale_init_value": enc.layer_scale or 0.0, "drop_path_rate": 0.0, **head}


def encoder_problems(enc: Any, image: Any, patch: Any) -> list[str]:
    """What of the encoder's options BEiT's layers cannot do."""
    problems = []
    if (enc.qkv_bias or ("all" if enc.bias else "none")) != "qv":
        problems.append(f"model.encoder.qkv_bias={enc.qkv_bias} (needs qv: BEiT's q and v biases)")
    if enc.position not in ("none", "relative_2d"):
        problems.append(f"model.encoder.position={enc.position} (needs relative_2d or none)")
    if enc.position == "relative_2d" and isinstance(image, int) and isinstance(patch, int) \
            and tuple(enc.grid or ()) != (image // patch,) * 2:
        problems.append(f"model.encoder.grid={enc.grid} (needs the patch grid "
                        f"{[image // patch] * 2})")
    return problems


def final_norm(spec: Any) -> bool:
    enc = spec.stacks[""].encoder.options
    return enc.pre_norm if enc.final_norm is None else enc.final_norm


def mim_config(spec: Any, vocab_size: int, problems: list[str]) -> HfConfig:
    """HF keys of the MIM head (its visual vocabulary; use_mean_pooling: whether HF's encoder
    lacks the final norm); its problems appended to `problems`. The head's norm is the mim
    target's, or the encoder's final norm when the target has none (the same function)."""
    mim, pooling = spec.targets[0].options, spec.stacks[""].pooling
    final = final_norm(spec)
    if mim.objective != "tokens":
        problems.append("model.target.mim.objective=pixels (HF's BEiT predicts visual tokens)")
    if not mim.norm and not final:
        problems.append("model.target.mim.norm=false with model.encoder.final_norm=false "
                        "(BeitForMaskedImageModeling normalises before its head)")
    if pooling is not None:
        problems.append(f"model.pooling={pooling.name} (BeitForMaskedImageModeling pools nothing)")
    vocab = mim.vocab_size or spec.options.vocab_size or vocab_size
    if not vocab:
        problems.append("no visual vocabulary size (model.target.mim.vocab_size)")
    return {"vocab_size": vocab, "use_mean_pooling": not (final and mim.norm)}


def cls_config(spec: Any, problems: list[str]) -> HfConfig:
    """HF keys of the classification head; its problems appended to `problems`."""
    pooling, final = spec.stacks[""].pooling, final_norm(spec)
    mean = pooling is not None and pooling.name == "mean"
    if mean and (not pooling.options.skip_first or not pooling.options.norm or final):
        problems.append("mean pooling must be BEiT's: model.pooling {name: mean, skip_first: "
                        "true, norm: true} and model.encoder.final_norm=false")
    if not mean and not final:
        problems.append("a head on the class token needs model.encoder.final_norm=true")
    problems += cls_problems(spec, pooled=mean)
    if problems or not spec.targets:
        return {}
    vocab = {"vocab_size": spec.options.vocab_size} if spec.options.vocab_size else {}
    return {"num_labels": spec.targets[0].options.labels, "use_mean_pooling": mean, **vocab}


CONVERTER = Converter(
    name="beit",
    hf_architecture=MIM,
    full_architectures=(CLS,),
    rules=(),
    config_to_recipe=config_to_recipe,
    recipe_to_config=recipe_to_config,
    base_architecture=BASE,
    config_rules=rules,
    preprocessing=ImagePreprocessing("BeitImageProcessor"),
    check_batch=check_batch,
    task=classification_task,
)
