"""`tp convert`: tp checkpoints to Hugging Face folders and back, and the parity check.

    to_hf(CKPT, OUT)      model.safetensors (tied keys once) + config.json + tokenizer files,
                          loadable by plain `transformers` `from_pretrained(OUT)`
    from_hf(SRC, OUT)     a tp checkpoint folder with the layout training writes (model.safetensors,
                          recipe.yaml, tokenizer/, checkpoint.json): `tpcli.api.load_checkpoint`

Both write into a temporary folder beside OUT and rename it into place only when everything
(including `--check`) succeeded, so a failure leaves nothing half-written. Every user mistake is a
TpError; loading is strict (missing, unexpected and mis-shaped keys are named).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from tpcli.convert import Converter
from tpcli.errors import CheckpointError, TpError
from tpcli.plugins import Plugins

WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
BIN = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
# files a Hub download needs (not the TF / Flax / ONNX weights)
HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]
CHECK_BATCH, CHECK_LENGTH = 3, 12  # --check: rows, tokens per row (row i has fewer real tokens)


@dataclass
class ConvertResult:
    """What `tp convert` did (printed as the command's summary)."""

    out: Path
    converter: str
    architecture: str
    tensors: int
    max_abs_diff: float | None = None
    compared: str = "logits"  # what --check compared: logits, or hidden states (headless)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"out": str(self.out), "converter": self.converter,
                             "architecture": self.architecture, "tensors": self.tensors}
        if self.max_abs_diff is not None:
            d["max_abs_diff"] = self.max_abs_diff
            d["compared"] = self.compared
        if self.notes:
            d["notes"] = "; ".join(self.notes)
        return d


# ------------------------------------------------------------------------------ shared helpers


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise TpError("this needs Hugging Face `transformers`, which is not installed",
                      hint="pip install 'tpcli[hf]'") from e
    return transformers


def _converters(plugins: Plugins) -> dict[str, Converter]:
    return {e.name: e.load() for e in plugins.registry.entries("converter")}


def describe_model(spec: Any) -> str:
    """`embedding [word] + encoder bilstm + target bilm`: a model in the paper's words."""
    parts = []
    for stream, stack in spec.stacks.items():
        where = f"{stream} " if stream else ""
        parts.append(f"{where}embedding [{', '.join(m.name for m in stack.embedding)}]")
        if stack.encoder is not None:
            parts.append(f"{where}encoder {stack.encoder.name}")
    if spec.decoder is not None:
        parts.append(f"tgt_embedding [{', '.join(m.name for m in spec.tgt_embedding)}]")
        parts.append(f"decoder {spec.decoder.name}")
    parts.append(f"target {' + '.join(t.name for t in spec.targets)}")
    return " + ".join(parts)


def _staging(out: Path) -> Path:
    """A fresh temporary folder beside `out`, renamed into place by `_publish`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TpError(f"{out} already exists and is not empty",
                      hint="choose another --out, or remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        out.rmdir()  # checked empty by _staging
    os.replace(tmp, out)


def _shape_problems(got: dict[str, torch.Tensor], want: dict[str, Any], what: str) -> list[str]:
    return sorted(f"{k}: {what} {tuple(got[k].shape)} vs config {tuple(want[k].shape)}"
                  for k in set(got) & set(want) if tuple(got[k].shape) != tuple(want[k].shape))


def _raise_shapes(problems: list[str], source: str) -> None:
    if problems:
        shown = "\n  - ".join(problems[:12])
        more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
        raise CheckpointError(f"the weights of {source} do not match its config:\n  - {shown}{more}",
                              hint="the checkpoint and its config.json / recipe.yaml disagree")


# ------------------------------------------------------------------------------ tp -> HF


def choose_converter(spec: Any, vocab_size: int, plugins: Plugins, arch: str | None = None,
                     state: dict[str, torch.Tensor] | None = None
                     ) -> tuple[Converter, dict[str, Any]]:
    """The converter whose `recipe_to_config` accepts the model (or the one named `arch`) and
    the HF config it makes. With `state` (the tp weights), a converter whose key map does not
    convert them is passed over too."""
    convs = _converters(plugins)
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
    transformers = _transformers()
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
    _raise_shapes(_shape_problems(got, want, "converted"), f"converter {conv.name!r}")


def _save_tokenizer_hf(tokenizer: Any, directory: Path, segments: bool) -> None:
    """The tokenizer's `save_hf` files; `model_input_names` says whether the model takes
    token_type_ids (a model fact the tokenizer cannot know)."""
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if segments else [
        "input_ids", "attention_mask"]
    save_hf = getattr(tokenizer, "save_hf", None)
    if save_hf is not None:
        save_hf(str(directory))
        path = directory / "tokenizer_config.json"
        if path.is_file():
            config = json.loads(path.read_text(encoding="utf-8"))
            config.setdefault("model_input_names", inputs)
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
              "model_input_names": inputs,
              **{f"{role}_token": t for role, t in tokens.items() if t is not None}}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def to_hf(checkpoint: Path, out: Path, plugins: Plugins, *, arch: str | None = None,
          check: bool = False, tolerance: float = 1e-4) -> ConvertResult:
    """A tp checkpoint (run folder or step folder) -> a Hugging Face folder at `out`."""
    from safetensors.torch import save_file

    from tpcli.api import load_checkpoint
    from tpcli.train import checkpoint as ckpt_io

    loaded = load_checkpoint(checkpoint, plugins)  # strict: corrupt files, shapes, keys
    spec = loaded.recipe.model
    tp_sd = ckpt_io.read_weights(loaded.path)
    conv, hf_config = choose_converter(spec, loaded.tokenizer.vocab_size, plugins, arch,
                                       None if arch else tp_sd)
    hf_config.setdefault("architectures", [conv.hf_architecture])
    for role, i in loaded.tokenizer.special_ids.items():  # what the converter did not set
        if role in ("pad", "bos", "eos"):
            hf_config.setdefault(f"{role}_token_id", i)
    hf_sd = conv.tp_to_hf(tp_sd, hf_config=hf_config)
    tied = conv.tied_keys(hf_config)
    _check_hf_shapes(conv, hf_config, hf_sd, tied)
    dtypes = {v.dtype for v in tp_sd.values() if v.is_floating_point()}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    tmp = _staging(out)
    try:
        weights = {k: v.contiguous() for k, v in hf_sd.items() if k not in tied}
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        _write_config(tmp, conv, hf_config, dtype)
        _save_tokenizer_hf(loaded.tokenizer, tmp, hf_config.get("type_vocab_size", 0) >= 2)
        result = ConvertResult(Path(out), conv.name, hf_config["architectures"][0], len(weights))
        if check:
            hf_model = _hf_model_class(hf_config["architectures"][0]).from_pretrained(str(tmp))
            result.max_abs_diff = _compare(conv, hf_model.eval(), loaded.model, hf_config,
                                           loaded.tokenizer, tolerance, base=False)
        _publish(tmp, Path(out))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


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
    convs = _converters(plugins)
    model_type = hf_config["model_type"]
    conv = convs.get(model_type)
    archs = hf_config.get("architectures") or []
    arch = archs[0] if archs else None
    if conv is None:
        raise TpError(f"unsupported Hugging Face architecture {arch or model_type!r} "
                      f"(model_type {model_type!r})",
                      hint=f"supported model_types: {', '.join(sorted(convs)) or 'none'}")
    if arch is None or arch == conv.hf_architecture:
        return conv, False
    if arch == conv.base_architecture:
        return conv, True
    known = [a for a in (conv.hf_architecture, conv.base_architecture) if a]
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


def _to_tp(conv: Converter, hf_sd: dict[str, torch.Tensor], hf_config: dict[str, Any],
           own: dict[str, torch.Tensor], base: bool) -> dict[str, torch.Tensor]:
    """HF weights -> tp keys; a headless model may lack the targets (and its pooler may have no
    tp counterpart)."""
    ignore = ["pooler.*"] if base and not any(k.startswith("targets.") and ".pooler." in k
                                              for k in own) else []
    return conv.hf_to_tp(hf_sd, base=base, hf_config=hf_config, ignore=ignore,
                         expected=None if base else own.keys())


def from_hf(source: str, out: Path, plugins: Plugins, *, check: bool = False,
            tolerance: float = 1e-4) -> ConvertResult:
    """A Hugging Face folder or Hub id -> a tp checkpoint folder at `out`."""
    from safetensors.torch import save_file

    from tpcli.config import build_recipe
    from tpcli.model import build_model

    folder = resolve_source(source)
    hf_config = read_hf_config(folder)
    conv, base = choose_hf_converter(hf_config, plugins)
    arch = (hf_config.get("architectures") or [conv.hf_architecture])[0]
    model_section = conv.config_to_recipe(hf_config)
    tok_section, tok_file = _tokenizer_section(folder, plugins)
    hf_sd = _legacy_names(read_hf_weights(folder))
    tmp = _staging(out)
    try:
        tok_cls = plugins.registry.get("tokenizer", tok_section["name"])
        options = {k: v for k, v in tok_section.items() if k != "name"}
        tokenizer = tok_cls(tok_cls.Config(**options), folder)
        tokenizer.save(str(tmp / "tokenizer"))
        if not (tmp / "tokenizer" / tok_file.name).is_file():
            shutil.copy(tok_file, tmp / "tokenizer" / tok_file.name)
        key = "tokenizer_json" if "tokenizer_json" in tok_section else "vocab"
        tok_section[key] = f"tokenizer/{tok_file.name}"  # the recipe beside it stays usable
        data: dict[str, Any] = {"tokenizer": tok_section}
        if conv.processor is not None:
            data["processor"] = conv.processor(hf_config)
        raw = {"model": model_section, "data": data, "pretrain": {}}
        recipe = build_recipe(raw, plugins.registry, name=f"the recipe translated from {folder}",
                              path=tmp)
        vocab = model_section.get("vocab_size") or tokenizer.vocab_size
        if tokenizer.vocab_size > vocab:
            raise TpError(f"the tokenizer of {folder} has {tokenizer.vocab_size} tokens, more than "
                          f"the model's vocab_size {vocab}")
        model = build_model(recipe.model, plugins.registry, tokenizer.vocab_size,
                            tokenizer.special_ids)
        own = dict(model.state_dict())
        headless = base  # the architecture's: what --check compares
        try:
            tp_sd = _to_tp(conv, hf_sd, hf_config, own, base)
        except CheckpointError:
            # some Hub checkpoints of a full architecture hold the headless model's keys (the
            # released gpt2: `h.0...`, no `transformer.`), which transformers accepts too
            if base or (not conv.base_rules and conv.config_rules is None):
                raise
            try:
                tp_sd, base = _to_tp(conv, hf_sd, hf_config, own, True), True
            except TpError:
                tp_sd = _to_tp(conv, hf_sd, hf_config, own, False)  # the first error again
        _raise_shapes(_shape_problems(tp_sd, own, "checkpoint"), str(folder))
        notes: list[str] = []
        fresh: list[str] = []
        if base:  # a headless model: the targets start from tp's initialisation
            unknown = sorted(set(tp_sd) - set(own))
            if unknown:
                raise CheckpointError(f"keys the tp model does not have: {unknown[:12]}")
            fresh = sorted(set(own) - set(tp_sd))
            if any(not k.startswith("targets.") for k in fresh):
                raise CheckpointError("the headless checkpoint lacks body weights: "
                                      f"{[k for k in fresh if not k.startswith('targets.')][:12]}")
            tp_sd = {**{k: own[k] for k in fresh}, **tp_sd}
            if fresh:
                notes.append(f"{arch} is headless: {len(fresh)} target tensors are freshly "
                             "initialised")
        model.load_state_dict(tp_sd, strict=True)
        save_file({k: v.contiguous() for k, v in tp_sd.items()}, str(tmp / WEIGHTS),
                  metadata={"format": "pt", "step": "0"})
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe.raw, sort_keys=False))
        info = {"step": 0, "weights": WEIGHTS, "converted_from": {
            "source": source, "model_type": hf_config["model_type"], "architecture": arch,
            "initialised": fresh}}
        (tmp / "checkpoint.json").write_text(json.dumps(info, indent=1) + "\n")
        result = ConvertResult(Path(out), conv.name, arch, len(tp_sd), notes=notes,
                               compared="hidden states" if headless else "logits")
        if check:
            from tpcli.api import load_checkpoint

            loaded = load_checkpoint(tmp, plugins)
            hf_model = _hf_model_class(arch).from_pretrained(str(folder)).eval()
            result.max_abs_diff = _compare(conv, hf_model, loaded.model, hf_config,
                                           loaded.tokenizer, tolerance, base=headless)
        _publish(tmp, Path(out))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


# ------------------------------------------------------------------------------ --check


def _hf_model_class(arch: str) -> Any:
    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()  # tp prints its own summary
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise TpError(f"this transformers ({transformers.__version__}) has no {arch}")
    return cls


def _rows(n_rows: int, length: int, vocab: int, pad: int, seed: int) -> tuple[torch.Tensor,
                                                                              torch.Tensor]:
    """(B, T) ids and (B, T) bool mask: row i has `length - 3 i` real tokens (never the pad id),
    then padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n_rows, length), generator=g)
    ids = torch.where(ids == pad, (ids + 1) % vocab, ids)
    mask = torch.ones(n_rows, length, dtype=torch.bool)
    for row in range(n_rows):
        mask[row, max(2, length - 3 * row):] = False
    return ids.masked_fill(~mask, pad), mask


def check_batch(spec: Any, hf_config: dict[str, Any], vocab: int) -> dict[str, torch.Tensor]:
    """The fixed padded batch `--check` runs through both models (tp batch keys)."""
    pad = hf_config.get("pad_token_id")
    pad = pad if isinstance(pad, int) and 0 <= pad < vocab else 0
    ids, mask = _rows(CHECK_BATCH, CHECK_LENGTH, vocab, pad, seed=1)
    batch = {"input_ids": ids, "attention_mask": mask}
    stack = next(iter(spec.stacks.values()))
    seg = {m.name: m.options for m in stack.embedding}.get("seg")
    if seg is not None and getattr(seg, "types", 1) >= 2:
        half = (torch.arange(CHECK_LENGTH) >= CHECK_LENGTH // 2).long().expand_as(ids)
        batch["segment_ids"] = half * mask
    if spec.decoder is not None:
        tids, tmask = _rows(CHECK_BATCH, CHECK_LENGTH - 4, vocab, pad, seed=2)
        batch["tgt_input_ids"], batch["tgt_attention_mask"] = tids, tmask
    return batch


HF_INPUTS = {"input_ids": "input_ids", "attention_mask": "attention_mask",
             "segment_ids": "token_type_ids", "tgt_input_ids": "decoder_input_ids",
             "tgt_attention_mask": "decoder_attention_mask"}


def max_abs_diff(conv: Converter, hf_model: Any, tp_model: Any, hf_config: dict[str, Any],
                 vocab: int, *, base: bool = False) -> float:
    """Max abs difference of the two models' logits (hidden states for a headless model) on the
    fixed padded batch of `check_batch`, over real positions. Ids are drawn below `vocab`."""
    batch = check_batch(tp_model.spec, hf_config, vocab)
    kwargs = {HF_INPUTS[k]: (v.long() if v.dtype == torch.bool else v) for k, v in batch.items()}
    with torch.no_grad():
        ref = hf_model(**kwargs)
        tmask = batch.get("tgt_attention_mask", batch["attention_mask"])
        if base:
            pairs = [("hidden", tp_model.features(batch).hidden, ref.last_hidden_state)]
        else:
            ours = tp_model.predict(batch)
            pairs = [(name, logits, getattr(ref, conv.outputs.get(name, "logits")))
                     for name, logits in ours.items()]
    worst = 0.0
    for name, mine, theirs in pairs:
        if tuple(mine.shape) != tuple(theirs.shape):
            raise TpError(f"--check: tp's {name} output is {tuple(mine.shape)}, the Hugging Face "
                          f"model's {tuple(theirs.shape)}")
        diff = (mine.float() - theirs.float()).abs()
        if diff.dim() >= 3:  # per token: only the real positions count
            diff = diff[tmask]
        worst = max(worst, float(diff.max()))
    return worst


def _compare(conv: Converter, hf_model: Any, tp_model: Any, hf_config: dict[str, Any],
             tokenizer: Any, tolerance: float, *, base: bool) -> float:
    """`max_abs_diff` on the tokenizer's ids; a TpError above `tolerance`."""
    vocab = min(tp_model.ctx.vocab_size, tokenizer.vocab_size)
    worst = max_abs_diff(conv, hf_model, tp_model, hf_config, vocab, base=base)
    if not worst <= tolerance:
        raise TpError(f"--check failed: the logits differ by up to {worst:.3g} (tolerance "
                      f"{tolerance:g}); nothing was written",
                      hint="a converter bug or an option it does not translate; --tolerance "
                      "raises the bar")
    return worst
