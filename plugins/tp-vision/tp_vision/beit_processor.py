"""The `beit` processor: images for masked image modelling (BEiT, Bao et al. 2021).

Preprocess is the `image` processor's (`tp_vision.image_processor`): the same corpus layouts,
decoded in parallel, stored as (size, size, 3) uint8. Labels are stored too but never read:
BEiT pre-training is self-supervised.

Load: each example is drawn from the generator of (seed, epoch, index), so a resumed run sees
the same crops, masks and labels:

    stored (size, size, 3) uint8
      -> random resized crop to image_size (BEiT's pre-training augmentation), flip
      -> pixel_values (3, S, S): normalised with mean / std
      -> mim_mask (N,) bool: a blockwise mask of about num_masking_patches of the N patches
      -> mim_labels (N,) int64: the recipe tokenizer's visual token of each masked patch of the
         (un-masked) image, -100 on the visible ones

The visual tokens come from the recipe's image tokenizer (`data.tokenizer`): anything with
`encode_images(pixels (B, 3, S, S)) -> (B, N)`, `vocab_size` and `patch_size`, such as tp's
`kmeans`. A tokenizer that wants its input normalised otherwise than the model's (DALL-E's dVAE
does) says so with `image_mean` / `image_std`; without them, it gets mean = std = 0.5, the space
`kmeans` clusters in.

Why no RandAugment or mixup here: BEiT pre-trains with crops and flips only (and colour jitter,
which tp does not have yet); the heavy augmentations belong to fine-tuning (`image`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterator, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from tpcli.data.batch import IGNORE, BatchKey
from tpcli.data.dataset import ExampleDataset
from tpcli.errors import DataError
from tpcli.model.module import ModuleConfig

Triple = tuple[float, float, float]
TOKENIZER_SPACE: Triple = (0.5, 0.5, 0.5)  # kmeans's normalisation (tp_vision.kmeans MEAN, STD)
NEEDS_TOKENIZER = ("give the recipe an image tokenizer, e.g. data.tokenizer: {name: kmeans, "
                   "codebook: codebook.safetensors, patch_size: P}, its codebook trained with "
                   "`python -m tp_vision.kmeans train --images FOLDER --patch-size P --size S "
                   "--out codebook.safetensors`")


class BeitProcessorConfig(ModuleConfig):
    size: int = Field(224, ge=8, le=4096, description="stored resolution: shorter side resized "
                      "to it, then centre-cropped square")
    image_size: int | None = Field(None, ge=8, le=4096, description="training crop size (None: "
                                   "size); the model's image size, a multiple of patch_size")
    patch_size: int = Field(16, ge=1, description="patch side in pixels: the model's and the "
                            "tokenizer's (one visual token per patch)")
    num_masking_patches: int = Field(75, ge=1, description="patches masked per image, at most "
                                     "(BEiT: 75 of 196, about 40%)")
    min_patches: int = Field(16, ge=1, description="smallest masked block, in patches (BEiT: 16)")
    max_patches: int | None = Field(None, ge=1, description="largest masked block, in patches "
                                    "(None: num_masking_patches)")
    min_aspect: float = Field(0.3, gt=0.0, le=1.0, description="smallest aspect ratio of a "
                              "block; the largest is its inverse (BEiT: 0.3)")
    scale: tuple[float, float] = Field((0.08, 1.0), description="random resized crop: area range")
    ratio: tuple[float, float] = Field((0.75, 1.3333333333333333),  # 3/4, 4/3
                                       description="random resized crop: aspect ratio range")
    hflip: float = Field(0.5, ge=0.0, le=1.0, description="probability of a horizontal flip")
    mean: Triple = Field((0.5, 0.5, 0.5), description="per-channel mean of pixel_values")
    std: Triple = Field((0.5, 0.5, 0.5), description="per-channel std of pixel_values")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="an undecodable image: stop with an error naming it, or skip it "
        "(counted and listed in the dataset's meta.json)")

    @model_validator(mode="after")
    def _fits_the_grid(self) -> "BeitProcessorConfig":
        s, p = self.image_size or self.size, self.patch_size
        if s % p:
            raise ValueError(f"image_size {s} is not a multiple of patch_size {p}: set both to "
                             "the model's (model.embedding.masked_patch)")
        n = (s // p) ** 2
        if self.num_masking_patches > n:
            raise ValueError(f"num_masking_patches {self.num_masking_patches} is more than the "
                             f"{n} patches of a {s // p}x{s // p} grid")
        if self.min_patches > self.num_masking_patches:
            raise ValueError(f"min_patches {self.min_patches} is more than num_masking_patches "
                             f"{self.num_masking_patches}")
        if self.max_patches is not None and self.max_patches < self.min_patches:
            raise ValueError(f"max_patches {self.max_patches} is below min_patches "
                             f"{self.min_patches}")
        if not (0 < self.scale[0] <= self.scale[1] <= 1 and 0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], "
                             f"got scale={self.scale}, ratio={self.ratio}")
        return self

    @property
    def grid(self) -> int:
        """Patches per side."""
        return (self.image_size or self.size) // self.patch_size


def image_tokenizer(tokenizer: Any, config: BeitProcessorConfig) -> Any:
    """`tokenizer` if it makes visual tokens of `config.patch_size` patches; DataError otherwise."""
    if tokenizer is None or not callable(getattr(tokenizer, "encode_images", None)):
        what = "no tokenizer" if tokenizer is None else f"a text tokenizer ({type(tokenizer).__name__})"
        raise DataError(f"the beit processor predicts visual tokens, but the recipe has {what}: "
                        "it needs an image tokenizer (one with encode_images)",
                        hint=NEEDS_TOKENIZER)
    p = getattr(tokenizer, "patch_size", None)
    if p is not None and int(p) != config.patch_size:
        raise DataError(f"the image tokenizer makes one token per {p}x{p} patch, but the beit "
                        f"processor cuts {config.patch_size}x{config.patch_size} patches",
                        hint=f"set data.processor.patch_size and the model's patch_size to {p}, "
                        f"or use a tokenizer (codebook) of {config.patch_size}x"
                        f"{config.patch_size} patches")
    return tokenizer


class BeitDataset(ExampleDataset):
    """Cropped, flipped images with a blockwise mask and the visual tokens of masked patches."""

    def __init__(self, store: Any, tokenizer: Any, seed: int, config: BeitProcessorConfig
                 ) -> None:
        super().__init__(store, image_tokenizer(tokenizer, config), seed)
        self.tokenizer = tokenizer
        self.config = config
        self.size = config.image_size or config.size
        self.num_patches = config.grid ** 2
        self.token_mean = tuple(getattr(tokenizer, "image_mean", None) or TOKENIZER_SPACE)
        self.token_std = tuple(getattr(tokenizer, "image_std", None) or TOKENIZER_SPACE)

    def __len__(self) -> int:
        return len(self.store)

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        from tp_vision.masking import blockwise_mask
        from tp_vision.transforms import hflip, random_resized_crop, to_tensor

        c = self.config
        stored = np.asarray(self.store.example(index)["pixels"])  # (size, size, 3) uint8
        crop = random_resized_crop(stored, self.size, c.scale, c.ratio, g=g)  # (S, S, 3)
        crop = hflip(crop, c.hflip, g)
        pixels = to_tensor(crop, 1 / 255, c.mean, c.std)  # (3, S, S)
        mask = blockwise_mask((c.grid, c.grid), c.num_masking_patches, g,  # (N,)
                              min_patches=c.min_patches, max_patches=c.max_patches,
                              min_aspect=c.min_aspect)
        seen = pixels if (self.token_mean, self.token_std) == (c.mean, c.std) \
            else to_tensor(crop, 1 / 255, self.token_mean, self.token_std)
        tokens = self._tokens(seen)  # (N,)
        labels = torch.where(mask, tokens, torch.full_like(tokens, IGNORE))  # (N,)
        return {"pixel_values": pixels, "mim_mask": mask, "mim_labels": labels}

    def _tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(3, S, S) -> (N,) int64 visual tokens; a tokenizer that returns another grid is a
        DataError (it would label the wrong patches)."""
        tokens = self.tokenizer.encode_images(pixels[None])  # (1, N)
        if tuple(tokens.shape) != (1, self.num_patches):
            raise DataError(f"the image tokenizer turned a {self.size}x{self.size} image into "
                            f"tokens of shape {tuple(tokens.shape[1:])}, but the beit processor "
                            f"masks a {self.config.grid}x{self.config.grid} grid "
                            f"({self.num_patches} patches)",
                            hint="use a tokenizer that makes one token per patch of the "
                            "processor's patch_size")
        return tokens[0].long()

    def batch_keys(self) -> tuple[BatchKey, ...]:
        n, s = self.num_patches, self.size
        # unit "images": throughput in images/s, as vision papers and the `image` processor
        # report it (patches/s would only multiply it by the fixed N)
        return (BatchKey("pixel_values", "float32", (3, s, s), unit="images",
                         description="the cropped image, normalised, not masked"),
                BatchKey("mim_mask", "bool", (n,), description="True on the masked patches"),
                BatchKey("mim_labels", "int64", (n,), high=int(self.tokenizer.vocab_size),
                         description="visual token of each masked patch, -100 elsewhere"))


class BeitProcessor:
    """BEiT pre-training data: the `image` processor's corpus and storage, masked at load."""

    Config = BeitProcessorConfig
    corpus_format: ClassVar[str] = "records"

    def __init__(self, config: BeitProcessorConfig | None = None) -> None:
        from tp_vision.image_processor import ImageProcessor, ImageProcessorConfig

        self.config = config or BeitProcessorConfig()
        # the corpus is read and stored exactly as `image` does it, at the same size
        self.images = ImageProcessor(ImageProcessorConfig(size=self.config.size,
                                                          on_error=self.config.on_error))

    def fields(self) -> dict[str, tuple[str, tuple[int | None, ...]]]:
        return self.images.fields()

    def records(self, corpus: str, tokenizer: Any, workers: int
                ) -> Iterator[dict[str, np.ndarray]]:
        image_tokenizer(tokenizer, self.config)  # before minutes of decoding, not after
        return self.images.records(corpus, tokenizer, workers)

    def contents(self) -> dict[str, Any]:
        return self.images.contents()

    def dataset(self, store: Any, tokenizer: Any, seed: int) -> BeitDataset:
        return BeitDataset(store, tokenizer, seed, self.config)
