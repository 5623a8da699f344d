"""What the ViLT converter carries beside the weights: the tokenizer (BERT WordPiece) and the
image processor (HF's ViltImageProcessor <-> the recipe's `image_text` processor).

HF -> tp: the tokenizer files become the recipe's `wordpiece` tokenizer (as for BERT), and
preprocessor_config.json (or the `image_processor` of transformers 5's processor_config.json)
the `image_text` processor section (layout single, mlm and itm on, as
ViLT pre-trains): `size` = its `shortest_edge`, the model's image size, its mean and std, the
text length of the position table. ViltImageProcessor keeps the aspect ratio (shorter side to
384, longer up to 640, both cut to a multiple of 32) and pads a batch with a `pixel_mask`, which
`word_patch` reads; tp's processor centre-crops a square instead: the weights convert exactly,
a tp pipeline feeds them square crops (a warning says so when the image processor resizes with
something other than bicubic, or rescales or normalises differently).

tp -> HF writes the tokenizer files (`tokenizer.json`, `tokenizer_config.json` with the model's
`model_max_length`) and a ViltImageProcessor preprocessor_config.json with the recipe's
mean, std and size (`shortest_edge`, `size_divisor` = the patch size), so
`AutoProcessor.from_pretrained` gives a ViltProcessor (image processor + tokenizer).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tp_vision.hf_preprocessing import PROCESSOR_FILE, RESCALE, read_processor_config
from tpcli.errors import TpError

log = logging.getLogger(__name__)
IMAGE_PROCESSOR = "ViltImageProcessor"
BICUBIC = 3  # PIL's resample code, ViltImageProcessor's default
DEFAULTS = {"size": {"shortest_edge": 384}, "resample": BICUBIC, "image_mean": [0.5] * 3,
            "image_std": [0.5] * 3, "rescale_factor": RESCALE, "do_rescale": True,
            "do_normalize": True, "size_divisor": 32}


def _side(hf: dict[str, Any], key: str, default: int) -> int:
    value = hf.get(key, default)
    return int(value) if isinstance(value, int) else int(value[0])


def processor_section(folder: Path, hf: dict[str, Any]) -> dict[str, Any]:
    """The recipe's `image_text` processor section for the folder's ViltImageProcessor config
    (its defaults, with a warning, when the folder has none)."""
    config = read_processor_config(folder)
    combined = folder / "processor_config.json"  # transformers 5's ViltProcessor file
    if config is None and combined.is_file():
        config = json.loads(combined.read_text(encoding="utf-8")).get("image_processor")
    if config is None:
        log.warning("%s has no %s: assuming %s's defaults (shorter side 384, mean and std 0.5)",
                    folder, PROCESSOR_FILE, IMAGE_PROCESSOR)
        config = {}
    config = {**DEFAULTS, **config}
    size = config["size"]
    shortest = size.get("shortest_edge") if isinstance(size, dict) else size
    if not isinstance(shortest, int):
        raise TpError(f"{folder / PROCESSOR_FILE}: size {size!r} has no shortest_edge",
                      hint=f"save the checkpoint's {IMAGE_PROCESSOR} again")
    differs = []
    if config.get("resample") != BICUBIC:
        differs.append(f"resample {config.get('resample')} (ViLT: bicubic)")
    if not config.get("do_rescale") or abs(config["rescale_factor"] - RESCALE) > 1e-12:
        differs.append("a rescale other than 1/255")
    if not config.get("do_normalize"):
        differs.append("no normalisation")
    if differs:
        log.warning("%s: %s; tp's image_text processor rescales by 1/255 and normalises",
                    folder / PROCESSOR_FILE, ", ".join(differs))
    mean = config["image_mean"] if config.get("do_normalize") else [0.0] * 3
    std = config["image_std"] if config.get("do_normalize") else [1.0] * 3
    return {"name": "image_text", "layout": "single", "mlm": True, "itm": True,
            "max_length": max(2, _side(hf, "max_position_embeddings", 40)),
            "size": max(8, shortest), "image_size": max(8, _side(hf, "image_size", 384)),
            "patch_size": _side(hf, "patch_size", 32),
            "mean": [float(m) for m in mean], "std": [float(s) for s in std]}


class ViltPreprocessing:
    """The ViLT converter's `preprocessing` (see `tpcli.convert.Converter`)."""

    def from_hf(self, folder: Path, hf_config: dict[str, Any]) -> dict[str, Any]:
        return {"processor": processor_section(Path(folder), hf_config)}

    def tokenizer_from_hf(self, folder: Path, hf_config: dict[str, Any], directory: Path
                          ) -> tuple[Any, dict[str, Any]]:
        """(tp tokenizer saved under `directory`, data.tokenizer section) of the folder's BERT
        tokenizer files, as the text converters read them."""
        from tpcli.convert.from_hf import _copy_tokenizer, _tokenizer_section
        from tpcli.plugins import get_plugins

        plugins = get_plugins()
        section, file = _tokenizer_section(Path(folder), plugins)
        tokenizer, data = _copy_tokenizer(section, file, Path(folder), Path(directory).parent,
                                          plugins)
        return tokenizer, data["tokenizer"]

    def to_hf(self, recipe: Any, folder: Path, hf_config: dict[str, Any]) -> None:
        """The tokenizer files and a ViltImageProcessor preprocessor_config.json."""
        from tpcli.convert.to_hf import _save_tokenizer_hf
        from tpcli.plugins import get_plugins

        folder = Path(folder)
        if recipe.tokenizer is None or recipe.path is None:
            raise TpError("a ViLT checkpoint needs its tokenizer to be exported, and this one "
                          "has none", hint="convert a checkpoint saved by tp pretrain / "
                          "finetune (it keeps tokenizer/ beside the weights)")
        cls = get_plugins().registry.get("tokenizer", recipe.tokenizer.name)
        tokenizer = cls.from_saved(str(Path(recipe.path) / "tokenizer"))
        _save_tokenizer_hf(tokenizer, folder, hf_config.get("type_vocab_size", 0) >= 2,
                           int(hf_config.get("max_position_embeddings", 40)))
        opts = recipe.processor.options
        size = getattr(opts, "image_size", None) or getattr(opts, "size", None) \
            or hf_config.get("image_size", 384)
        config = {**DEFAULTS, "image_processor_type": IMAGE_PROCESSOR,
                  "processor_class": "ViltProcessor", "do_resize": True, "do_pad": True,
                  "size": {"shortest_edge": int(size)},
                  "size_divisor": int(hf_config.get("patch_size", 32)),
                  "image_mean": list(getattr(opts, "mean", (0.5, 0.5, 0.5))),
                  "image_std": list(getattr(opts, "std", (0.5, 0.5, 0.5)))}
        (folder / PROCESSOR_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")
