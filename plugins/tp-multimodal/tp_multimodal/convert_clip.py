"""CLIP <-> tp: the key map and config translation for `transformers`' CLIPModel.

tp's CLIP is a dual-stream recipe with the `clr` target:

    stream_0 (text):   embedding [word, pos], no embedding norm -> causal pre-norm `transformer`
                       with a final norm (HF's final_layer_norm) -> pooling `last`
    stream_1 (image):  embedding [patch (class token, no bias), pos] -> layernorm (HF's
                       pre_layrnorm) -> pre-norm `transformer` with a final norm -> pooling `first`
    target clr:        text_projection, visual_projection (no bias), logit_scale

- Text pooling. HF reads the end-of-text token: the first position holding eos_token_id, or,
  for configs saved before transformers fixed eos_token_id (eos_token_id == 2, OpenAI's
  checkpoints), the position of the highest id in the row (CLIP's end-of-text token is the last
  of its vocabulary). The tokenizer puts that token after the caption's last real token and
  pads after it (with the end-of-text token itself, or with 0), so `last`, the last real token
  by the attention mask, is the same position in both cases; `--check` feeds such rows.
- Image pooling. HF normalises the class token alone (post_layernorm); tp's final norm runs over
  every position and `first` reads the class token: the same pooled vector (the other positions'
  hidden states differ from HF's last_hidden_state, which is not normalised).
- q, k, v are fused into tp's `attn.qkv`. The `position_ids` buffers old checkpoints saved are
  dropped (tp numbers positions itself).
- The logit scale: HF uses exp(logit_scale) as stored; `clr` clamps logit_scale at 4.6052 as
  OpenAI's training does. Every released CLIP sits at or below it (OpenAI's at 4.6052 exactly),
  where the two agree; an export holds the clamped value (`clip_files.clamp_logit_scale`).

The tokenizer and the image processor are `clip_files.ClipPreprocessing`'s business.
"""

from __future__ import annotations

from typing import Any

import torch

from tpcli.convert import Concat, Converter, Drop, Rename, Reshape, Rule
from tpcli.errors import TpError
from tp_multimodal.clip_files import ClipPreprocessing

HfConfig = dict[str, Any]
S0, S1 = "stream_0.", "stream_1."
ARCH = "CLIPModel"
# HF hidden_act -> tp activation, and back
ACT_FROM_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "relu": "relu", "silu": "silu",
               "swish": "silu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
ACT_TO_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "relu": "relu", "silu": "silu",
             "gelu_tanh": "gelu_new"}
# CLIPTextConfig / CLIPVisionConfig / CLIPConfig defaults (transformers), for keys a config.json
# leaves out
TEXT = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
        "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "attention_dropout": 0.0,
        "dropout": 0.0, "initializer_range": 0.02, "pad_token_id": 1, "bos_token_id": 49406,
        "eos_token_id": 49407}
VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
          "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
          "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "attention_dropout": 0.0,
          "dropout": 0.0, "initializer_range": 0.02}
PROJECTION_DIM, LOGIT_SCALE = 512, 2.6592
LEGACY_EOS = 2  # eos_token_id of configs saved before transformers' fix: argmax pooling
CHECK_ROWS, CHECK_TOKENS = 3, 12  # --check: captions (and images), tokens per caption


# ------------------------------------------------------------------------ key map

def pair(hf: str, tp: str) -> list[Rule]:
    """weight and bias of one Linear / LayerNorm."""
    return [Rename(f"{hf}.{p}", f"{tp}.{p}") for p in ("weight", "bias")]


def tower_rules(hf: str, tp: str) -> list[Rule]:
    """One tower's layers: HF `{hf}encoder.layers.{i}.` <-> tp `{tp}encoder.layers.{i}.`."""
    h, t = f"{hf}encoder.layers.{{i}}.", f"{tp}encoder.layers.{{i}}."
    qkv = [Concat(tuple(f"{h}self_attn.{n}_proj.{p}" for n in "qkv"), f"{t}attn.qkv.{p}")
           for p in ("weight", "bias")]
    return [*qkv, *pair(f"{h}self_attn.out_proj", f"{t}attn.out"),
            *pair(f"{h}layer_norm1", f"{t}attn_norm"), *pair(f"{h}mlp.fc1", f"{t}ffn.fc1"),
            *pair(f"{h}mlp.fc2", f"{t}ffn.fc2"), *pair(f"{h}layer_norm2", f"{t}ffn_norm")]


def clip_rules() -> list[Rule]:
    """CLIPModel's keys as save_pretrained writes them (transformers 4 and 5 alike)."""
    text, vision = "text_model.", "vision_model."
    emb0, emb1 = f"{S0}embedding.parts.", f"{S1}embedding.parts."
    return [
        Rename(f"{text}embeddings.token_embedding.weight", f"{emb0}word.embedding.weight"),
        Rename(f"{text}embeddings.position_embedding.weight", f"{emb0}pos.embedding.weight"),
        *tower_rules(text, S0),
        *pair(f"{text}final_layer_norm", f"{S0}encoder.final_norm"),
        Rename(f"{vision}embeddings.class_embedding", f"{emb1}patch.cls_token"),
        Rename(f"{vision}embeddings.patch_embedding.weight", f"{emb1}patch.projection.weight"),
        Rename(f"{vision}embeddings.position_embedding.weight", f"{emb1}pos.embedding.weight"),
        *pair(f"{vision}pre_layrnorm", f"{S1}embedding.norm"),
        *tower_rules(vision, S1),
        *pair(f"{vision}post_layernorm", f"{S1}encoder.final_norm"),
        Rename("text_projection.weight", "targets.clr.text_projection.weight"),
        Rename("visual_projection.weight", "targets.clr.visual_projection.weight"),
        Reshape("logit_scale", "targets.clr.logit_scale", (), (1,)),  # tp's is (1,): FSDP2
        # buffers early transformers versions saved; tp numbers positions itself
        Drop(f"{text}embeddings.position_ids"), Drop(f"{vision}embeddings.position_ids"),
    ]


# ------------------------------------------------------------------------ HF -> recipe

def towers(hf: HfConfig) -> tuple[HfConfig, HfConfig]:
    """(text config, vision config) with transformers' defaults for the keys they leave out."""
    def part(key: str, defaults: HfConfig) -> HfConfig:
        given = hf.get(key) or hf.get(f"{key}_dict") or {}
        if not isinstance(given, dict):
            raise TpError(f"CLIP config.json: {key} is {given!r}, not a mapping",
                          hint="is it a CLIPModel config.json?")
        return {**defaults, **given}

    return part("text_config", TEXT), part("vision_config", VISION)


def activation(cfg: HfConfig, tower: str) -> str:
    act = cfg["hidden_act"]
    if act not in ACT_FROM_HF:
        raise TpError(f"CLIP {tower} hidden_act {act!r} has no tp equivalent",
                      hint=f"tp converts hidden_act {', '.join(ACT_FROM_HF)}")
    return ACT_FROM_HF[act]


def encoder(cfg: HfConfig, tower: str, **options: Any) -> dict[str, Any]:
    """One tower's pre-norm transformer (a final norm: HF's final / post layer norm)."""
    return {"name": "transformer", "layers": cfg["num_hidden_layers"],
            "heads": cfg["num_attention_heads"], "ffn_size": cfg["intermediate_size"],
            "activation": activation(cfg, tower), "pre_norm": True,
            "attention_dropout": cfg["attention_dropout"], **options}


def image_geometry(v: HfConfig) -> tuple[int, int]:
    """(image_size, patch_size) of a CLIP vision config; TpError when they do not tile."""
    image, patch = v["image_size"], v["patch_size"]
    if not isinstance(image, int) or not isinstance(patch, int):
        raise TpError(f"CLIP image_size {image!r} and patch_size {patch!r}: tp converts square "
                      "images and patches (one int each), as CLIP's vision tower takes them")
    if image % patch:
        raise TpError(f"CLIP image_size {image} does not split into whole {patch}x{patch} "
                      "patches", hint="convert a checkpoint whose image_size is a multiple of "
                      "patch_size")
    return image, patch


def config_to_recipe(hf: HfConfig) -> dict[str, Any]:
    """HF CLIPConfig (config.json as a dict) -> the recipe's model section."""
    t, v = towers(hf)
    image, patch = image_geometry(v)
    text_stream = {
        "embedding": {"word": {"padding_row": False}, "pos": {"max_length":
                                                               t["max_position_embeddings"]}},
        "encoder": encoder(t, "text", mask="causal"),
        "pooling": "last"}
    image_stream = {
        "hidden_size": v["hidden_size"], "norm_eps": v["layer_norm_eps"],
        "dropout": v["dropout"], "embedding_norm": "layernorm",
        "embedding": {"patch": {"image_size": image, "patch_size": patch,
                                "channels": v["num_channels"], "bias": False},
                      "pos": {"max_length": (image // patch) ** 2 + 1}},
        "encoder": encoder(v, "vision"),
        "pooling": "first"}
    return {"hidden_size": t["hidden_size"], "vocab_size": t["vocab_size"],
            "dropout": t["dropout"], "norm_eps": t["layer_norm_eps"],
            "init_std": t["initializer_range"], "embedding_norm": "none",
            "stream_0": text_stream, "stream_1": image_stream,
            "target": {"clr": {
                "projection_dim": hf.get("projection_dim", PROJECTION_DIM),
                "logit_scale": hf.get("logit_scale_init_value", LOGIT_SCALE)}}}


# ------------------------------------------------------------------------ recipe -> HF

ENCODER_NEEDS = {"pre_norm": True, "bias": True, "norm": "layernorm", "position": "none",
                 "ffn_gate": False, "scale_attention": True, "share_layers": False,
                 "layer_scale": None}


def encoder_problems(stream: str, enc: Any, mask: str) -> list[str]:
    """What in one tower's transformer options CLIP cannot express."""
    path = f"model.{stream}.encoder"
    got = {k: getattr(enc, k) for k in ENCODER_NEEDS}
    problems = [f"{path}.{k}={got[k]} (needs {v})" for k, v in ENCODER_NEEDS.items()
                if got[k] != v]
    if enc.mask != mask:
        problems.append(f"{path}.mask={enc.mask} (needs {mask})")
    if enc.kv_heads not in (None, enc.heads):
        problems.append(f"{path}.kv_heads={enc.kv_heads} (needs heads)")
    if enc.qkv_bias not in (None, "all"):
        problems.append(f"{path}.qkv_bias={enc.qkv_bias} (needs all)")
    if enc.final_norm is False:
        problems.append(f"{path}.final_norm=false (CLIP's towers end in a norm)")
    if enc.activation not in ACT_TO_HF:
        problems.append(f"{path}.activation={enc.activation}")
    return problems


def stream_option(spec: Any, stream: str, key: str) -> Any:
    """A stream's own value of a model-wide option (hidden_size, norm_eps, ...), else the
    model's."""
    return spec.stacks[stream].options.get(key, getattr(spec.options, key))


def body(spec: Any) -> tuple[dict[str, Any], dict[str, Any], Any, Any, list[str]]:
    """(text embeddings, image embeddings, text encoder, image encoder, problems) of a CLIP
    recipe; TpError when the model is not a dual-stream pair of transformers."""
    if not spec.dual or spec.decoder is not None:
        raise TpError("the clip converter needs a dual-stream model (stream_0: text, stream_1: "
                      "images) and no decoder")
    s0, s1 = spec.stacks["stream_0"], spec.stacks["stream_1"]
    for name, s in (("stream_0", s0), ("stream_1", s1)):
        if s.encoder is None or s.encoder.name != "transformer":
            raise TpError(f"the clip converter needs a transformer encoder in model.{name}")
    text = {m.name: m.options for m in s0.embedding}
    image = {m.name: m.options for m in s1.embedding}
    if list(text) != ["word", "pos"] or list(image) != ["patch", "pos"]:
        raise TpError("the clip converter needs stream_0 embedding [word, pos] and stream_1 "
                      f"embedding [patch, pos], not {list(text)} and {list(image)}")
    problems = []
    o = spec.options
    for path, (got, need) in {
            "model.tie_streams": (o.tie_streams, False),
            "model.embedding_size": (o.embedding_size, None),
            "model.stream_0.embedding_norm": (stream_option(spec, "stream_0", "embedding_norm"),
                                              "none"),
            "model.stream_1.embedding_norm": (stream_option(spec, "stream_1", "embedding_norm"),
                                              "layernorm"),
            "model.stream_0.pooling": (s0.pooling.name if s0.pooling else None, "last"),
            "model.stream_1.pooling": (s1.pooling.name if s1.pooling else None, "first"),
            "model.stream_0.embedding.pos.offset": (text["pos"].offset, 0),
            "model.stream_0.embedding.pos.padding_aware": (text["pos"].padding_aware, False),
            "model.stream_0.embedding.word.scale": (text["word"].scale, 1.0),
            "model.stream_1.embedding.pos.offset": (image["pos"].offset, 0),
            "model.stream_1.embedding.patch.class_token": (image["patch"].class_token, True),
            "model.stream_1.embedding.patch.bias": (image["patch"].bias, False)}.items():
        if got != need:
            problems.append(f"{path}={got} (needs {need})")
    problems += encoder_problems("stream_0", s0.encoder.options, "causal")
    problems += encoder_problems("stream_1", s1.encoder.options, "fully_visible")
    if [t.name for t in spec.targets] != ["clr"]:
        problems.append(f"target {[t.name for t in spec.targets]} (needs [clr])")
    return text, image, s0.encoder.options, s1.encoder.options, problems


def side(value: Any) -> int:
    """A square side (CLIP's image and patch sizes are one int); 0 for a non-square one."""
    if isinstance(value, int):
        return value
    return int(value[0]) if value[0] == value[1] else 0


def tower_config(spec: Any, stream: str, enc: Any) -> HfConfig:
    """The HF keys both towers share."""
    dropout = stream_option(spec, stream, "dropout")
    return {"hidden_size": stream_option(spec, stream, "hidden_size"),
            "intermediate_size": enc.ffn_size, "num_hidden_layers": enc.layers,
            "num_attention_heads": enc.heads, "hidden_act": ACT_TO_HF.get(enc.activation),
            "layer_norm_eps": stream_option(spec, stream, "norm_eps"),
            "attention_dropout": dropout if enc.attention_dropout is None
            else enc.attention_dropout,
            "initializer_range": spec.options.init_std}


def recipe_to_config(spec: Any, vocab_size: int) -> HfConfig:
    """A validated ModelSpec of a CLIP recipe -> HF CLIPConfig dict. The text tower's token
    ids are the tokenizer's, which `ClipPreprocessing.to_hf` writes (it sees the tokenizer)."""
    text, image, enc0, enc1, problems = body(spec)
    patch, pos = image["patch"], image["pos"]
    size, psize = side(patch.image_size), side(patch.patch_size)
    if not size or not psize:
        problems.append("model.stream_1.embedding.patch: CLIP takes square images and patches")
    elif pos.max_length != (size // psize) ** 2 + 1:
        problems.append(f"model.stream_1.embedding.pos.max_length={pos.max_length} (needs "
                        f"{(size // psize) ** 2 + 1}: the class token and the patches)")
    if problems:
        raise TpError(f"the clip converter cannot express this model as {ARCH}: "
                      + "; ".join(problems),
                      hint="keep the checkpoint in tp format, or change the options named")
    clr = spec.targets[0].options
    text_config = {**tower_config(spec, "stream_0", enc0),
                   "vocab_size": spec.options.vocab_size or vocab_size,
                   "max_position_embeddings": text["pos"].max_length,
                   "projection_dim": clr.projection_dim,
                   # the tokenizer's, set by ClipPreprocessing.to_hf (not HF's 49406 / 49407)
                   "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
    vision_config = {**tower_config(spec, "stream_1", enc1), "image_size": size,
                     "patch_size": psize, "num_channels": patch.channels,
                     "projection_dim": clr.projection_dim}
    return {"architectures": [ARCH], "model_type": "clip", "text_config": text_config,
            "vision_config": vision_config, "projection_dim": clr.projection_dim,
            "logit_scale_init_value": clr.logit_scale,
            # a composite config has no vocabulary of its own: the token ids live in
            # text_config, and these keep `tp convert` from setting top-level ones
            "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}


# ------------------------------------------------------------------------ --check

def end_of_text(t: HfConfig) -> int:
    """The id HF's text pooling finds: eos_token_id, or (legacy configs) the highest id."""
    eos, vocab = t["eos_token_id"], t["vocab_size"]
    if eos == LEGACY_EOS:
        return int(vocab) - 1
    if not isinstance(eos, int) or not 0 <= eos < vocab:
        raise TpError(f"CLIP text_config.eos_token_id {eos!r} is not an id of its {vocab}-token "
                      "vocabulary: HF's text pooling would read position 0 of every caption",
                      hint="set text_config.eos_token_id to the tokenizer's <|endoftext|> id")
    return int(eos)


def check_batch(spec: Any, hf_config: HfConfig
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`tp convert --check`'s batch: CHECK_ROWS captions as CLIP's tokenizer makes them (each
    shorter than the one before, random ids, the end-of-text token after the last, padded with
    it or with 0, as HF's tokenizers pad) and as many random images. (tp batch, HF kwargs)."""
    t, v = towers(hf_config)
    eos, vocab = end_of_text(t), int(t["vocab_size"])
    length = min(CHECK_TOKENS, int(t["max_position_embeddings"]))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab - 1, (CHECK_ROWS, length), generator=g)
    ids = torch.where(ids >= eos, ids + 1, ids)  # never the end token (legacy: all below it)
    mask = torch.zeros(CHECK_ROWS, length, dtype=torch.bool)
    for row in range(CHECK_ROWS):
        n = max(2, length - 3 * row)
        mask[row, :n] = True
        ids[row, n - 1] = eos
        ids[row, n:] = eos if row % 2 else 0
    image = int(v["image_size"])
    pixels = torch.randn(CHECK_ROWS, int(v["num_channels"]), image, image, generator=g)
    batch = {"stream_0.input_ids": ids, "stream_0.attention_mask": mask,
             "stream_1.pixel_values": pixels}
    return batch, {"input_ids": ids, "attention_mask": mask.long(), "pixel_values": pixels}


CONVERTER = Converter(
    name="clip",  # the registry name is HF's model_type, which --from hf looks up
    hf_architecture=ARCH,
    rules=tuple(clip_rules()),
    config_to_recipe=config_to_recipe,
    recipe_to_config=recipe_to_config,
    max_length=lambda hf: towers(hf)[0]["max_position_embeddings"],
    preprocessing=ClipPreprocessing(),
    check_batch=check_batch,
    # a converted CLIP classifies images zero-shot as it comes (`tp infer CLIP --input IMAGES`);
    # `tp infer --task retrieval` / `--task embed` run the other uses
    task=lambda hf: {"name": "zero_shot"},
)

