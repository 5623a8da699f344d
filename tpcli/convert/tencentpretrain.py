"""`tp convert CKPT --from tencentpretrain --config CONFIG` and `tp convert RUN --to
tencentpretrain`: TencentPretrain / UER checkpoints (one state dict, `model.bin`) to tp checkpoint
folders and back.

The key map is generated from the model spec (which embeddings, encoder, decoder and targets it
has) as one list of declarative rules (tpcli.convert.keymap) that converts both ways. The names of
TencentPretrain's modules sit here, beside tp's registry names of the same modules, as they do in
the config translator (tpcli.recipes.tencentpretrain): this file is the bridge between the two
vocabularies, it imports no plugin, and a module it has no keys for is refused by name.

Facts of TencentPretrain's layout the rules encode (from its model code):
- LayerNorm parameters are `gamma` / `beta`; its T5 / RMS norms have `weight` only.
- q, k, v are separate (`self_attn.linear_layers.{0,1,2}`); tp fuses them (`attn.qkv`). Its
  rotary embedding rotates interleaved pairs, tp's (as HF's) the two halves of a head: the q and
  k rows are reordered on the way.
- The segment table has 3 rows, (padding, A, B); tp's seg ids are (A, B) with row 2 unused:
  the rows are permuted, so both directions are exact.
- Relative position: the encoder's layers read one shared table, saved under each layer's name
  (`encoder.transformer.N.relative_pos_emb...`); its conversion scripts write
  `encoder.relative_pos_emb...` instead. Both are read, both are written.
- ALBERT: the factorized projection is `encoder.linear`; a shared layer has no index.
- Tied weights (mlm / lm output = word embedding; a seq2seq model's target-side word embedding =
  the source's under share_embedding) are saved under each name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tpcli.convert.common import (WEIGHTS, ConvertResult, describe_model, raise_shapes,
                                  shape_problems, staged)
from tpcli.convert.keymap import (Concat, Copies, ExtraRows, PermuteRows, Rename,
                                  Rule, Tied, convert as apply_rules, interleaved_to_half)
from tpcli.errors import CheckpointError, TpError
from tpcli.plugins import Plugins

FORMAT = "tencentpretrain"
MODEL_BIN = "model.bin"
CONFIG = "config.json"
WORD = "embedding.word.embedding.weight"
TGT_WORD = "tgt_embedding.word.embedding.weight"
# TencentPretrain's segment rows (padding, A, B) -> tp's (A, B, padding)
SEG_ORDER = (1, 2, 0)


class Unsupported(TpError):
    """A tp model (or part of one) TencentPretrain has no layout for."""


# ------------------------------------------------------------------------------ the key map


def _norm(foreign: str, tp: str, kind: str) -> list[Rule]:
    """A norm: TencentPretrain's LayerNorm is gamma/beta, its T5 / RMS norms weight only."""
    if kind == "layernorm":
        return [Rename(f"{foreign}.gamma", f"{tp}.weight"), Rename(f"{foreign}.beta", f"{tp}.bias")]
    if kind == "rmsnorm":
        return [Rename(f"{foreign}.weight", f"{tp}.weight")]
    raise Unsupported(f"norm {kind!r} has no TencentPretrain counterpart (layernorm, rmsnorm)")


def _linear(foreign: str, tp: str, bias: bool) -> list[Rule]:
    rules: list[Rule] = [Rename(f"{foreign}.weight", f"{tp}.weight")]
    return rules + ([Rename(f"{foreign}.bias", f"{tp}.bias")] if bias else [])


def _head_size(o: Any, hidden: int) -> int:
    return int(o.head_size or hidden // o.heads)


def _attention(foreign: str, tp: str, o: Any, hidden: int, cross: bool) -> list[Rule]:
    """q, k, v (+ out) of one attention block. Self-attention: tp's `qkv` fuses all three (rotary
    q and k reordered); cross-attention: tp's `q` and fused `kv`."""
    hd = _head_size(o, hidden)
    kv_heads = int(o.kv_heads or o.heads)
    sizes = (o.heads * hd, kv_heads * hd, kv_heads * hd)
    lin = [f"{foreign}.linear_layers.{n}" for n in range(3)]
    rules: list[Rule] = []
    suffixes = ("weight", "bias") if o.bias else ("weight",)
    for s in suffixes:
        if cross:
            rules.append(Rename(f"{lin[0]}.{s}", f"{tp}.q.{s}"))
            rules.append(Concat((f"{lin[1]}.{s}", f"{lin[2]}.{s}"), f"{tp}.kv.{s}"))
        elif o.position == "rotary":
            orders = (interleaved_to_half(o.heads, hd), interleaved_to_half(kv_heads, hd), None)
            rules.append(Concat(tuple(f"{x}.{s}" for x in lin), f"{tp}.qkv.{s}", sizes=sizes,
                                orders=orders))
        else:
            rules.append(Concat(tuple(f"{x}.{s}" for x in lin), f"{tp}.qkv.{s}", sizes=sizes))
    return rules + _linear(f"{foreign}.final_linear", f"{tp}.{'out'}", o.bias)


def _ffn(foreign: str, tp: str, o: Any) -> list[Rule]:
    """TencentPretrain's gated FFN has linear_gate and linear_1; tp fuses them, gate first."""
    rules: list[Rule] = []
    for s in ("weight", "bias") if o.bias else ("weight",):
        if o.ffn_gate:
            rules.append(Concat((f"{foreign}.linear_gate.{s}", f"{foreign}.linear_1.{s}"),
                                f"{tp}.fc1.{s}"))
        else:
            rules.append(Rename(f"{foreign}.linear_1.{s}", f"{tp}.fc1.{s}"))
    return rules + _linear(f"{foreign}.linear_2", f"{tp}.fc2", o.bias)


def _check_transformer(o: Any, where: str) -> None:
    if o.position not in ("none", "relative", "rotary"):
        raise Unsupported(f"{where}: position {o.position!r} has no TencentPretrain layout")
    extras = {"layer_scale": None, "qkv_bias": None, "final_norm": None, "grid": None}
    for key, default in extras.items():
        if getattr(o, key, default) not in (default, o.bias if key == "qkv_bias" else default):
            raise Unsupported(f"{where}: option {key}={getattr(o, key)!r} has no TencentPretrain "
                              "counterpart")
    if getattr(o, "share_position_bias", False):
        raise Unsupported(f"{where}: share_position_bias has no TencentPretrain counterpart")


def _encoder(o: Any, name: str, hidden: int) -> list[Rule]:
    if name in ("lstm", "gru"):
        return [Rename(f"encoder.rnn.{p}_l{{i}}", f"stack.encoder.rnn.{p}_l{{i}}")
                for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    if name in ("bilstm", "birnn"):
        return [Rename(f"encoder.rnn_{side}.{p}_l{{i}}", f"stack.encoder.{short}.{p}_l{{i}}")
                for side, short in (("forward", "fwd"), ("backward", "bwd"))
                for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    if name != "transformer":
        raise Unsupported(f"encoder {name!r} has no TencentPretrain layout (transformer, lstm, "
                          "gru, bilstm, birnn)")
    _check_transformer(o, "encoder")
    shared = bool(o.share_layers)
    foreign = "encoder.transformer" if shared else "encoder.transformer.{i}"
    tp = "stack.encoder.layers.0" if shared else "stack.encoder.layers.{i}"
    rules = _attention(f"{foreign}.self_attn", f"{tp}.attn", o, hidden, cross=False)
    rules += _ffn(f"{foreign}.feed_forward", f"{tp}.ffn", o)
    rules += _norm(f"{foreign}.layer_norm_1", f"{tp}.attn_norm", o.norm)
    rules += _norm(f"{foreign}.layer_norm_2", f"{tp}.ffn_norm", o.norm)
    if o.pre_norm:
        rules += _norm("encoder.layer_norm", "stack.encoder.final_norm", o.norm)
    if o.position == "relative":
        table = "relative_pos_emb.relative_attention_bias.weight"
        layers = ((f"encoder.transformer.{table}",) if shared else
                  tuple(f"encoder.transformer.{n}.{table}" for n in range(o.layers)))
        rules.append(Copies((layers, (f"encoder.{table}",)),
                            "stack.encoder.relative_bias.embedding.weight"))
    return rules


def _decoder(o: Any, name: str, hidden: int) -> list[Rule]:
    if name != "transformer":
        raise Unsupported(f"decoder {name!r} has no TencentPretrain layout (transformer)")
    _check_transformer(o, "decoder")
    if o.share_layers:
        raise Unsupported("decoder: share_layers (TencentPretrain's decoder shares no layers)")
    foreign, tp = "decoder.transformer_decoder.{i}", "decoder.layers.{i}"
    rules = _attention(f"{foreign}.self_attn", f"{tp}.attn", o, hidden, cross=False)
    rules += _attention(f"{foreign}.context_attn", f"{tp}.cross", o, hidden, cross=True)
    rules += _ffn(f"{foreign}.feed_forward", f"{tp}.ffn", o)
    for n, part in ((1, "attn_norm"), (2, "cross_norm"), (3, "ffn_norm")):
        rules += _norm(f"{foreign}.layer_norm_{n}", f"{tp}.{part}", o.norm)
    if o.pre_norm:
        rules += _norm("decoder.layer_norm", "decoder.final_norm", o.norm)
    if o.position == "relative":
        rules.append(Rename("decoder.self_pos_emb.relative_attention_bias.weight",
                            "decoder.relative_bias.embedding.weight"))
    return rules


def _embedding(modules: list[Any], foreign: str, tp: str, norm: bool,
               shared_word: bool) -> list[Rule]:
    rules: list[Rule] = []
    for m in modules:
        if m.name in ("word", "pos"):
            if m.name == "word" and shared_word:
                rules.append(Tied(f"{foreign}.word.embedding.weight", WORD))
            else:
                rules.append(Rename(f"{foreign}.{m.name}.embedding.weight",
                                    f"{tp}.parts.{m.name}.embedding.weight"))
        elif m.name == "seg":
            seg = (f"{foreign}.seg.embedding.weight", f"{tp}.parts.seg.embedding.weight")
            if m.options.types == 3:
                rules.append(PermuteRows(*seg, SEG_ORDER))
            elif m.options.types == 2:  # tp's (A, B) as (a zero padding row, A, B)
                rules.append(ExtraRows(*seg, before=1))
            else:
                raise Unsupported(f"{tp}: seg with types={m.options.types} (TencentPretrain's "
                                  "segment table has 3 rows: padding, A, B)")
        elif m.name != "sinusoidalpos":  # sinusoidal positions have no weights
            raise Unsupported(f"embedding {m.name!r} has no TencentPretrain layout in a text "
                              "model (word, pos, seg, sinusoidalpos)")
    if norm:
        rules += _norm(f"{foreign}.layer_norm", f"{tp}.norm", "layernorm")
    return rules


def _targets(spec: Any, word: str) -> list[Rule]:
    """word: TencentPretrain's name of the word embedding an lm/mlm output is tied to."""
    tie = bool(spec.options.tie_weights)
    rules: list[Rule] = []
    for t in spec.targets:
        p, q = f"target.{t.name}", f"targets.{t.name}"
        if t.name == "mlm":
            rules += _linear(f"{p}.linear_1", f"{q}.dense", True)
            rules += _norm(f"{p}.layer_norm", f"{q}.norm", "layernorm")
            rules.append(Rename(f"{p}.linear_2.bias", f"{q}.bias"))
            rules.append(Tied(f"{p}.linear_2.weight", WORD) if tie
                         else Rename(f"{p}.linear_2.weight", f"{q}.decoder.weight"))
        elif t.name == "sp":
            rules += _linear(f"{p}.linear_1", f"{q}.pooler", True)
            rules += _linear(f"{p}.linear_2", f"{q}.classifier", True)
        elif t.name == "lm":
            rules.append(Tied(f"{p}.output_layer.weight", word) if tie
                         else Rename(f"{p}.output_layer.weight", f"{q}.decoder.weight"))
            if t.options.bias:
                rules.append(Rename(f"{p}.output_layer.bias", f"{q}.bias"))
        elif t.name == "bilm":
            if tie:
                raise Unsupported("target bilm with tie_weights (TencentPretrain ties only mlm "
                                  "and lm)")
            rules += _linear(f"{p}.output_layer", f"{q}.output", bool(t.options.bias))
        else:
            raise Unsupported(f"target {t.name!r} has no TencentPretrain layout tp converts "
                              "(mlm, sp, lm, bilm)")
    return rules


def key_rules(spec: Any) -> list[Rule]:
    """The TencentPretrain <-> tp key map of a model spec (tpcli.recipes.config.ModelSpec);
    Unsupported names what TencentPretrain cannot hold."""
    if spec.dual:
        raise Unsupported("a dual-stream model (stream_0 / stream_1)")
    stack = spec.stacks[""]
    if stack.encoder is None:
        raise Unsupported("a model without an encoder")
    if stack.pooling is not None:
        raise Unsupported("a model-level pooling (TencentPretrain pools in its fine-tuning "
                          "scripts)")
    o = spec.options
    hidden = int(o.hidden_size)
    norm = o.embedding_norm == "layernorm"
    if o.embedding_norm not in ("layernorm", "none"):
        raise Unsupported(f"embedding_norm {o.embedding_norm!r} (TencentPretrain's embedding "
                          "norm is a LayerNorm or none)")
    enc = stack.encoder
    rules = _embedding(stack.embedding, "embedding", "stack.embedding", norm, False)
    if enc.name == "transformer" and o.embedding_size and o.embedding_size != hidden:
        rules += _linear("encoder.linear", "stack.embedding.project", True)
    rules += _encoder(enc.options, enc.name, hidden)
    word = WORD
    if spec.decoder is not None:
        shared = bool(o.share_embeddings)
        rules += _embedding(spec.tgt_embedding, "tgt_embedding", "tgt_embedding", norm, shared)
        rules += _decoder(spec.decoder.options, spec.decoder.name, hidden)
        if any(m.name == "word" for m in spec.tgt_embedding):
            word = TGT_WORD
    return rules + _targets(spec, word)


# ------------------------------------------------------------------------------ reading


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A TencentPretrain state dict: a `.bin` (torch.save, read without unpickling code) or a
    `.safetensors` file; a `module.` prefix (a DDP save) is removed."""
    if not path.is_file():
        raise TpError(f"{path} does not exist or is not a file",
                      hint="give TencentPretrain's saved model (e.g. models/output_model.bin)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every way a file can be unreadable is the user's
        raise CheckpointError(f"{path} is not a readable TencentPretrain checkpoint: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                              hint="is it a complete state dict saved by TencentPretrain's "
                              "pretrain.py (torch.save) or a .safetensors file?") from e
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors",
                              hint="give the model file TencentPretrain saved")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _read_config(path: Path) -> dict[str, Any]:
    from tpcli.recipes.tencentpretrain import is_tencentpretrain_config

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise TpError(f"--config {path} does not exist",
                      hint="give TencentPretrain's model config (models/bert/base_config.json)"
                      ) from e
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TpError(f"cannot read --config {path}: {e}") from e
    if path.suffix != ".json":
        raise TpError(f"--config {path} is not a .json file",
                      hint="give the JSON file TencentPretrain's pretrain.py read as --config_path")
    if not isinstance(data, dict) or not is_tencentpretrain_config(data):
        raise TpError(f"--config {path} is not a TencentPretrain model config",
                      hint="give the JSON file TencentPretrain's pretrain.py read as --config_path")
    return data


_FROM_HINT = ("--from tencentpretrain converts transformer (encoder, decoder) and lstm / gru / "
              "bilstm / bigru / birnn models with mlm, sp, lm and bilm targets")


def _refuse(config: dict[str, Any], path: Path) -> None:
    """Configs whose weights tp's model would read differently than TencentPretrain's."""
    why = None
    if config.get("encoder") in ("lstm", "gru", "rnn") and config.get("bidirectional"):
        why = ("a bidirectional multi-layer torch RNN (its `_reverse` weights) is not tp's "
               "bilstm / birnn of two separate stacks")
    elif config.get("encoder") == "rnn":
        why = "TencentPretrain's one-directional rnn encoder has no tp counterpart"
    if why:
        raise TpError(f"tp cannot convert checkpoints of {path}: {why}", hint=_FROM_HINT)


def _vocab_tokenizer(vocab: Path, plugins: Plugins) -> dict[str, Any]:
    """data.tokenizer for TencentPretrain's --vocab_path / --spm_model_path file."""
    names = plugins.registry.names("tokenizer")
    if not vocab.is_file():
        raise TpError(f"--vocab {vocab} does not exist")
    if vocab.suffix == ".json":
        try:
            kind = json.loads(vocab.read_text(encoding="utf-8")).get("model", {}).get("type")
        except (OSError, json.JSONDecodeError, AttributeError) as e:
            raise TpError(f"--vocab {vocab} is not a valid tokenizer.json: {e}") from e
        name = "wordpiece" if kind == "WordPiece" else "hf"
        return {"name": name, "tokenizer_json": str(vocab.resolve())}
    if vocab.suffix == ".model":
        if "unigram" not in names:
            raise TpError("--vocab: no installed tokenizer reads a sentencepiece model")
        return {"name": "unigram", "model": str(vocab.resolve())}
    return {"name": "wordpiece", "vocab": str(vocab.resolve()), "lowercase": True}


def _rows(sd: dict[str, torch.Tensor], config: Path) -> int:
    """The vocabulary: the word embedding's rows (TencentPretrain's configs carry none)."""
    for key in (WORD, TGT_WORD):
        if key in sd and sd[key].dim() == 2:
            return int(sd[key].shape[0])
    raise CheckpointError(f"the checkpoint has no {WORD}, so its vocabulary size is unknown",
                          hint=f"is it the model {config} describes (a text model)?")


def _unshared(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, each with a storage of its own: a TencentPretrain file may hold one
    tensor under two names that tp keeps apart (an untied output equal to the embedding), and
    safetensors refuses shared storage."""
    seen: set[int] = set()
    out = {}
    for k, v in sd.items():
        v = v.contiguous()
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def _relative_note(sd: dict[str, torch.Tensor]) -> str | None:
    layer = any(".relative_pos_emb." in k and k.startswith("encoder.transformer.") for k in sd)
    top = "encoder.relative_pos_emb.relative_attention_bias.weight" in sd
    if layer and top:
        return ("the checkpoint has both encoder.transformer.N.relative_pos_emb (read by "
                "TencentPretrain's layers) and encoder.relative_pos_emb: the layers' table is used")
    return None


def from_tencentpretrain(source: Path, config: Path | None, out: Path, plugins: Plugins, *,
                         vocab: Path | None = None) -> ConvertResult:
    """A TencentPretrain checkpoint + its config JSON -> a tp checkpoint folder at `out`."""
    from tpcli.data import build_tokenizer
    from tpcli.files import save_weights
    from tpcli.model import build_model, vocabulary
    from tpcli.recipes import load_recipe
    from tpcli.recipes.config import build_recipe
    from tpcli.train.run_folder import write_recipe

    if config is None:
        raise TpError("--from tencentpretrain needs --config CONFIG, the model config JSON the "
                      "checkpoint was trained with (TencentPretrain's --config_path)",
                      hint="e.g. --config models/bert/base_config.json")
    _refuse(_read_config(Path(config)), Path(config))
    sd = read_checkpoint(Path(source))
    rows = _rows(sd, Path(config))
    overrides = [f"model.vocab_size={rows}"]
    notes: list[str] = []
    recipe = load_recipe(str(config), overrides, plugins)
    raw = json.loads(json.dumps(recipe.raw))
    if vocab is not None:
        raw.setdefault("data", {})["tokenizer"] = _vocab_tokenizer(Path(vocab), plugins)
        recipe = build_recipe(raw, plugins.registry, name=str(config), path=recipe.path)
    tokenizer = build_tokenizer(recipe, plugins)
    if tokenizer is not None and int(tokenizer.vocab_size) != rows:
        size = int(tokenizer.vocab_size)
        if vocab is not None:
            raise TpError(f"--vocab {vocab} has {size} tokens, the checkpoint's word embedding "
                          f"{rows} rows", hint="give the vocabulary the model was trained with "
                          "(TencentPretrain's --vocab_path)")
        notes.append(f"the config's default tokenizer ({recipe.tokenizer.name}) has {size} "
                     f"tokens, the checkpoint {rows}: the folder has no tokenizer; pass --vocab "
                     "(TencentPretrain's --vocab_path) to use it with tp finetune / tp infer")
        raw["data"].pop("tokenizer")
        tokenizer = None
    try:
        rules = key_rules(recipe.model)
    except Unsupported as e:
        raise TpError(f"tp cannot convert checkpoints of {config}: {e.message}",
                      hint=_FROM_HINT) from e
    note = _relative_note(sd)
    if note:
        notes.append(note)
    with staged(out) as tmp:
        if tokenizer is not None:
            tokenizer.save(str(tmp / "tokenizer"))
        recipe = build_recipe(raw, plugins.registry, name=f"the recipe translated from {config}",
                              path=tmp)
        model = build_model(recipe.model, plugins.registry, *vocabulary(tokenizer))
        own = dict(model.state_dict())
        try:
            tp_sd = apply_rules(sd, rules, "hf_to_tp", expected=own.keys())
        except CheckpointError as e:
            detail = e.message.partition(":")[2]  # the keymap's lists of keys
            raise CheckpointError(
                f"the weights of {source} do not fit {config} (TencentPretrain keys on the "
                f"source side, tp's on the result side):{detail}",
                hint="is it the config the checkpoint was trained with (layers_num, target, "
                "tie_weights, embedding, ...)?") from e
        raise_shapes(shape_problems(tp_sd, own, "checkpoint"), str(source))
        model.load_state_dict(tp_sd, strict=True)
        save_weights(_unshared(tp_sd), tmp / WEIGHTS, {"format": "pt", "step": "0"})
        write_recipe(tmp, recipe.raw)
        info = {"step": 0, "weights": WEIGHTS, "converted_from": {
            "source": str(source), "format": FORMAT, "config": str(config)}}
        (tmp / "checkpoint.json").write_text(json.dumps(info, indent=1) + "\n")
    return ConvertResult(Path(out), FORMAT, describe_model(recipe.model), len(tp_sd), notes=notes)


# ------------------------------------------------------------------------------ tp -> TencentPretrain


def to_tencentpretrain(checkpoint: Path, out: Path, plugins: Plugins) -> ConvertResult:
    """A tp checkpoint (run or step folder) -> `out`/model.bin (TencentPretrain's state dict,
    tied tensors under each name) and `out`/config.json (its model config)."""
    from tpcli.errors import ConfigError
    from tpcli.model import build_model
    from tpcli.recipes import load_recipe
    from tpcli.recipes.tencentpretrain import to_tencentpretrain as config_of
    from tpcli.train import checkpoint as ckpt_io
    from tpcli.train.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint, plugins)  # strict: corrupt files, shapes, keys
    spec = loaded.recipe.model
    what = describe_model(spec)
    notes: list[str] = []
    try:
        config = config_of(loaded.recipe, notes)
        rules = key_rules(spec)
    except (ConfigError, Unsupported) as e:
        detail = e.message if isinstance(e, Unsupported) else "; ".join(
            p.message for p in e.problems)
        raise TpError(f"TencentPretrain has no counterpart for this model ({what}): {detail}",
                      hint="--to tencentpretrain converts transformer / RNN encoders, the "
                      "transformer decoder, word / pos / seg / sinusoidalpos embeddings and the "
                      "mlm, sp, lm, bilm targets") from e
    tp_sd = ckpt_io.read_weights(loaded.path)
    foreign = apply_rules(tp_sd, rules, "tp_to_hf")
    rows = _rows(foreign, loaded.path)
    # the keys the config's model reads back with another shape (or lacks): the two-segment
    # table TencentPretrain holds with 3 rows, an output TencentPretrain keeps untied
    allowed = {k for k in tp_sd if k.endswith("parts.seg.embedding.weight")
               and tp_sd[k].shape[0] == 2}
    if spec.decoder is not None and spec.options.tie_weights and spec.options.share_embeddings:
        notes.append("tp ties the lm output to the shared word embedding; TencentPretrain keeps "
                     "a separate output matrix under share_embedding, written with the same "
                     "values (read back, it is untied)")
        allowed.add("targets.lm.decoder.weight")
    with staged(out) as tmp:
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        # the config must read back as this model: every tensor, same shape
        back = load_recipe(str(tmp / CONFIG), [f"model.vocab_size={rows}"], plugins)
        with torch.device("meta"):
            again = build_model(back.model, plugins.registry, rows, {})
        want = {k: tuple(v.shape) for k, v in again.state_dict().items() if k not in allowed}
        have = {k: tuple(v.shape) for k, v in tp_sd.items() if k not in allowed}
        if want != have:
            differ = sorted(set(want.items()) ^ set(have.items()))[:8]
            raise TpError(f"the TencentPretrain config written for {what} does not read back as "
                          f"the same model (first differences: {differ})",
                          hint="a bug in tp's TencentPretrain translation: please report it")
        torch.save(foreign, tmp / MODEL_BIN)
    return ConvertResult(Path(out), FORMAT, what, len(foreign), notes=notes)
