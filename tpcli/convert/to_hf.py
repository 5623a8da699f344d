"""`tp convert CKPT --to hf`: a tp checkpoint -> model.safetensors (tied keys once) + config.json +
tokenizer files that plain `transformers` `from_pretrained` loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from tpcli.convert import Converter
from tpcli.errors import CheckpointError, TpError
from tpcli.plugins import Plugins
from tpcli.convert.common import (WEIGHTS, ConvertResult, converters, describe_model,
                                  raise_shapes, shape_problems, staged, transformers_module)
from tpcli.convert.check import hf_model_class, compare
# ------------------------------------------------------------------------------ tp -> HF


def choose_converter(spec: Any, vocab_size: int, plugins: Plugins, arch: str | None = None,
                     state: dict[str, torch.Tensor] | None = None
                     ) -> tuple[Converter, dict[str, Any]]:
    """The converter whose `recipe_to_config` accepts the model (or the one named `arch`) and
    the HF config it makes. With `state` (the tp weights), a converter whose key map does not
    convert them is passed over too."""
    convs = converters(plugins)
    if arch is not None:
        if arch not in convs:
            raise TpError(f"unknown converter {arch!r}",
                          hint=f"installed: {', '.join(sorted(convs)) or 'none'}")
        conv = convs[arch]
        if conv.recipe_to_config is None:
            raise TpError(f"converter {arch!r} converts from Hugging Face only")
        return conv, conv.recipe_to_config(spec, vocab_size)
    refused: list[str] = []
    for name, conv in sorted(convs.items()):
        if conv.recipe_to_config is None:
            continue
        try:
            config = conv.recipe_to_config(spec, vocab_size)
            if state is not None:
                conv.tp_to_hf(state, hf_config=config)
            return conv, config
        except TpError as e:
            refused.append(f"{name}: {e.message}")
    why = "".join(f"\n  - {r}" for r in refused)
    raise TpError(f"no Hugging Face architecture for {describe_model(spec)}; no installed "
                  f"converter accepts it:{why}",
                  hint="only models with a transformers counterpart convert (tp plugins lists "
                  "the converters; --arch NAME picks one)")


def _full_hf_config(conv: Converter, hf_config: dict[str, Any], dtype: torch.dtype) -> Any:
    """The `transformers` config object (its own defaults filled in), or None without it."""
    try:
        import transformers
    except ImportError:
        return None
    values = {k: v for k, v in hf_config.items() if k not in ("architectures", "model_type")}
    try:
        config = transformers.AutoConfig.for_model(hf_config["model_type"], **values)
    except (ValueError, TypeError, KeyError) as e:
        raise TpError(f"transformers {transformers.__version__} refuses the {conv.name} config "
                      f"the converter made: {e}",
                      hint="a model option this transformers version does not support") from e
    config.architectures = list(hf_config.get("architectures") or [conv.hf_architecture])
    config.dtype = dtype
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(config, key, None)  # a class default beyond this vocabulary: none
        if isinstance(value, int) and not 0 <= value < config.vocab_size:
            setattr(config, key, None)
    return config


def _write_config(directory: Path, conv: Converter, hf_config: dict[str, Any],
                  dtype: torch.dtype) -> None:
    config = _full_hf_config(conv, hf_config, dtype)
    dtype_name = str(dtype).removeprefix("torch.")
    if config is not None:
        config.save_pretrained(str(directory))  # transformers' own spelling of config.json
        data = json.loads((directory / "config.json").read_text())
        if "tie_word_embeddings" in hf_config:  # transformers 5 forces True for T5 v1.1
            data["tie_word_embeddings"] = hf_config["tie_word_embeddings"]
    else:
        data = dict(hf_config)
        data.setdefault("architectures", [conv.hf_architecture])
    data["torch_dtype"] = dtype_name  # transformers < 5 reads this name, >= 5 reads `dtype`
    data.setdefault("dtype", dtype_name)
    data.setdefault("transformers_version", _transformers_version())
    (directory / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _transformers_version() -> str:
    try:
        from importlib.metadata import version

        return version("transformers")
    except Exception:  # noqa: BLE001 - not installed: the oldest version tp's maps follow
        return "4.44.0"


def _check_hf_shapes(conv: Converter, hf_config: dict[str, Any], hf_sd: dict[str, torch.Tensor],
                     tied: list[str]) -> None:
    """The converted tensors against the HF model `transformers` builds from the config
    (on the meta device: no memory): a converter bug or an unsupported option shows here."""
    config = _full_hf_config(conv, hf_config, torch.float32)
    if config is None:
        return
    transformers = transformers_module()
    cls = getattr(transformers, hf_config["architectures"][0])
    with torch.device("meta"):
        model = cls(config)
    want = {k: v for k, v in model.state_dict().items()}
    got = {k: v for k, v in hf_sd.items() if k not in tied}
    missing = sorted(set(want) - set(got) - set(tied))
    # buffers transformers builds itself (position_ids, causal masks) are not weights
    persistent = {k for k in want if k in dict(model.named_parameters())}
    missing = [k for k in missing if k in persistent]
    unexpected = sorted(set(got) - set(want))
    if missing or unexpected:
        raise CheckpointError(
            f"converter {conv.name!r} made a state dict that {cls.__name__} does not accept: "
            f"missing {missing[:12]}, unexpected {unexpected[:12]}",
            hint="a bug in the converter's key map, or a model option it does not translate")
    raise_shapes(shape_problems(got, want, "converted"), f"converter {conv.name!r}")


def _save_tokenizer_hf(tokenizer: Any, directory: Path, segments: bool,
                       limit: int | None) -> None:
    """The tokenizer's `save_hf` files, plus what the tokenizer cannot know about the model:
    `model_input_names` (whether it takes token_type_ids) and `model_max_length` (`limit`, the
    most tokens it takes; transformers' default, 1e30, makes `truncation=True` a no-op and a
    long input crash the model). A smaller maximum the tokenizer already carries is kept."""
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if segments else [
        "input_ids", "attention_mask"]
    save_hf = getattr(tokenizer, "save_hf", None)
    if save_hf is not None:
        save_hf(str(directory))
        path = directory / "tokenizer_config.json"
        if path.is_file():
            config = json.loads(path.read_text(encoding="utf-8"))
            config.setdefault("model_input_names", inputs)
            config.update(_max_length(config.get("model_max_length"), limit))
            path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                            encoding="utf-8")
        return
    # a tokenizer without save_hf: its saved tokenizer.json plus a tokenizer_config.json
    scratch = directory / ".tp-tokenizer"
    tokenizer.save(str(scratch))
    if not (scratch / "tokenizer.json").is_file():
        raise TpError(f"tokenizer {type(tokenizer).__name__} cannot be written for transformers "
                      "(it has no save_hf and saves no tokenizer.json)")
    shutil.copy(scratch / "tokenizer.json", directory / "tokenizer.json")
    if (scratch / "vocab.txt").is_file():
        shutil.copy(scratch / "vocab.txt", directory / "vocab.txt")
    shutil.rmtree(scratch)
    tokens = {role: tokenizer.id_to_token(i) for role, i in tokenizer.special_ids.items()}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "model_input_names": inputs, **_max_length(None, limit),
              **{f"{role}_token": t for role, t in tokens.items() if t is not None}}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _max_length(saved: Any, limit: int | None) -> dict[str, int]:
    """{"model_max_length": n}: the model's `limit`, or a smaller one the tokenizer had."""
    if limit is None:
        return {"model_max_length": saved} if isinstance(saved, int) else {}
    return {"model_max_length": min(saved, limit) if isinstance(saved, int) else limit}


def to_hf(checkpoint: Path, out: Path, plugins: Plugins, *, arch: str | None = None,
          check: bool = False, tolerance: float = 1e-4) -> ConvertResult:
    """A tp checkpoint (run folder or step folder) -> a Hugging Face folder at `out`."""
    from tpcli.files import save_weights

    from tpcli.model import vocabulary
    from tpcli.train.checkpoint import load_checkpoint
    from tpcli.train import checkpoint as ckpt_io

    loaded = load_checkpoint(checkpoint, plugins)  # strict: corrupt files, shapes, keys
    spec = loaded.recipe.model
    tp_sd = ckpt_io.read_weights(loaded.path)
    vocab, special_ids = vocabulary(loaded.tokenizer)
    conv, hf_config = choose_converter(spec, vocab, plugins, arch, None if arch else tp_sd)
    hf_config.setdefault("architectures", [conv.hf_architecture])
    for role, i in special_ids.items():  # what the converter did not set
        if role in ("pad", "bos", "eos"):
            hf_config.setdefault(f"{role}_token_id", i)
    hf_sd = conv.tp_to_hf(tp_sd, hf_config=hf_config)
    tied = conv.tied_keys(hf_config)
    _check_hf_shapes(conv, hf_config, hf_sd, tied)
    dtypes = {v.dtype for v in tp_sd.values() if v.is_floating_point()}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    with staged(out) as tmp:
        weights = {k: v.contiguous() for k, v in hf_sd.items() if k not in tied}
        save_weights(weights, tmp / WEIGHTS, {"format": "pt"})
        _write_config(tmp, conv, hf_config, dtype)
        if conv.preprocessing is not None:  # preprocessor_config.json (images, audio)
            conv.preprocessing.to_hf(loaded.recipe, tmp, hf_config)
        elif loaded.tokenizer is None:
            raise TpError(f"converter {conv.name!r} writes tokenizer files, and the checkpoint "
                          "has no tokenizer", hint="a converter bug: it must declare the "
                          "preprocessing of a model without text")
        else:
            _save_tokenizer_hf(loaded.tokenizer, tmp, hf_config.get("type_vocab_size", 0) >= 2,
                               conv.input_limit(hf_config))
        result = ConvertResult(Path(out), conv.name, hf_config["architectures"][0], len(weights))
        if check:
            hf_model = hf_model_class(hf_config["architectures"][0]).from_pretrained(str(tmp))
            result.max_abs_diff = compare(conv, hf_model.eval(), loaded.model, hf_config,
                                           loaded.tokenizer, tolerance, base=False)
    return result

