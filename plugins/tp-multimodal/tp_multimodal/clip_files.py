"""What the CLIP converter carries beside the weights: the tokenizer (CLIP's byte-level BPE) and
the image processor (HF's CLIPImageProcessor <-> the recipe's `image_text` processor).

Tokenizer. HF -> tp: the folder's tokenizer.json becomes the recipe's `hf` tokenizer, run as
written (lower-casing, CLIP's word split, `</w>` word ends), its roles from the files:
<|startoftext|> starts a caption and <|endoftext|> ends it (the `image_text` processor puts them
around every caption and keeps the end token when it cuts one, so the text pooling, `last`,
reads the end-of-text token as HF's does). A folder with only vocab.json + merges.txt gets its
tokenizer.json from transformers' CLIPTokenizer first. tp -> HF writes the tokenizer's files
(for CLIP's BPE: tokenizer_class CLIPTokenizer, and vocab.json + merges.txt beside
tokenizer.json as on the Hub) with the text tower's length as model_max_length, and the
tokenizer's pad / start / end ids into config.json's text_config, where HF's text pooling
looks for the end-of-text token.

Image processor. CLIPImageProcessor resizes the shorter side to `shortest_edge` (bicubic),
centre-crops `crop_size`, rescales by 1/255 and normalises with OpenAI's mean and std. tp's
`image_text` processor stores each image the same way (shorter side to `size`, bicubic, centre
crop size x size) and normalises with the recipe's mean and std: with crop_size = shortest_edge
(every released CLIP) the pixels are HF's. Anything else is recorded as the closest section
and a warning says what differs (the weights convert exactly either way). tp -> HF writes a
CLIPImageProcessor for the model's image size with the recipe's mean and std, in the classic
preprocessor_config.json, which `AutoProcessor.from_pretrained` reads in transformers 4 and 5
(transformers 5 itself saves processor_config.json, read here too).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from tp_vision.hf_preprocessing import PROCESSOR_FILE, RESCALE, read_processor_config
from tpcli.errors import DataError, TpError

log = logging.getLogger(__name__)
IMAGE_PROCESSOR, PROCESSOR = "CLIPImageProcessor", "CLIPProcessor"
COMBINED_FILE = "processor_config.json"  # transformers 5's processor file (image processor inside)
TOKENIZER_CONFIG = "tokenizer_config.json"
BICUBIC = 3  # PIL's resample code, CLIPImageProcessor's default
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
DEFAULTS = {"do_resize": True, "size": {"shortest_edge": 224}, "resample": BICUBIC,
            "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
            "do_rescale": True, "rescale_factor": RESCALE, "do_normalize": True,
            "image_mean": OPENAI_MEAN, "image_std": OPENAI_STD}


# ------------------------------------------------------------------------ image processor

def image_processor_config(folder: Path) -> dict[str, Any] | None:
    """The folder's CLIPImageProcessor settings: preprocessor_config.json, or the
    `image_processor` of transformers 5's processor_config.json; None without either."""
    config = read_processor_config(folder)
    if config is not None:
        return config
    path = folder / COMBINED_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}",
                        hint="save the processor again (processor.save_pretrained(DIR))") from e
    inner = data.get("image_processor") if isinstance(data, dict) else None
    return inner if isinstance(inner, dict) else None


def _edge(value: Any, key: str, where: Path) -> int:
    """shortest_edge of `size`, or the side of a square {height, width} / int."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if isinstance(value.get("shortest_edge"), int):
            return int(value["shortest_edge"])
        if value.get("height") == value.get("width") and isinstance(value.get("height"), int):
            return int(value["height"])
    raise DataError(f"{where}: {key} {value!r} is neither a shortest edge nor a square",
                    hint=f"save the checkpoint's {IMAGE_PROCESSOR} again")


def processor_section(folder: Path, image_size: int, max_length: int) -> dict[str, Any]:
    """The recipe's `image_text` processor section (layout dual) for the folder's
    CLIPImageProcessor, a model taking `image_size` images and `max_length` tokens."""
    config = image_processor_config(folder)
    if config is None:
        log.warning("%s has no %s: assuming %s's defaults (shorter side 224, centre crop 224, "
                    "OpenAI's mean and std)", folder, PROCESSOR_FILE, IMAGE_PROCESSOR)
        config = {}
    config = {**DEFAULTS, **config}
    where = folder / PROCESSOR_FILE
    edge = _edge(config["size"], "size", where) if config["do_resize"] else image_size
    crop = _edge(config["crop_size"], "crop_size", where) if config["do_center_crop"] else edge
    differs = []
    if config["do_resize"] and config["resample"] != BICUBIC:
        differs.append(f"resample {config['resample']} (tp stores images resized bicubic)")
    if edge != crop:
        differs.append(f"it resizes the shorter side to {edge} and crops {crop} (tp crops the "
                       f"centre square of the image at {crop})")
    if not config["do_rescale"] or abs(float(config["rescale_factor"]) - RESCALE) > 1e-12:
        differs.append("a rescale other than 1/255")
    if crop != image_size:
        differs.append(f"its images are {crop} pixels wide, the model takes {image_size}")
    normalise = bool(config["do_normalize"])
    section: dict[str, Any] = {
        "name": "image_text", "layout": "dual", "max_length": max_length, "size": max(crop, 8),
        "mean": [float(x) for x in config["image_mean"]] if normalise else [0.0] * 3,
        "std": [float(x) for x in config["image_std"]] if normalise else [1.0] * 3}
    if section["size"] != image_size:
        section["image_size"] = image_size
    if differs:
        log.warning("%s: tp's image_text processor (shorter side resized bicubic, centre square, "
                    "1/255, mean and std) differs from this image processor: %s. The recipe "
                    "takes the closest tp has; the weights convert exactly, the pixels tp feeds "
                    "them differ slightly from Hugging Face's.", where, "; ".join(differs))
    return section


def image_processor_json(image_size: int, options: Any) -> dict[str, Any]:
    """preprocessor_config.json of a CLIPImageProcessor for `image_size` images with the
    recipe processor's mean and std (OpenAI's when it has none)."""
    return {**DEFAULTS, "image_processor_type": IMAGE_PROCESSOR, "processor_class": PROCESSOR,
            "do_convert_rgb": True, "size": {"shortest_edge": image_size},
            "crop_size": {"height": image_size, "width": image_size},
            "image_mean": [float(x) for x in getattr(options, "mean", OPENAI_MEAN)],
            "image_std": [float(x) for x in getattr(options, "std", OPENAI_STD)]}


# ------------------------------------------------------------------------ tokenizer

def end_token(special_ids: dict[str, int]) -> int | None:
    """The id that ends a caption (the `image_text` processor's choice: sep, else eos)."""
    return next((int(special_ids[k]) for k in ("sep", "eos") if k in special_ids), None)


def start_token(special_ids: dict[str, int]) -> int | None:
    return next((int(special_ids[k]) for k in ("cls", "bos") if k in special_ids), None)


def is_clip_bpe(tokenizer_json: Path) -> bool:
    """A BPE tokenizer.json whose words end in `</w>`: CLIP's, which CLIPTokenizer loads."""
    try:
        model = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("model") or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
    return model.get("type") == "BPE" and model.get("end_of_word_suffix") == "</w>"


def write_tokenizer_json(folder: Path, directory: Path) -> None:
    """tokenizer.json (and tokenizer_config.json) in `directory` from a folder holding only
    CLIP's vocab.json + merges.txt, through transformers' CLIPTokenizer."""
    try:
        from transformers import CLIPTokenizer
    except ImportError as e:
        raise TpError(f"{folder} holds CLIP's vocab.json and merges.txt without a "
                      "tokenizer.json; reading them needs transformers",
                      hint="pip install transformers, or save the tokenizer with "
                      "tokenizer.save_pretrained(DIR), which writes tokenizer.json") from e
    tok = CLIPTokenizer.from_pretrained(str(folder))
    directory.mkdir(parents=True, exist_ok=True)
    tok.backend_tokenizer.save(str(directory / "tokenizer.json"))
    roles = {f"{r}_token": str(getattr(tok, f"{r}_token")) for r in ("bos", "eos", "pad", "unk")}
    (directory / TOKENIZER_CONFIG).write_text(json.dumps(roles, indent=2) + "\n")


def write_vocab_and_merges(folder: Path) -> None:
    """vocab.json + merges.txt beside CLIP's tokenizer.json, as the Hub's CLIP folders hold
    them: what a tokenizer built from them rather than from tokenizer.json (a slow
    CLIPTokenizer) reads."""
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = dict(spec["model"]["vocab"])
    for added in spec.get("added_tokens") or []:
        vocab.setdefault(added["content"], added["id"])
    merges = [" ".join(m) if isinstance(m, list) else str(m) for m in spec["model"]["merges"]]
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges),
                                       encoding="utf-8")


def tokenizer_from_hf(folder: Path, hf_config: dict[str, Any], directory: Path
                      ) -> tuple[Any, dict[str, Any]]:
    """(tp tokenizer saved in `directory`, the recipe's data.tokenizer section) of the folder's
    CLIP tokenizer; TpError when it has none, or no end-of-text token."""
    from tpcli.convert.from_hf import _copy_tokenizer, _tokenizer_section
    from tpcli.plugins import get_plugins

    plugins = get_plugins()
    source = folder
    if not (folder / "tokenizer.json").is_file():
        if not all((folder / n).is_file() for n in ("vocab.json", "merges.txt")):
            raise TpError(f"{folder} has no CLIP tokenizer (tokenizer.json, or vocab.json and "
                          "merges.txt)", hint="save the tokenizer beside the model "
                          "(processor.save_pretrained(DIR))")
        source = directory.parent / ".clip-tokenizer"
        write_tokenizer_json(folder, source)
    try:
        section, file = _tokenizer_section(source, plugins)
        tokenizer, data = _copy_tokenizer(section, file, source, directory.parent, plugins)
    finally:
        if source != folder:
            shutil.rmtree(source, ignore_errors=True)
    end = end_token(tokenizer.special_ids)
    if end is None:
        raise TpError(f"the tokenizer of {folder} has no end-of-text token (eos or sep), where "
                      "CLIP reads a caption's embedding", hint="give tokenizer_config.json an "
                      "eos_token (CLIP: <|endoftext|>)")
    eos = hf_config.get("text_config", {}).get("eos_token_id")
    legacy = eos == 2  # HF then pools at the row's highest id
    if (legacy and end != tokenizer.vocab_size - 1) or (not legacy and eos not in (None, end)):
        log.warning("%s: the tokenizer ends captions with id %d, and HF's CLIP pools at %s; tp "
                    "pools at the caption's end token", folder, end,
                    "the highest id" if legacy else f"id {eos}")
    return tokenizer, data["tokenizer"]


def token_ids(special_ids: dict[str, int]) -> dict[str, int]:
    """text_config's pad / bos / eos ids of a tp tokenizer (eos: the caption's end token)."""
    ids = {"eos_token_id": end_token(special_ids), "bos_token_id": start_token(special_ids),
           "pad_token_id": special_ids.get("pad")}
    return {k: v for k, v in ids.items() if v is not None}


# ------------------------------------------------------------------------ the converter's part

class ClipPreprocessing:
    """The CLIP converter's `preprocessing` (see `tpcli.convert.Converter`)."""

    def from_hf(self, folder: Path, hf_config: dict[str, Any]) -> dict[str, Any]:
        from tp_multimodal.convert_clip import towers

        text, vision = towers(hf_config)
        return {"processor": processor_section(Path(folder), int(vision["image_size"]),
                                               int(text["max_position_embeddings"]))}

    def tokenizer_from_hf(self, folder: Path, hf_config: dict[str, Any], directory: Path
                          ) -> tuple[Any, dict[str, Any]]:
        return tokenizer_from_hf(Path(folder), hf_config, Path(directory))

    def to_hf(self, recipe: Any, folder: Path, hf_config: dict[str, Any]) -> None:
        """The tokenizer files, its ids in config.json's text_config (and in `hf_config`, which
        `--check` reads next), and a CLIPImageProcessor preprocessor_config.json."""
        from tpcli.convert.to_hf import _save_tokenizer_hf
        from tpcli.plugins import get_plugins

        folder = Path(folder)
        if recipe.tokenizer is None or recipe.path is None:
            raise TpError("a CLIP checkpoint needs its tokenizer to be exported, and this one "
                          "has none", hint="convert a checkpoint saved by tp pretrain / "
                          "finetune (it keeps tokenizer/ beside the weights)")
        cls = get_plugins().registry.get("tokenizer", recipe.tokenizer.name)
        tokenizer = cls.from_saved(str(Path(recipe.path) / "tokenizer"))
        text = hf_config["text_config"]
        _save_tokenizer_hf(tokenizer, folder, False, int(text["max_position_embeddings"]))
        path = folder / TOKENIZER_CONFIG
        config = json.loads(path.read_text(encoding="utf-8"))
        config["processor_class"] = PROCESSOR
        if is_clip_bpe(folder / "tokenizer.json"):
            config["tokenizer_class"] = "CLIPTokenizer"
            write_vocab_and_merges(folder)
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        ids = token_ids(tokenizer.special_ids)
        if "eos_token_id" not in ids:
            raise TpError("the checkpoint's tokenizer has no end-of-text token (eos or sep), "
                          "where HF's CLIP reads a caption's embedding",
                          hint="use a tokenizer with an eos token (CLIP: <|endoftext|>)")
        text.update(ids)
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        data["text_config"].update(ids)
        (folder / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        image = image_processor_json(int(hf_config["vision_config"]["image_size"]),
                                     recipe.processor.options)
        (folder / PROCESSOR_FILE).write_text(json.dumps(image, indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")
        clamp_logit_scale(folder / "model.safetensors", recipe)


def clamp_logit_scale(weights: Path, recipe: Any) -> None:
    """The exported logit_scale is the one tp uses: `clr` clamps it when it reads it (its
    gradient is 0 above the clamp, yet an optimizer step can carry the stored value past it);
    HF reads it as stored. Rewrites the weights only when the value is above the clamp."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from tpcli.files import save_weights

    top = next((t.options.max_logit_scale for t in recipe.model.targets if t.name == "clr"),
               None)
    if top is None:
        return
    with safe_open(str(weights), "pt") as f:
        value, metadata = f.get_tensor("logit_scale"), f.metadata()
    if float(value) <= top:
        return
    log.warning("logit_scale %.4f is above the clr target's clamp %.4f, which tp applies: "
                "exported as %.4f, the scale the model uses", float(value), top, top)
    state = load_file(str(weights))
    state["logit_scale"] = state["logit_scale"].clamp(max=top)
    save_weights(state, weights, metadata)
