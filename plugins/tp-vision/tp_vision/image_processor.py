"""The `image` processor: labelled images, stored as uint8 pixels, augmented at load time.

Preprocess (`corpus_format = "records"`): the corpus is a class-per-folder tree, a
`label<TAB>path` TSV or a CSV / JSONL manifest (`tp_vision.corpus`); each image is decoded with
Pillow (in parallel), its shorter side resized to `size` and centre-cropped (`tp_vision.images`),
and stored as (size, size, 3) uint8 with its class index. The class names go into meta.json.

Load: each example is a random resized crop to `image_size`, a flip, RandAugment and
normalisation, then optionally mixed with a partner example (mixup / CutMix) with smoothed
labels: all drawn from the generator of (seed, epoch, index), so a resumed run sees the same
images. Batches hold `pixel_values` (B, 3, image_size, image_size) float32 and `labels`: (B,)
class indexes, or (B, classes) soft targets when mixing or smoothing.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterator, Literal

import numpy as np
import torch
from pydantic import Field

from tpcli.data.batch import BatchKey
from tpcli.data.dataset import ExampleDataset
from tpcli.errors import DataError
from tpcli.model.module import ModuleConfig

SKIPPED_SHOWN = 20  # skipped files named in meta.json; the count is always exact


class ImageProcessorConfig(ModuleConfig):
    size: int = Field(224, ge=8, le=4096, description="stored resolution: shorter side resized "
                      "to it, then centre-cropped square")
    image_size: int | None = Field(None, ge=8, le=4096, description="training crop size (None: "
                                   "size); must be a multiple of the patch size")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="an undecodable image: stop with an error naming it, or skip it "
        "(counted and listed in the dataset's meta.json)")
    scale: tuple[float, float] = Field((0.08, 1.0), description="random resized crop: area range")
    ratio: tuple[float, float] = Field((0.75, 1.3333333333333333),  # 3/4, 4/3
                                       description="random resized crop: aspect ratio range")
    crop: bool = Field(True, description="random resized crop (False: resize the stored image "
                       "to image_size, as evaluation does)")
    hflip: float = Field(0.5, ge=0.0, le=1.0, description="probability of a horizontal flip")
    randaugment: tuple[int, int] | None = Field(
        None, description="RandAugment [ops, magnitude] (DeiT: [2, 9]); None: off")
    mean: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description="per-channel mean")
    std: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description="per-channel std")
    mixup: float = Field(0.0, ge=0.0, description="mixup alpha (DeiT: 0.8); 0: off")
    cutmix: float = Field(0.0, ge=0.0, description="CutMix alpha (DeiT: 1.0); 0: off")
    mix_prob: float = Field(1.0, ge=0.0, le=1.0, description="probability that an example is "
                            "mixed when mixup or cutmix is on")
    switch_prob: float = Field(0.5, ge=0.0, le=1.0, description="with both on: probability of "
                               "CutMix rather than mixup")
    smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="label smoothing (DeiT: 0.1)")


class MemoryImages:
    """Decoded images held in memory, read like a stored dataset (`example(i)`, `meta`): the
    fine-tuning set of the image_classification task, augmented by `ImageDataset`."""

    def __init__(self, pixels: list[np.ndarray], labels: list[int], classes: list[str],
                 folder: str) -> None:
        self.pixels, self.labels = pixels, labels
        self.meta = {"contents": {"classes": list(classes)}}
        self.folder = folder

    def __len__(self) -> int:
        return len(self.pixels)

    def example(self, index: int) -> dict[str, np.ndarray]:
        return {"pixels": self.pixels[index], "label": np.int64(self.labels[index])}


class ImageDataset(ExampleDataset):
    """Augmented stored images; labels hard or soft (mixup, CutMix, smoothing)."""

    def __init__(self, store: Any, seed: int, config: ImageProcessorConfig) -> None:
        from tp_vision.transforms import TrainTransform

        super().__init__(store, None, seed)
        self.config = config
        self.classes = list((store.meta.get("contents") or {}).get("classes") or [])
        if len(self.classes) < 2:
            raise DataError(f"dataset {store.folder} names {len(self.classes)} class(es); "
                            "classification needs at least two",
                            hint="preprocess a corpus with two or more classes")
        self.size = config.image_size or config.size
        self.transform = TrainTransform(
            size=self.size, scale=config.scale if config.crop else None, ratio=config.ratio,
            hflip=config.hflip, randaugment=config.randaugment, mean=config.mean,
            std=config.std)
        self.soft = config.mixup > 0 or config.cutmix > 0 or config.smoothing > 0

    def __len__(self) -> int:
        return len(self.store)

    def _one(self, index: int, g: torch.Generator) -> tuple[torch.Tensor, int]:
        stored = self.store.example(index)
        return self.transform(np.asarray(stored["pixels"]), g), int(stored["label"])

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        from tp_vision.transforms import mix

        x, label = self._one(index, g)  # (3, S, S)
        if not self.soft:
            return {"pixel_values": x, "labels": torch.tensor(label)}
        c = self.config
        partner = int(torch.randint(len(self), (1,), generator=g))
        y, other = self._one(partner, g)
        mixing = c.mixup > 0 or c.cutmix > 0
        x, target = mix(x, label, y, other, len(self.classes), g, mixup_alpha=c.mixup,
                        cutmix_alpha=c.cutmix, switch_prob=c.switch_prob,
                        prob=c.mix_prob if mixing else 0.0, smoothing=c.smoothing)
        return {"pixel_values": x, "labels": target}

    def batch_keys(self) -> tuple[BatchKey, ...]:
        labels = (BatchKey("labels", "float32", (len(self.classes),)) if self.soft
                  else BatchKey("labels", "int64", (), high=len(self.classes)))
        return (BatchKey("pixel_values", "float32", (3, self.size, self.size), unit="images"),
                labels)


class ImageProcessor:
    """Labelled images for classification (ViT's supervised pre-training, fine-tuning)."""

    Config = ImageProcessorConfig
    corpus_format: ClassVar[str] = "records"

    def __init__(self, config: ImageProcessorConfig | None = None) -> None:
        self.config = config or ImageProcessorConfig()
        self._contents: dict[str, Any] = {}

    def fields(self) -> dict[str, tuple[str, tuple[int | None, ...]]]:
        s = self.config.size
        return {"pixels": ("uint8", (s, s, 3)), "label": ("int64", ())}

    def records(self, corpus: str, tokenizer: Any, workers: int
                ) -> Iterator[dict[str, np.ndarray]]:
        from tp_vision.corpus import read_corpus
        from tp_vision.hub_images import decode_images

        images = read_corpus(corpus)
        skipped: list[str] = []
        self._contents = {"classes": images.classes, "images": len(images.labels)}
        decoded = decode_images(images, self.config.size, workers or 2, self.config.on_error)
        for index, pixels, error in decoded:
            if pixels is None:
                skipped.append(f"{images.sources[index]}: {error}")
                continue
            yield {"pixels": pixels, "label": np.int64(images.labels[index])}
        self._contents |= {"skipped": len(skipped), "skipped_files": skipped[:SKIPPED_SHOWN]}

    def contents(self) -> dict[str, Any]:
        """Class names and skipped files, for meta.json and the summary."""
        return dict(self._contents)

    def dataset(self, store: Any, tokenizer: Any, seed: int) -> ImageDataset:
        return ImageDataset(store, seed, self.config)
