"""S2T <-> tp: the key map and config translation for `transformers`' Speech2Text
(Speech2TextForConditionalGeneration, and the headless Speech2TextModel).

tp's S2T is the seq2seq recipe

    embedding [speech]  (conv subsampler * sqrt(d) + sinusoidal positions, offset 2)
      -> pre-norm `transformer` encoder with a final norm, relu
    tgt_embedding [word (scale sqrt(d)), sinusoidalpos (offset 2, padding_aware)]
      -> pre-norm `transformer` decoder with a final norm
    target lm (no bias), tied to the decoder's word table when HF ties it (tie_word_embeddings)

- Positions: HF numbers real positions from padding_idx + 1 (= 2 with pad id 1) and gives
  padding a zero row, on both sides; the encoder's padding is found from the subsampled
  attention mask, which HF only reads right when pad_token_id is 1, so other pad ids are refused.
  The tables are not weights (HF keeps them as non-persistent buffers, tp rebuilds them; the
  copies early transformers versions saved are dropped).
- q, k, v are fused into tp's `attn.qkv`, the cross-attention's k, v into `cross.kv`.
- HF regularisation tp does not have (activation_dropout, layerdrop) changes no weight and no
  inference result: it is converted with a warning, not refused.

The feature extractor (preprocessor_config.json) and the tokenizer (SentencePiece model +
vocab.json) are `s2t_files.S2tPreprocessing`'s business.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from tpcli.convert import Concat, Converter, Drop, Rename, Rule, Tied
from tpcli.errors import TpError
from tp_speech.s2t_files import S2tPreprocessing
from tp_text.convert_bert import _ACT_FROM_HF, _ACT_TO_HF, pair

log = logging.getLogger(__name__)

HfConfig = dict[str, Any]
PAD = 1  # the only pad id whose encoder positions HF computes as fairseq does (see above)
SPEECH = "stack.embedding.parts.speech"
ENC, DEC = "stack.encoder.layers.{i}.", "decoder.layers.{i}."
WORD = "tgt_embedding.parts.word.embedding.weight"
CHECK_ROWS, CHECK_FRAMES, CHECK_TOKENS = 3, 40, 7  # --check: rows, frames, target tokens


# ------------------------------------------------------------------------ key map

def _attention(hf: str, tp: str, cross: bool) -> list[Rule]:
    """q/k/v/out_proj of one HF attention <-> tp's fused projections."""
    rules: list[Rule] = []
    for p in ("weight", "bias"):
        if cross:
            rules += [Rename(f"{hf}.q_proj.{p}", f"{tp}.q.{p}"),
                      Concat((f"{hf}.k_proj.{p}", f"{hf}.v_proj.{p}"), f"{tp}.kv.{p}")]
        else:
            rules.append(Concat(tuple(f"{hf}.{n}_proj.{p}" for n in "qkv"), f"{tp}.qkv.{p}"))
        rules.append(Rename(f"{hf}.out_proj.{p}", f"{tp}.out.{p}"))
    return rules


def _ffn(hf: str, tp: str) -> list[Rule]:
    return [*pair(f"{hf}fc1", f"{tp}ffn.fc1"), *pair(f"{hf}fc2", f"{tp}ffn.fc2"),
            *pair(f"{hf}final_layer_norm", f"{tp}ffn_norm")]


def body_rules(prefix: str) -> list[Rule]:
    """Encoder and decoder; `prefix` is "model." in the generation model, "" headless."""
    enc, dec = f"{prefix}encoder.", f"{prefix}decoder."
    e, d = f"{enc}layers.{{i}}.", f"{dec}layers.{{i}}."
    return [
        *pair(f"{enc}conv.conv_layers.{{i}}", f"{SPEECH}.convs.{{i}}"),
        *_attention(f"{e}self_attn", f"{ENC}attn", cross=False),
        *pair(f"{e}self_attn_layer_norm", f"{ENC}attn_norm"),
        *_ffn(e, ENC),
        *pair(f"{enc}layer_norm", "stack.encoder.final_norm"),
        Rename(f"{dec}embed_tokens.weight", WORD),
        *_attention(f"{d}self_attn", f"{DEC}attn", cross=False),
        *pair(f"{d}self_attn_layer_norm", f"{DEC}attn_norm"),
        *_attention(f"{d}encoder_attn", f"{DEC}cross", cross=True),
        *pair(f"{d}encoder_attn_layer_norm", f"{DEC}cross_norm"),
        *_ffn(d, DEC),
        *pair(f"{dec}layer_norm", "decoder.final_norm"),
        # early transformers saved the sinusoid tables; they are rebuilt, never read
        Drop(f"{enc}embed_positions.weights"), Drop(f"{dec}embed_positions.weights"),
    ]


def rules(hf: HfConfig, base: bool) -> list[Rule]:
    """The key map of the headless model (`base`) or the generation model, whose output layer
    is the decoder's word table (tied: written once, as transformers saves it) or its own."""
    if base:
        return body_rules("")
    head: Rule = (Tied("lm_head.weight", "model.decoder.embed_tokens.weight")
                  if tied(hf) else Rename("lm_head.weight", "targets.lm.decoder.weight"))
    return [*body_rules("model."), head]


def tied(hf: HfConfig) -> bool:
    return bool(hf.get("tie_word_embeddings", True))


# ------------------------------------------------------------------------ HF -> recipe

def _activation(hf: HfConfig) -> str:
    act = hf.get("activation_function", "relu")
    if act not in _ACT_FROM_HF:
        raise TpError(f"Speech2Text activation_function {act!r} has no tp equivalent",
                      hint=f"tp converts {', '.join(_ACT_FROM_HF)}")
    return _ACT_FROM_HF[act]


def _stack(hf: HfConfig, side: str, activation: str) -> dict[str, Any]:
    return {"name": "transformer", "layers": hf[f"{side}_layers"],
            "heads": hf[f"{side}_attention_heads"], "ffn_size": hf[f"{side}_ffn_dim"],
            "activation": activation, "pre_norm": True,
            "attention_dropout": hf.get("attention_dropout", 0.0)}


def _warn_training_only(hf: HfConfig) -> None:
    """HF options that only change training (dropout tp's stacks do not have)."""
    extra = {k: hf.get(k) for k in ("activation_dropout", "encoder_layerdrop",
                                    "decoder_layerdrop") if hf.get(k)}
    if extra:
        log.warning("Speech2Text %s: tp's transformer has no dropout between fc1 and fc2 and no "
                    "layer drop; the weights and the outputs of the converted model are the "
                    "same, further training regularises slightly differently",
                    ", ".join(f"{k}={v}" for k, v in extra.items()))


def config_to_recipe(hf: HfConfig) -> dict[str, Any]:
    """HF Speech2TextConfig (config.json as a dict) -> the recipe's model section."""
    pad = hf.get("pad_token_id", PAD)
    if pad != PAD:
        raise TpError(f"Speech2Text pad_token_id {pad}: HF numbers the encoder's positions as "
                      f"fairseq does only with pad id {PAD}",
                      hint="convert a checkpoint with pad_token_id 1 (every published S2T)")
    kernels = list(hf.get("conv_kernel_sizes", [5, 5]))
    if len(kernels) != hf.get("num_conv_layers", len(kernels)):
        raise TpError(f"Speech2Text num_conv_layers {hf.get('num_conv_layers')} does not match "
                      f"conv_kernel_sizes {kernels}")
    _warn_training_only(hf)
    d = hf["d_model"]
    scale = math.sqrt(d) if hf.get("scale_embedding", True) else 1.0
    offset = pad + 1
    activation = _activation(hf)
    speech = {"features": hf.get("input_feat_per_channel", 80) * hf.get("input_channels", 1),
              "kernel_sizes": kernels, "conv_channels": hf.get("conv_channels", 1024),
              "scale": scale, "offset": offset,
              "max_length": hf.get("max_source_positions", 6000) + offset}
    positions = {"offset": offset, "padding_aware": True,
                 "max_length": hf.get("max_target_positions", 1024) + offset}
    return {
        "hidden_size": d,
        "vocab_size": hf["vocab_size"],
        "dropout": hf.get("dropout", 0.1),
        "norm_eps": 1e-5,  # HF's LayerNorms use torch's default
        "init_std": hf.get("init_std", 0.02),
        "embedding_norm": "none",
        "tie_weights": tied(hf),
        "embedding": {"speech": speech},
        "encoder": _stack(hf, "encoder", activation),
        "tgt_embedding": {"word": {"scale": scale}, "sinusoidalpos": positions},
        "decoder": _stack(hf, "decoder", activation),
        "target": {"lm": {}},
    }


# ------------------------------------------------------------------------ recipe -> HF

def _body(spec: Any) -> tuple[Any, Any, Any, Any, Any]:
    """(speech options, word options, sinusoidalpos options, encoder, decoder) of an S2T
    recipe; TpError when the model is not one."""
    stack = spec.stacks.get("")
    if (stack is None or stack.encoder is None or spec.decoder is None
            or stack.encoder.name != "transformer" or spec.decoder.name != "transformer"):
        raise TpError("the s2t converter needs a transformer encoder and a transformer decoder")
    emb = {m.name: m.options for m in stack.embedding}
    temb = {m.name: m.options for m in spec.tgt_embedding}
    if list(emb) != ["speech"] or list(temb) != ["word", "sinusoidalpos"]:
        raise TpError("the s2t converter needs embedding [speech] and tgt_embedding "
                      f"[word, sinusoidalpos], not {list(emb)} and {list(temb)}")
    return emb["speech"], temb["word"], temb["sinusoidalpos"], stack.encoder.options, \
        spec.decoder.options


def _problems(spec: Any, speech: Any, word: Any, pos: Any, enc: Any, dec: Any) -> list[str]:
    """What in the model section Speech2Text cannot express."""
    o = spec.options
    d = o.hidden_size
    problems = [f"{path}={got} (needs {need})" for path, (got, need) in {
        "model.embedding_norm": (o.embedding_norm, "none"),
        "model.embedding_size": (o.embedding_size, None),
        "model.share_embeddings": (o.share_embeddings, False),
        "model.norm_eps": (o.norm_eps, 1e-5),
        "model.embedding.speech.positions": (speech.positions, True),
        "model.embedding.speech.offset": (speech.offset, PAD + 1),
        "model.tgt_embedding.sinusoidalpos.offset": (pos.offset, PAD + 1),
        "model.tgt_embedding.sinusoidalpos.padding_aware": (pos.padding_aware, True),
        "model.tgt_embedding.sinusoidalpos.scale": (pos.scale, 1.0),
        "model.tgt_embedding.word.scale": (word.scale, speech.scale),
        "model.decoder.activation": (dec.activation, enc.activation),
        "model.decoder.attention_dropout": (dec.attention_dropout, enc.attention_dropout),
    }.items() if got != need]
    if speech.scale not in (1.0, math.sqrt(d)):
        problems.append(f"model.embedding.speech.scale={speech.scale} (needs 1 or "
                        f"sqrt(hidden_size) = {math.sqrt(d)})")
    for side, s in (("encoder", enc), ("decoder", dec)):
        want = {"pre_norm": True, "bias": True, "norm": "layernorm", "position": "none",
                "ffn_gate": False, "scale_attention": True, "share_layers": False,
                "kv_heads": s.heads}
        got = {k: getattr(s, k) for k in want}
        got["kv_heads"] = s.kv_heads or s.heads
        problems += [f"model.{side}.{k}={got[k]} (needs {v})" for k, v in want.items()
                     if got[k] != v]
    if getattr(enc, "mask", "fully_visible") != "fully_visible":
        problems.append(f"model.encoder.mask={enc.mask} (needs fully_visible)")
    if enc.qkv_bias not in (None, "all"):
        problems.append(f"model.encoder.qkv_bias={enc.qkv_bias} (needs all)")
    if enc.layer_scale is not None:
        problems.append(f"model.encoder.layer_scale={enc.layer_scale} (needs none)")
    if enc.final_norm is False:
        problems.append("model.encoder.final_norm=false (HF's encoder ends in a norm)")
    if enc.activation not in _ACT_TO_HF:
        problems.append(f"model.encoder.activation={enc.activation}")
    targets = {t.name: t.options for t in spec.targets}
    if list(targets) != ["lm"]:
        problems.append(f"target {list(targets)} (needs [lm]: Speech2Text has no other head)")
    elif targets["lm"].bias or targets["lm"].rescale_hidden or targets["lm"].prefix_lm:
        problems.append("model.target.lm needs bias, rescale_hidden and prefix_lm false")
    return problems


def recipe_to_config(spec: Any, vocab_size: int) -> HfConfig:
    """A validated ModelSpec of an S2T recipe -> HF Speech2TextConfig dict."""
    speech, word, pos, enc, dec = _body(spec)
    problems = _problems(spec, speech, word, pos, enc, dec)
    if problems:
        raise TpError("the s2t converter cannot express this model as "
                      "Speech2TextForConditionalGeneration: " + "; ".join(problems),
                      hint="keep the checkpoint in tp format, or change the options named")
    o = spec.options
    return {
        "architectures": ["Speech2TextForConditionalGeneration"],
        "model_type": "speech_to_text",
        "vocab_size": o.vocab_size or vocab_size,
        "d_model": o.hidden_size,
        "encoder_layers": enc.layers, "decoder_layers": dec.layers,
        "encoder_attention_heads": enc.heads, "decoder_attention_heads": dec.heads,
        "encoder_ffn_dim": enc.ffn_size, "decoder_ffn_dim": dec.ffn_size,
        "activation_function": _ACT_TO_HF[enc.activation],
        "dropout": o.dropout,
        "attention_dropout": o.dropout if enc.attention_dropout is None
        else enc.attention_dropout,
        "activation_dropout": 0.0,
        "init_std": o.init_std,
        "scale_embedding": speech.scale != 1.0,
        "num_conv_layers": len(speech.kernel_sizes),
        "conv_kernel_sizes": list(speech.kernel_sizes),
        "conv_channels": speech.conv_channels,
        "input_feat_per_channel": speech.features,
        "input_channels": 1,
        "max_source_positions": max(1, speech.max_length - speech.offset),
        "max_target_positions": max(1, pos.max_length - pos.offset),
        "pad_token_id": PAD,
        "tie_word_embeddings": bool(o.tie_weights),
    }


# ------------------------------------------------------------------------ --check

def check_batch(spec: Any, hf_config: HfConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`tp convert --check`'s batch: CHECK_ROWS rows of random features, each shorter than the
    one before (padded with 0.0), and padded target ids without the pad id among the real ones.
    (tp batch, HF keyword arguments)."""
    speech = next(m.options for m in spec.stacks[""].embedding if m.name == "speech")
    vocab = int(spec.options.vocab_size or hf_config["vocab_size"])
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(CHECK_ROWS, CHECK_FRAMES, speech.features, generator=g)
    frames = torch.tensor([CHECK_FRAMES - 9 * r for r in range(CHECK_ROWS)])
    mask = torch.arange(CHECK_FRAMES)[None, :] < frames[:, None]  # (B, T)
    feats = feats.masked_fill(~mask[..., None], 0.0)
    ids = torch.randint(0, vocab, (CHECK_ROWS, CHECK_TOKENS), generator=g)
    ids = torch.where(ids == PAD, (ids + 1) % vocab, ids)
    tmask = torch.arange(CHECK_TOKENS)[None, :] < torch.tensor(
        [CHECK_TOKENS - 2 * r for r in range(CHECK_ROWS)])[:, None]
    ids = ids.masked_fill(~tmask, PAD)
    batch = {"input_features": feats, "attention_mask": mask, "tgt_input_ids": ids,
             "tgt_attention_mask": tmask}
    kwargs = {"input_features": feats, "attention_mask": mask.long(), "decoder_input_ids": ids,
              "decoder_attention_mask": tmask.long()}
    return batch, kwargs


def asr_task(hf: HfConfig) -> dict[str, Any] | None:
    """A converted speech-to-text model transcribes: task `asr` with the decoding its config
    asks for (num_beams, max_length: 5 and 200 in facebook/s2t-*-librispeech-asr; max_length
    counts the decoder's start token, so 199 new tokens at most), so `tp infer`
    runs on the checkpoint as converted. None for the headless Speech2TextModel."""
    archs = hf.get("architectures") or ["Speech2TextForConditionalGeneration"]
    if "Speech2TextForConditionalGeneration" not in archs:
        return None
    task: dict[str, Any] = {"name": "asr", "num_beams": int(hf.get("num_beams") or 1)}
    if hf.get("max_length"):  # transformers counts the decoder start token in max_length
        task["max_new_tokens"] = max(1, int(hf["max_length"]) - 1)
    return task


CONVERTER = Converter(
    name="speech_to_text",  # the registry name is HF's model_type, which --from hf looks up
    hf_architecture="Speech2TextForConditionalGeneration",
    rules=(),
    config_to_recipe=config_to_recipe,
    recipe_to_config=recipe_to_config,
    base_architecture="Speech2TextModel",
    config_rules=rules,
    max_length=lambda hf: hf.get("max_target_positions"),
    preprocessing=S2tPreprocessing(),
    check_batch=check_batch,
    task=asr_task,
)
