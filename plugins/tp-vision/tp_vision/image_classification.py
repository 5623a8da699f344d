"""The `image_classification` task: `tp finetune` and `tp infer` for labelled images.

Data: --train / --dev / --test are image corpora in any layout `tp_vision.corpus` reads (a
class-per-folder tree, a `label<TAB>path` TSV, a CSV / JSONL manifest); `tp infer` also takes a
plain list of image paths, one per line. Training images are augmented as the `image`
processor's options say (random resized crop, flip, RandAugment, mixup / CutMix, smoothing);
evaluation images go through the evaluation transform (resize to the model's image size,
normalise), the one `tp convert --to hf` writes as preprocessor_config.json. Metrics: top-1
accuracy (selects the best checkpoint) and top-5 accuracy; a prediction lists its 5 likeliest
classes with their probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from tpcli.data.batch import BatchKey
from tpcli.downstream.tasks import Example, Splits, TaskConfig, data_file
from tpcli.errors import DataError, TpError
from tpcli.plugins.requests import TaskData


class ImageClassificationConfig(TaskConfig):
    classes: list[str] | None = Field(None, description="the class names, in the head's order "
                                      "(set by fine-tuning from the training images)")
    workers: int = Field(2, ge=1, description="processes that decode images")


def read_images(path: str, labelled: bool, classes: list[str] | None = None) -> list[Example]:
    """The examples of an image corpus; a text file of bare paths when unlabelled."""
    from tp_vision.corpus import read_corpus
    from tp_vision.hub_images import hub_examples, is_hub_corpus

    if is_hub_corpus(path):  # hf://datasets/uoft-cs/cifar10:train, cifar10:test
        return hub_examples(path, labelled)
    p = Path(path)
    if not p.is_dir():
        data_file(path, "image folder, label<TAB>path TSV, CSV / JSONL manifest or list of paths")
        if not labelled and p.suffix.lower() in (".txt", ".lst", ".tsv") and _bare(p):
            return [Example(str(i), {"path": str(p.parent / line)}, None, f"{path}:{i + 1}")
                    for i, line in enumerate(_lines(p))]
    images = read_corpus(path)
    return [Example(str(i), {"path": str(f)}, images.classes[y], images.sources[i])
            for i, (f, y) in enumerate(zip(images.paths, images.labels))]


def _lines(p: Path) -> list[str]:
    return [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _bare(p: Path) -> bool:
    """A list of paths: no line has a tab."""
    return all("\t" not in ln for ln in _lines(p))


class ImageClassificationTask:
    """One class per image, scored by top-1 and top-5 accuracy."""

    Config: ClassVar[type[TaskConfig]] = ImageClassificationConfig
    metrics = ("accuracy", "top5")

    def __init__(self, config: ImageClassificationConfig, variant: str | None) -> None:
        if variant is not None:
            raise TpError(f"task image_classification has no variant {variant!r}",
                          hint="name it alone: --task image_classification")
        self.config = config
        self.classes: list[str] = list(config.classes or [])
        self.processor: Any = None  # the recipe's image processor options (bind)
        self.image_size = 224

    def bind(self, recipe: Any, registry: Any) -> None:
        """The model's image size, normalisation and training augmentation, from the recipe's
        processor: `image`, or `beit` (a BEiT pre-training recipe: its size, normalisation,
        crop and flip, and the `image` processor's defaults for the rest)."""
        from tp_vision.image_processor import ImageProcessorConfig

        opts = recipe.processor.options
        if recipe.processor.name == "beit" and opts is not None:
            shared = ("size", "image_size", "mean", "std", "scale", "ratio", "hflip", "on_error")
            opts = ImageProcessorConfig(**{k: getattr(opts, k) for k in shared})
        elif recipe.processor.name != "image" or opts is None:
            raise TpError(f"task image_classification needs a recipe whose data.processor is "
                          f"`image` or `beit`, not {recipe.processor.name!r}",
                          hint="fine-tune an image model (a recipe such as vit-tiny)")
        self.processor = opts
        self.image_size = opts.image_size or opts.size

    def load(self, data: TaskData) -> Splits:
        return Splits.read(data, lambda path, labelled: read_images(path, labelled))

    def fit(self, train: list[Example]) -> None:
        self.classes = sorted({str(e.label) for e in train})
        if len(self.classes) < 2:
            raise DataError(f"the training images have {len(self.classes)} class(es); "
                            "classification needs at least two",
                            hint="give a training set with two or more classes")

    def check(self, name: str, examples: list[Example]) -> None:
        for e in examples:
            if e.label is not None and str(e.label) not in self.classes:
                raise DataError(f"{e.source}: class {e.label!r} does not occur in the training "
                                "images", hint=f"the classes are {', '.join(self.classes[:10])}")

    def state(self) -> dict[str, Any]:
        return {"classes": list(self.classes)}

    def restore(self, state: dict[str, Any]) -> None:
        self.classes = list(state.get("classes") or [])

    def target(self) -> dict[str, Any]:
        return {"cls": {"labels": len(self.classes)}}

    def head_sources(self) -> dict[str, str]:
        return {}

    def eval_transform(self) -> Any:
        from tp_vision.transforms import EvalTransform

        o = self.processor
        s = self.image_size
        return EvalTransform(resize=(s, s), resample="bilinear", crop=None,
                             mean=tuple(o.mean), std=tuple(o.std))

    def encode(self, examples: list[Example], tokenizer: Any, max_length: int,
               with_labels: bool = True) -> list[dict[str, torch.Tensor]]:
        """Decoded, evaluation-transformed images (and class indexes)."""
        from tp_vision.hub_images import decode_examples

        transform = self.eval_transform()
        rows = []
        for i, pixels, _ in decode_examples(examples, None, self.config.workers):
            row = {"pixel_values": transform(np.asarray(pixels))}
            if with_labels:
                row["labels"] = torch.tensor(self.classes.index(str(examples[i].label)))
            rows.append(row)
        return rows

    def train_dataset(self, examples: list[Example], seed: int) -> Any:
        """The training images, decoded once at the processor's stored size and augmented per
        (seed, epoch, index) as the recipe's `image` processor says (crop, flip, RandAugment,
        mixup / CutMix, smoothing)."""
        from tp_vision.image_processor import ImageDataset, MemoryImages
        from tp_vision.hub_images import decode_examples

        pixels = [np.asarray(p) for _, p, _ in
                  decode_examples(examples, self.processor.size, self.config.workers)]
        labels = [self.classes.index(str(e.label)) for e in examples]
        store = MemoryImages(pixels, labels, self.classes, "the training images")
        return ImageDataset(store, seed, self.processor)

    def batch_keys(self, rows: list[dict[str, torch.Tensor]], tokenizer: Any
                   ) -> tuple[BatchKey, ...]:
        s = self.image_size
        keys = (BatchKey("pixel_values", "float32", (3, s, s), unit="images"),)
        if rows and "labels" in rows[0]:
            keys += (BatchKey("labels", "int64", (), high=len(self.classes)),)
        return keys

    def decode(self, output: torch.Tensor, examples: list[Example]) -> list[dict[str, Any]]:
        probs = torch.softmax(output.float(), dim=-1)  # (B, C)
        k = min(5, probs.shape[1])  # what top-5 accuracy reads
        top_p, top_i = probs.topk(k, dim=-1)
        out = []
        for e, p, i in zip(examples, top_p.tolist(), top_i.tolist()):
            out.append({"id": e.guid, "path": e.fields["path"], "label": self.classes[i[0]],
                        "top": [{"label": self.classes[c], "probability": round(q, 6)}
                                for c, q in zip(i, p)]})
        return out

    def evaluate(self, predictions: list[dict[str, Any]], examples: list[Example]
                 ) -> dict[str, float]:
        n = max(1, len(examples))
        top1 = sum(p["label"] == str(e.label) for p, e in zip(predictions, examples))
        topk = sum(str(e.label) in [t["label"] for t in p["top"]]
                   for p, e in zip(predictions, examples))
        return {"accuracy": top1 / n, "top5": topk / n}
