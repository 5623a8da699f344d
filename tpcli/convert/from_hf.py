"""`tp convert SRC --from hf`: a Hugging Face folder or Hub id -> a tp checkpoint folder with the
layout training writes (model.safetensors, recipe.yaml, tokenizer/, checkpoint.json)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from tpcli.convert import Converter
from tpcli.errors import CheckpointError, TpError
from tpcli.plugins import Plugins
from tpcli.convert.common import (BIN, BIN_INDEX, HF_INDEX, HUB_PATTERNS, TOKENIZER_FILES, WEIGHTS,
                                  ConvertResult, converters, raise_shapes, shape_problems,
                                  staged)
from tpcli.convert.check import hf_model_class, compare

# ------------------------------------------------------------------------------ HF -> tp


def resolve_source(source: str) -> Path:
    """A local HF folder, or a Hub id downloaded (or found in the cache) by huggingface_hub."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TpError(f"{source} is a file; --from hf reads a folder (config.json + weights)")
        return path
    if source.count("/") > 1 or source.startswith((".", "/", "~")) or not source.strip():
        raise TpError(f"{source} does not exist",
                      hint="give a Hugging Face folder or a Hub id such as bert-base-uncased")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # noqa: BLE001 - every hub failure (offline, 404, auth) is the user's
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = ("offline (HF_HUB_OFFLINE is set) and it is not in the local cache" if offline
               else f"{type(e).__name__}: {e}")
        raise TpError(f"cannot download {source!r} from the Hugging Face Hub: {why}",
                      hint="check the id, go online, or pass a local folder") from e


def read_hf_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise TpError(f"{folder} has no config.json: it is not a Hugging Face model folder") from e
    except (OSError, json.JSONDecodeError) as e:
        raise TpError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict) or "model_type" not in data:
        raise TpError(f"{path} names no model_type", hint="is it a transformers config.json?")
    return data


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is corrupt or unreadable: {e}",
                              hint="download it again") from e


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a corrupt or unsafe file
        raise CheckpointError(f"{path} is corrupt, or holds more than tensors: {e}",
                              hint="tp unpickles no code (weights_only=True); prefer "
                              "model.safetensors") from e
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} holds a {type(sd).__name__}, not a state dict")
    return sd


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, its sharded index, or pytorch_model.bin (weights_only), in that order."""
    for index_name, loader in ((HF_INDEX, _load_safetensors), (BIN_INDEX, _load_bin)):
        index = folder / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, json.JSONDecodeError, KeyError, AttributeError) as e:
                raise CheckpointError(f"{index} is not a valid shard index: {e}") from e
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                if not (folder / shard).is_file():
                    raise CheckpointError(f"{folder / shard} (listed in {index_name}) is missing")
                sd.update(loader(folder / shard))
            return sd
    if (folder / WEIGHTS).is_file():
        return _load_safetensors(folder / WEIGHTS)
    if (folder / BIN).is_file():
        return _load_bin(folder / BIN)
    raise CheckpointError(f"{folder} holds no weights ({WEIGHTS}, {HF_INDEX} or {BIN})")


def _legacy_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old TF-converted checkpoints call LayerNorm's parameters gamma / beta (as transformers
    renames them on load)."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".gamma"):
            k = k[: -len("gamma")] + "weight"
        elif k.endswith(".beta"):
            k = k[: -len("beta")] + "bias"
        out[k] = v
    return out


def choose_hf_converter(hf_config: dict[str, Any], plugins: Plugins) -> tuple[Converter, bool]:
    """The converter for config.json's model_type, and whether the model is headless."""
    convs = converters(plugins)
    model_type = hf_config["model_type"]
    conv = convs.get(model_type)
    archs = hf_config.get("architectures") or []
    arch = archs[0] if archs else None
    if conv is None:
        raise TpError(f"unsupported Hugging Face architecture {arch or model_type!r} "
                      f"(model_type {model_type!r})",
                      hint=f"supported model_types: {', '.join(sorted(convs)) or 'none'}")
    if arch is None or arch in (conv.hf_architecture, *conv.also_reads,
                                *conv.full_architectures):
        return conv, False
    if arch == conv.base_architecture:
        return conv, True
    known = [a for a in (conv.hf_architecture, conv.base_architecture, *conv.also_reads,
                         *conv.full_architectures) if a]
    raise TpError(f"unsupported Hugging Face architecture {arch!r}: converter {conv.name!r} maps "
                  f"{' and '.join(known)}", hint="convert the pre-training checkpoint of the model")


def _tokenizer_section(folder: Path, plugins: Plugins) -> tuple[dict[str, Any], Path]:
    """The recipe's data.tokenizer for the folder's tokenizer file, and that file."""
    names = plugins.registry.names("tokenizer")
    tj, vocab = folder / "tokenizer.json", folder / "vocab.txt"
    tcfg: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        try:
            tcfg = json.loads((folder / "tokenizer_config.json").read_text())
        except (OSError, json.JSONDecodeError):
            tcfg = {}
    if tj.is_file():
        try:
            kind = json.loads(tj.read_text(encoding="utf-8")).get("model", {}).get("type")
        except (OSError, json.JSONDecodeError, AttributeError) as e:
            raise TpError(f"{tj} is not a valid tokenizer.json: {e}") from e
        if kind == "WordPiece" and "wordpiece" in names:
            return {"name": "wordpiece", "tokenizer_json": tj.name}, tj
        if "hf" in names:
            return {"name": "hf", "tokenizer_json": tj.name}, tj
        raise TpError(f"{tj} is a {kind} tokenizer and no installed tokenizer reads it",
                      hint=f"installed tokenizers: {', '.join(names)}")
    if vocab.is_file() and "wordpiece" in names:
        lower = bool(tcfg.get("do_lower_case", True))
        return {"name": "wordpiece", "vocab": vocab.name, "lowercase": lower}, vocab
    raise TpError(f"{folder} has no tokenizer file (looked for {', '.join(TOKENIZER_FILES)})",
                  hint="save the tokenizer beside the model (tokenizer.save_pretrained(DIR))")


def _copy_tokenizer(section: dict[str, Any], file: Path, folder: Path, tmp: Path,
                    plugins: Plugins) -> tuple[Any, dict[str, Any]]:
    """The folder's tokenizer, saved into the checkpoint being written at `tmp`, and the
    recipe's data section naming it there."""
    tok_cls = plugins.registry.get("tokenizer", section["name"])
    options = {k: v for k, v in section.items() if k != "name"}
    tokenizer = tok_cls(tok_cls.Config(**options), folder)
    tokenizer.save(str(tmp / "tokenizer"))
    if not (tmp / "tokenizer" / file.name).is_file():
        shutil.copy(file, tmp / "tokenizer" / file.name)
    key = "tokenizer_json" if "tokenizer_json" in section else "vocab"
    section = {**section, key: f"tokenizer/{file.name}"}  # the recipe beside it stays usable
    return tokenizer, {"tokenizer": section}


def _to_tp(conv: Converter, hf_sd: dict[str, torch.Tensor], hf_config: dict[str, Any],
           own: dict[str, torch.Tensor], base: bool, partial: bool = False
           ) -> dict[str, torch.Tensor]:
    """HF weights -> tp keys; a headless model may lack the targets (and its pooler may have no
    tp counterpart); with `partial` the targets' rules are optional (an `also_reads`
    architecture's checkpoint may hold only some of the heads: ALBERT's MLM without SOP)."""
    from dataclasses import replace

    from tpcli.convert.keymap import convert as apply_rules

    ignore = ["pooler.*"] if base and not any(k.startswith("targets.") and ".pooler." in k
                                              for k in own) else []
    rules = list(conv.rules_for(hf_config, base))
    if partial:
        rules = [replace(r, optional=True) if str(getattr(r, "tp", "")).startswith("targets.")
                 and hasattr(r, "optional") else r for r in rules]
    return apply_rules(hf_sd, rules, "hf_to_tp", ignore=ignore,
                       expected=None if base or partial else own.keys())


def _convert_weights(conv: Converter, hf_sd: dict[str, torch.Tensor], hf_config: dict[str, Any],
                     own: dict[str, torch.Tensor], base: bool, arch: str
                     ) -> tuple[dict[str, torch.Tensor], bool]:
    """(tp weights, whether some targets must start fresh), trying the architecture's key map,
    then (for an `also_reads` architecture) the same map with optional heads, then the headless
    map: some Hub checkpoints of a full architecture hold the headless model's keys (the released
    gpt2: `h.0...`, no `transformer.`), which transformers accepts too."""
    try:
        return _to_tp(conv, hf_sd, hf_config, own, base), base
    except CheckpointError:
        if base:
            raise
        first = sys.exc_info()[1]
    if arch in conv.also_reads:
        try:
            return _to_tp(conv, hf_sd, hf_config, own, False, partial=True), True
        except TpError:
            pass
    if conv.base_rules or conv.config_rules is not None:
        try:
            return _to_tp(conv, hf_sd, hf_config, own, True), True
        except TpError:
            pass
    raise first  # type: ignore[misc]


def from_hf(source: str, out: Path, plugins: Plugins, *, check: bool = False,
            tolerance: float = 1e-4) -> ConvertResult:
    """A Hugging Face folder or Hub id -> a tp checkpoint folder at `out`."""
    from tpcli.files import save_weights
    from tpcli.train.run_folder import write_recipe

    from tpcli.recipes.config import build_recipe
    from tpcli.model import build_model, vocabulary

    folder = resolve_source(source)
    hf_config = read_hf_config(folder)
    conv, base = choose_hf_converter(hf_config, plugins)
    arch = (hf_config.get("architectures") or [conv.hf_architecture])[0]
    model_section = conv.config_to_recipe(hf_config)
    text = conv.preprocessing is None  # else a model of images or audio: no tokenizer
    if text:
        tok_section, tok_file = _tokenizer_section(folder, plugins)
    hf_sd = _legacy_names(read_hf_weights(folder))
    with staged(out) as tmp:
        tokenizer = None
        if text:
            tokenizer, data = _copy_tokenizer(tok_section, tok_file, folder, tmp, plugins)
            if conv.processor is not None:
                data["processor"] = conv.processor(hf_config)
        else:
            data = conv.preprocessing.from_hf(folder, hf_config)
            # a model that reads audio and writes text (S2T) also carries its tokenizer
            carry = getattr(conv.preprocessing, "tokenizer_from_hf", None)
            carried = carry(folder, hf_config, tmp / "tokenizer") if carry else None
            if carried is not None:
                tokenizer, data["tokenizer"] = carried
        raw: dict[str, Any] = {"model": model_section, "data": data, "pretrain": {}}
        task = conv.task(hf_config) if conv.task is not None else None
        if task is not None:  # a fine-tuned classifier: `tp infer` runs on it as converted
            raw["finetune"] = {"task": task}
        recipe = build_recipe(raw, plugins.registry, name=f"the recipe translated from {folder}",
                              path=tmp)
        vocab, special_ids = vocabulary(tokenizer)
        if tokenizer is not None and vocab > (model_section.get("vocab_size") or vocab):
            raise TpError(f"the tokenizer of {folder} has {vocab} tokens, more than "
                          f"the model's vocab_size {model_section.get('vocab_size')}")
        model = build_model(recipe.model, plugins.registry, vocab, special_ids)
        own = dict(model.state_dict())
        headless = base  # the architecture's: what --check compares
        tp_sd, base = _convert_weights(conv, hf_sd, hf_config, own, base, arch)
        raise_shapes(shape_problems(tp_sd, own, "checkpoint"), str(folder))
        notes: list[str] = []
        fresh: list[str] = []
        if base:  # headless, or heads missing: those targets start from tp's initialisation
            unknown = sorted(set(tp_sd) - set(own))
            if unknown:
                raise CheckpointError(f"keys the tp model does not have: {unknown[:12]}")
            fresh = sorted(set(own) - set(tp_sd))
            if any(not k.startswith("targets.") for k in fresh):
                raise CheckpointError("the headless checkpoint lacks body weights: "
                                      f"{[k for k in fresh if not k.startswith('targets.')][:12]}")
            tp_sd = {**{k: own[k] for k in fresh}, **tp_sd}
            if fresh:
                what = "is headless" if headless else "holds only some heads"
                notes.append(f"{arch} {what}: {len(fresh)} target tensors are freshly "
                             "initialised")
        model.load_state_dict(tp_sd, strict=True)
        save_weights({k: v.contiguous() for k, v in tp_sd.items()}, tmp / WEIGHTS,
                     {"format": "pt", "step": "0"})
        write_recipe(tmp, recipe.raw)
        info = {"step": 0, "weights": WEIGHTS, "converted_from": {
            "source": source, "model_type": hf_config["model_type"], "architecture": arch,
            "initialised": fresh}}
        (tmp / "checkpoint.json").write_text(json.dumps(info, indent=1) + "\n")
        result = ConvertResult(Path(out), conv.name, arch, len(tp_sd), notes=notes,
                               compared="hidden states" if headless else "logits")
        if check:
            from tpcli.train.checkpoint import load_checkpoint

            loaded = load_checkpoint(tmp, plugins)
            compared, fields = arch, None
            if arch in conv.also_reads and not fresh:  # the full model's weights: compare it
                compared = conv.hf_architecture
            elif arch in conv.also_reads and not headless:  # some heads: the carried ones
                fields = {t.name: "logits" for t in recipe.model.targets
                          if not any(k.startswith(f"targets.{t.name}.") for k in fresh)}
            hf_model = hf_model_class(compared).from_pretrained(str(folder)).eval()
            result.max_abs_diff = compare(conv, hf_model, loaded.model, hf_config,
                                           loaded.tokenizer, tolerance, base=headless,
                                           fields=fields)
    return result

