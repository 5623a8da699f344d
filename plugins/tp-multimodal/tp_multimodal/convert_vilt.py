"""ViLT <-> tp: the key map and config translation for `transformers`' ViLT (model_type vilt).

tp's ViLT is the recipe `embedding: [word_patch]` (no embedding norm: the text part has its own
LayerNorm inside), a pre-norm `transformer` encoder ending in a norm, and heads on the joined
sequence:

    ViltForMaskedLM (pre-training)          <->  targets [mlm, itm]: mlm over the text positions,
                                                 tied to the word table; itm's pooler is HF's
                                                 `vilt.pooler` (HF keeps no ITM classifier:
                                                 from HF it starts fresh, to HF it is left out)
    ViltForQuestionAnswering (VQAv2)        <->  target [vqa] (pooler + HF's 2-layer classifier)
    ViltForImageAndTextRetrieval            <->  target [rank] (pooler + rank_output, one
                                                 matching score)
    ViltModel (headless)                    <->  the body and itm's pooler; heads start fresh

Key names are the ones save_pretrained writes; transformers 5 keeps them in memory too (only the
tied `mlm_score.decoder.weight`, the word table, is in memory and not in the file). q, k and v
are fused into tp's `attn.qkv`. The tokenizer (BERT WordPiece) and the image processor
(ViltImageProcessor) travel with the weights: see tp_multimodal.vilt_files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tp_multimodal.vilt_files import ViltPreprocessing
from tp_vision.convert_vit import (LEGACY, architecture, attention_rules, encoder_section,
                                   geometry, hf_activation, model_options, pair, refuse,
                                   token_rule, vision_body, ACT_TO_HF)
from tp_vision.patch import pair as sides
from tpcli.convert import Converter, Drop, Rename, Reshape, Rule, Tied
from tpcli.errors import TpError

HfConfig = dict[str, Any]
FAMILY = "ViLT"
WP = "stack.embedding.parts.word_patch."
MLM, QA, BASE = "ViltForMaskedLM", "ViltForQuestionAnswering", "ViltModel"
RETRIEVAL = "ViltForImageAndTextRetrieval"
WORD = "embeddings.text_embeddings.word_embeddings.weight"


@dataclass(frozen=True)
class LeftOut:
    """tp tensors HF's architecture has no place for (the ITM classifier of a ViltForMaskedLM
    export): consumed and left out going to HF; never produced coming from it (those start
    fresh). `optional` is what the partial-heads import reads."""

    tp: str
    optional: bool = True

    def apply(self, run: Any) -> None:
        if run.direction == "tp_to_hf":
            for key in [k for k in run.src if k.startswith(self.tp)]:
                run.take(key)


def body_rules(hf: HfConfig, p: str) -> list[Rule]:
    """Embeddings, layers and the final norm under prefix `p` ("vilt." or "" headless)."""
    hidden, e = hf["hidden_size"], f"{p}embeddings."
    t = f"{e}text_embeddings."
    return [Rename(f"{t}word_embeddings.weight", f"{WP}word.weight"),
            Rename(f"{t}position_embeddings.weight", f"{WP}text_pos.weight"),
            Rename(f"{t}token_type_embeddings.weight", f"{WP}segment.weight"),
            *pair(f"{t}LayerNorm", f"{WP}text_norm"),
            Drop(f"{t}position_ids"), Drop(f"{t}token_type_ids"),  # buffers old files saved
            token_rule(f"{e}cls_token", f"{WP}cls_token", hidden),
            *pair(f"{e}patch_embeddings.projection", f"{WP}projection"),
            Reshape(f"{e}position_embeddings", f"{WP}image_pos", (1, -1, hidden), (-1, hidden)),
            Rename(f"{e}token_type_embeddings.weight", f"{WP}modality.weight"),
            *attention_rules(f"{p}{LEGACY.layer}", LEGACY,
                             "all" if hf.get("qkv_bias", True) else "none"),
            *pair(f"{p}layernorm", "stack.encoder.final_norm")]


def rules(hf: HfConfig, base: bool) -> list[Rule]:
    """The key map of the config's architecture (or of the headless ViltModel)."""
    if base:
        return [*body_rules(hf, ""), *pair("pooler.dense", "targets.itm.pooler", optional=True)]
    body = body_rules(hf, "vilt.")
    if architecture(hf, MLM) == QA:
        return [*body, *pair("vilt.pooler.dense", "targets.vqa.pooler"),
                *pair("classifier.0", "targets.vqa.hidden"),
                *pair("classifier.1", "targets.vqa.norm"),
                *pair("classifier.3", "targets.vqa.classifier")]
    if architecture(hf, MLM) == RETRIEVAL:
        return [*body, *pair("vilt.pooler.dense", "targets.rank.pooler"),
                *pair("rank_output", "targets.rank.classifier")]
    return [*body, *pair("vilt.pooler.dense", "targets.itm.pooler"),
            LeftOut("targets.itm.classifier."),
            *pair("mlm_score.transform.dense", "targets.mlm.dense"),
            *pair("mlm_score.transform.LayerNorm", "targets.mlm.norm"),
            Rename("mlm_score.decoder.bias", "targets.mlm.bias"),
            # after the renames: tp -> HF copies the word table they produced
            Tied("mlm_score.decoder.weight", f"vilt.{WORD}")]


# ------------------------------------------------------------------------ configs

def config_to_recipe(hf: HfConfig) -> dict[str, Any]:
    """HF ViltConfig (config.json as a dict) -> the recipe's model section."""
    arch = architecture(hf, MLM)
    image, patch, _ = geometry(hf, FAMILY)
    if not hf.get("tie_word_embeddings", True):
        raise TpError("ViLT with tie_word_embeddings=false has no tp counterpart (tp ties the "
                      "MLM decoder to the word table)", hint="convert a tied checkpoint")
    if arch == QA:
        answers = hf.get("num_labels") or len(hf.get("id2label") or {}) or 2
        target: dict[str, Any] = {"vqa": {"answers": int(answers)}}
    elif arch == RETRIEVAL:
        target = {"rank": {}}
    else:
        target = {"mlm": {"activation": hf_activation(hf, FAMILY)}, "itm": {}}
    return {**model_options(hf), "vocab_size": hf["vocab_size"], "tie_weights": True,
            "embedding": {"word_patch": {
                "max_length": hf.get("max_position_embeddings", 40),
                "segments": hf.get("type_vocab_size", 2),
                "modalities": hf.get("modality_type_vocab_size", 2),
                "image_size": image, "patch_size": patch,
                "channels": hf.get("num_channels", 3),
                "max_image_length": int(hf.get("max_image_length", -1))}},
            "encoder": encoder_section(hf, FAMILY),
            "target": target}


def recipe_to_config(spec: Any, vocab_size: int) -> HfConfig:
    """A validated ModelSpec of a ViLT recipe -> HF ViltConfig dict (ViltForMaskedLM for targets
    [mlm, itm], ViltForQuestionAnswering for [vqa], ViltForImageAndTextRetrieval for [rank])."""
    emb, enc, problems = vision_body(spec, "vilt")
    if list(emb) != ["word_patch"]:
        raise TpError(f"the vilt converter needs embedding [word_patch], not {list(emb)}")
    wp, o = emb["word_patch"], spec.options
    final = enc.pre_norm if enc.final_norm is None else enc.final_norm
    qkv = enc.qkv_bias or ("all" if enc.bias else "none")
    problems += [f"{path}={got} (needs {need})" for path, (got, need) in {
        "model.encoder.position": (enc.position, "none"),
        "model.encoder.layer_scale": (enc.layer_scale, None),
        "model.encoder.final_norm": (final, True),
        "model.tie_weights": (o.tie_weights, True)}.items() if got != need]
    if qkv == "qv":
        problems.append("model.encoder.qkv_bias=qv (ViLT has all or none)")
    names = sorted(t.name for t in spec.targets)
    if names == ["rank"]:
        arch, extra = RETRIEVAL, {}
    elif names == ["itm", "mlm"]:
        arch, extra = MLM, {}
        mlm = next(t for t in spec.targets if t.name == "mlm").options
        if mlm.activation != enc.activation:
            problems.append(f"model.target.mlm.activation={mlm.activation} (HF's MLM head uses "
                            f"the encoder's, {enc.activation})")
    elif names == ["vqa"]:
        arch, extra = QA, {"num_labels": spec.targets[0].options.answers}
    else:
        arch, extra = MLM, {}
        problems.append(f"target {names} (needs [mlm, itm]: ViltForMaskedLM, [vqa]: "
                        "ViltForQuestionAnswering, or [rank]: ViltForImageAndTextRetrieval)")
    refuse("vilt", arch, problems)
    (h, w), (ph, pw) = sides(wp.image_size), sides(wp.patch_size)
    if h != w or ph != pw:  # HF resizes its position table on a square grid
        raise TpError(f"the vilt converter needs square images and patches, not {h}x{w} in "
                      f"{ph}x{pw}", hint="HF's ViltEmbeddings assumes image_size // patch_size "
                      "patches a side")
    return {"architectures": [arch], "model_type": "vilt",
            "vocab_size": o.vocab_size or vocab_size, "hidden_size": o.hidden_size,
            "num_hidden_layers": enc.layers,
            "num_attention_heads": enc.heads, "intermediate_size": enc.ffn_size,
            "hidden_act": ACT_TO_HF[enc.activation], "hidden_dropout_prob": o.dropout,
            "attention_probs_dropout_prob": o.dropout if enc.attention_dropout is None
            else enc.attention_dropout, "initializer_range": o.init_std,
            "layer_norm_eps": o.norm_eps, "qkv_bias": qkv == "all",
            "image_size": h, "patch_size": ph, "num_channels": wp.channels,
            "max_position_embeddings": wp.max_length, "type_vocab_size": wp.segments,
            "modality_type_vocab_size": wp.modalities,
            "max_image_length": wp.max_image_length, "tie_word_embeddings": True, **extra}


# ------------------------------------------------------------------------ --check

CHECK_ROWS, CHECK_TOKENS = 3, 9


def check_batch(spec: Any, hf: HfConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`tp convert --check`'s batch: padded text (token types 0 and 1), images of the model's
    size, the second and third padded (pixel_mask) to fewer patch rows and columns, within
    max_image_length (above it HF samples patches at random and is not reproducible)."""
    wp = next(m for m in spec.stacks[""].embedding if m.name == "word_patch").options
    vocab = spec.options.vocab_size or hf["vocab_size"]
    g = torch.Generator().manual_seed(1)
    t = min(CHECK_TOKENS, wp.max_length)
    ids = torch.randint(0, vocab, (CHECK_ROWS, t), generator=g)
    mask = torch.arange(t)[None, :] < torch.tensor([t, max(t - 3, 1), max(t // 2, 1)])[:, None]
    types = (torch.arange(t) >= t // 2).long().expand_as(ids).clone() % wp.segments
    (h, w), (ph, pw) = sides(wp.image_size), sides(wp.patch_size)
    pixels = torch.randn(CHECK_ROWS, wp.channels, h, w, generator=g)
    gh, gw = h // ph, w // pw
    limit = wp.max_image_length if wp.max_image_length > 0 else gh * gw
    pixel_mask = torch.zeros(CHECK_ROWS, h, w, dtype=torch.long)
    regions = [(gh, gw), (gh, max(gw - 1, 1)), (max(gh - 1, 1), max(gw // 2, 1))]
    for row, (r, c) in enumerate(regions):
        while r * c > limit:  # shrink the real region until HF keeps all its patches
            r, c = (r - 1, c) if r >= c and r > 1 else (r, c - 1)
        pixel_mask[row, :r * ph, :c * pw] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
             "pixel_values": pixels, "pixel_mask": pixel_mask}
    kwargs = {**batch, "attention_mask": mask.long()}
    return batch, kwargs


CONVERTER = Converter(
    name="vilt",
    hf_architecture=MLM,
    rules=(),
    config_to_recipe=config_to_recipe,
    recipe_to_config=recipe_to_config,
    base_architecture=BASE,
    config_rules=rules,
    also_reads=(MLM,),  # its ITM classifier is not in HF's file: read with optional heads
    full_architectures=(QA, RETRIEVAL),
    outputs={"itm": ""},  # ViltForMaskedLM has no ITM head: --check compares mlm only
    preprocessing=ViltPreprocessing(),
    check_batch=check_batch,
    max_length=lambda hf: int(hf.get("max_position_embeddings", 40)),
)
