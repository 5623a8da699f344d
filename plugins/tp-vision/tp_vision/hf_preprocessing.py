"""What the ViT and BEiT converters carry beside the weights: the image preprocessing (HF's
`preprocessor_config.json` <-> the recipe's `image` processor), the class names, and the fixed
batch of `tp convert --check`.

HF -> tp reads preprocessor_config.json into the `image` processor section (`size`, `image_size`,
`mean`, `std`). tp's evaluation transform (`image_classification`'s `eval_transform`) is: resize
to image_size x image_size (bilinear), no crop, rescale by 1/255, normalise. A processor doing
something else (bicubic, resize 256 + centre crop 224, another rescale, a non-square model) is
recorded as the closest section tp has, and a warning says what differs: the weights convert
exactly, the pixels a tp pipeline feeds them then differ slightly from Hugging Face's.

tp -> HF writes the preprocessor_config.json of that evaluation transform at the model's image
size, so `AutoImageProcessor.from_pretrained` gives tp's pixels; and, because the class names of a
fine-tuned model live in its recipe's `finetune.task` (`image_classification` saves `classes`),
which `recipe_to_config` does not see, `to_hf` also writes them into config.json as id2label.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tpcli.errors import DataError

log = logging.getLogger(__name__)

PROCESSOR_FILE = "preprocessor_config.json"
CHECK_IMAGES = 3  # images in the --check batch
CHECK_MASKED = 0.4  # share of patches masked in a --check batch of a MIM model (BEiT: ~40%)
RESCALE = 1 / 255


def model_image_size(hf_config: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of the images an HF ViT / BEiT config takes (`image_size`: N or [h, w])."""
    size = hf_config.get("image_size", 224)
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def read_processor_config(folder: Path) -> dict[str, Any] | None:
    """The folder's preprocessor_config.json as a dict; None when there is none."""
    path = folder / PROCESSOR_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}", hint="save the image processor again "
                        "(processor.save_pretrained(DIR))") from e
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a JSON object", hint="is it an image processor config?")
    return data


def image_section(transform: Any, model_size: tuple[int, int]) -> tuple[dict[str, Any], list[str]]:
    """The `image` processor section closest to HF's evaluation `transform` for a model taking
    `model_size` images, and what tp's evaluation transform of that section does differently."""
    h, w = model_size
    differs = [] if h == w else [f"the model takes {h}x{w} images; tp's image processor and "
                                 f"evaluation transform make square ones ({h}x{h})"]
    resize, crop = transform.resize, transform.crop
    if isinstance(resize, int):  # shorter side to N, keeping the aspect
        stored = resize
        differs.append(f"it resizes the shorter side to {resize}"
                       + (f" and centre-crops {crop[0]}x{crop[1]}" if crop else ""))
    elif resize is None:
        stored = h
        differs.append("it does not resize")
    else:
        stored = resize[0]
        what = f"it resizes to {resize[0]}x{resize[1]}"
        if crop is not None:
            differs.append(f"{what} and centre-crops {crop[0]}x{crop[1]}")
        elif resize != (h, w):
            differs.append(f"{what} (the model takes {h}x{w})")
    if transform.resample != "bilinear":
        differs.append(f"it resizes with {transform.resample} resampling (tp: bilinear)")
    if transform.rescale is None or abs(transform.rescale - RESCALE) > 1e-12:
        differs.append(f"it rescales by {transform.rescale} (tp: 1/255)")
    section: dict[str, Any] = {"name": "image", "size": max(stored, 8)}
    if section["size"] != h:  # stored at `size`, fed to the model at its own size
        section["image_size"] = h
    # no normalisation is mean 0, std 1 exactly: (x - 0) / 1 == x in float32
    section["mean"] = list(transform.mean) if transform.mean is not None else [0.0] * 3
    section["std"] = list(transform.std) if transform.std is not None else [1.0] * 3
    return section, differs


@dataclass(frozen=True)
class ImagePreprocessing:
    """A converter's `preprocessing` for images (see `tpcli.convert.Converter`).
    `processor_type`: the HF image processor class written (ViTImageProcessor,
    BeitImageProcessor); both compute the same evaluation transform from the same keys."""

    processor_type: str

    def from_hf(self, folder: Path, hf_config: dict[str, Any]) -> dict[str, Any]:
        """The recipe's data section (`processor: image`) of the folder's preprocessor config;
        without one, HF's class defaults at the model's image size (and a warning)."""
        from tp_vision.transforms import EvalTransform

        size = model_image_size(hf_config)
        config = read_processor_config(folder)
        if config is None:
            log.warning("%s has no %s: assuming %s's defaults (resize to the model's %dx%d, "
                        "mean and std 0.5)", folder, PROCESSOR_FILE, self.processor_type, *size)
            config = {"size": {"height": size[0], "width": size[1]}, "resample": 2}
        config = {"image_processor_type": self.processor_type, **config}
        section, differs = image_section(EvalTransform.from_hf(config), size)
        if differs:
            log.warning("%s: tp's evaluation transform (resize to the model's size, bilinear, no "
                        "crop) differs from this image processor: %s. The recipe takes the "
                        "closest tp has (data.processor %s); the weights convert exactly, the "
                        "pixels tp feeds them differ slightly from Hugging Face's.",
                        folder / PROCESSOR_FILE, "; ".join(differs),
                        {k: v for k, v in section.items() if k != "name"})
        return {"processor": section}

    def to_hf(self, recipe: Any, folder: Path, hf_config: dict[str, Any]) -> None:
        """preprocessor_config.json of tp's evaluation transform at the model's image size (with
        the recipe processor's mean and std), and the recipe's class names into config.json."""
        from tp_vision.transforms import EvalTransform

        opts = recipe.processor.options
        mean = tuple(getattr(opts, "mean", (0.5, 0.5, 0.5)))
        std = tuple(getattr(opts, "std", (0.5, 0.5, 0.5)))
        transform = EvalTransform(resize=model_image_size(hf_config), resample="bilinear",
                                  crop=None, mean=mean, std=std)
        config = transform.to_hf(self.processor_type)
        (folder / PROCESSOR_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")
        names = class_names(recipe)
        if names is not None:
            write_class_names(folder / "config.json", names)


def class_names(recipe: Any) -> list[str] | None:
    """The fitted class names of a fine-tuned image classifier (`finetune.task.classes`), when
    they number what its cls head outputs; None otherwise (HF then says LABEL_0, LABEL_1...)."""
    task = recipe.finetune.task
    classes = task.get("classes") if isinstance(task, dict) else None
    heads = [t for t in recipe.model.targets if t.name == "cls"]
    if not classes or not heads or len(classes) != heads[0].options.labels:
        return None
    return [str(c) for c in classes]


def classification_task(hf_config: dict[str, Any]) -> dict[str, Any] | None:
    """The `image_classification` task of an HF image classifier, its classes from id2label
    (index order); None for other architectures (a masked-image model, a headless one)."""
    arch = (hf_config.get("architectures") or [""])[0]
    labels = hf_config.get("id2label") or {}
    if not arch.endswith("ForImageClassification") or not labels:
        return None
    names = [str(labels.get(str(i), labels.get(i, f"LABEL_{i}"))) for i in range(len(labels))]
    return {"name": "image_classification", "classes": names}


def write_class_names(config_json: Path, names: list[str]) -> None:
    """config.json's id2label / label2id set to `names` (index order)."""
    data = json.loads(config_json.read_text(encoding="utf-8"))
    data["id2label"] = {str(i): name for i, name in enumerate(names)}
    data["label2id"] = {name: i for i, name in enumerate(names)}
    config_json.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def check_batch(spec: Any, hf_config: dict[str, Any]
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`tp convert --check`'s batch for an image model: CHECK_IMAGES random images of the
    patch embedding's size (tp's `pixel_values`, HF's too); for a model with a mask token and a
    `mim` target, ~40% of the patches masked (tp's `mim_mask`, HF's `bool_masked_pos`)."""
    from tp_vision.patch import pair

    stack = next(iter(spec.stacks.values()))
    patch = next(m for m in stack.embedding if m.name in ("patch", "masked_patch"))
    (h, w), (ph, pw) = pair(patch.options.image_size), pair(patch.options.patch_size)
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(CHECK_IMAGES, patch.options.channels, h, w, generator=g)
    batch: dict[str, torch.Tensor] = {"pixel_values": pixels}
    kwargs: dict[str, Any] = {"pixel_values": pixels}
    if patch.name == "masked_patch" and any(t.name == "mim" for t in spec.targets):
        masked = torch.rand(CHECK_IMAGES, (h // ph) * (w // pw), generator=g) < CHECK_MASKED
        batch["mim_mask"], kwargs["bool_masked_pos"] = masked, masked
    return batch, kwargs
