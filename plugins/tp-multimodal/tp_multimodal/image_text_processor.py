"""The `image_text` processor: image-caption pairs for ViLT (one stream) and CLIP (two streams).

Preprocess (`corpus_format = "records"`): the pairs of a TSV, a JSONL manifest or WebDataset tar
shards (`tp_multimodal.pairs`). Captions go through the recipe's tokenizer in batches (Rust,
all cores), between its start and end tokens ([CLS] ... [SEP], <|startoftext|> ...
<|endoftext|>) and cut to `max_length` keeping the end token (CLIP pools there); the cut ones are
counted in the summary (`truncated_captions`). Images are decoded with Pillow in parallel and
stored as tp-vision's `image` processor stores them (`tp_vision.images`: shorter side to `size`,
centre crop). Each example is `ids` (int32, varying) and `pixels` (size, size, 3) uint8.

Load: each example is drawn from the generator of (seed, epoch, index), in this order:

    itm:  with probability itm_negatives the image is swapped for another example's (never one
          with the same pixels), itm_labels () = 0, else 1
    image -> tp-vision's TrainTransform (optional crop, flip, RandAugment; mean / std)
          -> pixel_values (3, S, S) float32
    mlm:  BERT's 80/10/10 masking of the caption, whole words by default (ViLT)
          -> input_ids masked, mlm_labels (T,) with -100 where nothing is predicted
    mim:  a BEiT blockwise mask of about mim_patches patches -> mim_mask (N,) bool

The batch, by `layout`:

    single (ViLT):  input_ids, attention_mask (B, T); pixel_values (B, 3, S, S);
                    mlm_labels (B, T), itm_labels (B,), mim_mask (B, N) when switched on
    dual (CLIP):    stream_0.input_ids, stream_0.attention_mask (B, T);
                    stream_1.pixel_values (B, 3, S, S); stream_1.mim_mask (B, N) with mim

Text masking and matching are single-stream objectives (a dual-stream model sees no pair
jointly), so `dual` refuses them; with `mlm` and `itm` both on, a mismatched pair's caption is
masked too (its words stay predictable from the caption alone).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from itertools import islice
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from tp_multimodal.pairs import read_pairs
from tp_vision.images import ImageError, decode_many
from tp_vision.masking import blockwise_mask
from tp_vision.transforms import TrainTransform, randint, uniform
from tpcli.data.batch import IGNORE, BatchKey
from tpcli.data.dataset import ExampleDataset, Masker
from tpcli.data.masking import MaskingConfig
from tpcli.errors import DataError

Triple = tuple[float, float, float]
TOKENIZE_BATCH = 256  # captions per encode_batch call
NEGATIVE_TRIES = 10  # draws for an image that differs from the example's own
SKIPPED_SHOWN = 20  # skipped images named in meta.json; the count is always exact
STREAMS = {"single": ("", ""), "dual": ("stream_0.", "stream_1.")}  # text, image key prefixes


class ImageTextConfig(MaskingConfig):
    """Options of the `image_text` processor (the mask_prob ... max_span options are mlm's)."""

    layout: Literal["single", "dual"] = Field(
        "single", description="single: one stream reads input_ids and pixel_values (ViLT); "
        "dual: text in stream_0 (stream_0.input_ids), image in stream_1 "
        "(stream_1.pixel_values) (CLIP)")
    max_length: int = Field(40, ge=2, le=65536, description="caption tokens with the start and "
                            "end tokens (ViLT: 40, CLIP: 77); longer captions are cut before "
                            "the end token and counted")
    size: int = Field(224, ge=8, le=4096, description="stored resolution: shorter side resized "
                      "to it, then centre-cropped square")
    image_size: int | None = Field(None, ge=8, le=4096, description="training image size "
                                   "(None: size); the model's image size")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="an undecodable image: stop with an error naming it, or leave its "
        "pair out (counted in the summary and listed in meta.json)")
    crop: bool = Field(False, description="random resized crop (scale, ratio) at load; False: "
                       "the stored image resized to image_size (no randomness)")
    scale: tuple[float, float] = Field((0.9, 1.0), description="random resized crop: area range")
    ratio: tuple[float, float] = Field((0.75, 1.3333333333333333),  # 3/4, 4/3
                                       description="random resized crop: aspect ratio range")
    hflip: float = Field(0.0, ge=0.0, le=1.0, description="probability of a horizontal flip "
                         "(0 by default: a caption may say left or right)")
    randaugment: tuple[int, int] | None = Field(
        None, description="RandAugment [ops, magnitude] (ViLT fine-tuning: [2, 9]); None: off")
    mean: Triple = Field((0.5, 0.5, 0.5), description="per-channel mean (ViLT: 0.5; CLIP: "
                         "[0.48145466, 0.4578275, 0.40821073])")
    std: Triple = Field((0.5, 0.5, 0.5), description="per-channel std (ViLT: 0.5; CLIP: "
                        "[0.26862954, 0.26130258, 0.27577711])")
    mlm: bool = Field(False, description="mask the caption for the mlm target: input_ids "
                      "masked, mlm_labels (single layout only)")
    whole_word_masking: bool = Field(True, description="mlm: predict whole words (a piece and "
                                     "its '##' continuations) at once, as ViLT")
    itm: bool = Field(False, description="image-text matching for the itm target: swap images "
                      "for negatives, itm_labels 1 = match, 0 = not (single layout only)")
    itm_negatives: float = Field(0.5, ge=0.0, le=1.0, description="itm: probability that an "
                                 "example's image is replaced by another example's")
    mim_patches: int = Field(0, ge=0, description="patches masked per image (BEiT's blockwise "
                             "masking) -> mim_mask; 0: no image masking")
    patch_size: int = Field(16, ge=1, description="mim: the model's patch side in pixels")
    mim_min_patches: int = Field(16, ge=1, description="mim: smallest masked block in patches "
                                 "(at most mim_patches)")
    mim_min_aspect: float = Field(0.3, gt=0.0, le=1.0, description="mim: smallest aspect ratio "
                                  "of a block; the largest is its inverse")

    @model_validator(mode="after")
    def _consistent(self) -> "ImageTextConfig":
        if self.layout == "dual" and (self.mlm or self.itm):
            raise ValueError("mlm and itm are single-stream objectives (the model must see "
                             "caption and image together): set layout: single, or switch them "
                             "off for a dual-stream (CLIP) recipe")
        if not (0 < self.scale[0] <= self.scale[1] <= 1 and 0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], "
                             f"got scale={self.scale}, ratio={self.ratio}")
        if self.mim_patches:
            s, p = self.image_size or self.size, self.patch_size
            if s % p:
                raise ValueError(f"image_size {s} is not a multiple of patch_size {p}: set both "
                                 "to the model's")
            if self.mim_patches > (s // p) ** 2:
                raise ValueError(f"mim_patches {self.mim_patches} is more than the "
                                 f"{(s // p) ** 2} patches of a {s // p}x{s // p} grid")
        return self


def text_specials(tokenizer: Any) -> tuple[list[int], list[int]]:
    """([start id] or [], [end id] or []): the tokens a caption sits between, [CLS] / [SEP]
    or <bos> / <eos>, whichever the tokenizer has."""
    if tokenizer is None or not callable(getattr(tokenizer, "encode_batch", None)):
        what = "no tokenizer" if tokenizer is None else f"{type(tokenizer).__name__}"
        raise DataError(f"the image_text processor tokenizes captions, but the recipe has {what}",
                        hint="name a text tokenizer in data.tokenizer (wordpiece for ViLT, "
                        "bpe or hf for CLIP; `tp modules tokenizer`)")
    special = tokenizer.special_ids
    start = next((int(special[k]) for k in ("cls", "bos") if k in special), None)
    end = next((int(special[k]) for k in ("sep", "eos") if k in special), None)
    return ([] if start is None else [start]), ([] if end is None else [end])


class ImageTextDataset(ExampleDataset):
    """Stored pairs, augmented and masked at load as the config says."""

    def __init__(self, store: Any, tokenizer: Any, seed: int, config: ImageTextConfig) -> None:
        text_specials(tokenizer)
        super().__init__(store, tokenizer, seed)
        self.config = config
        self.vocab_size = int(tokenizer.vocab_size)
        self.size = config.image_size or config.size
        self.grid = self.size // config.patch_size
        self.transform = TrainTransform(
            size=self.size, scale=config.scale if config.crop else None, ratio=config.ratio,
            hflip=config.hflip, randaugment=config.randaugment, mean=config.mean, std=config.std)
        self.masker = Masker(tokenizer, config) if config.mlm else None
        self.text, self.image = STREAMS[config.layout]

    def __len__(self) -> int:
        return len(self.store)

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        c = self.config
        stored = self.store.example(index)
        pixels = np.asarray(stored["pixels"])  # (size, size, 3) uint8
        ids = torch.from_numpy(stored["ids"].astype(np.int64))  # (T,)
        out: dict[str, torch.Tensor] = {}
        match = 1
        if c.itm:
            if uniform(g) < c.itm_negatives:
                other = self.negative(index, pixels, g)
                if other is not None:
                    pixels, match = other, 0
        out[self.image + "pixel_values"] = self.transform(pixels, g)  # (3, S, S)
        if self.masker is not None:
            ids, labels = self.masker(ids, g)  # (T,), (T,)
            out["mlm_labels"] = labels
        out[self.text + "input_ids"] = ids
        if c.itm:
            out["itm_labels"] = torch.tensor(match, dtype=torch.int64)
        if c.mim_patches:
            out[self.image + "mim_mask"] = blockwise_mask(  # (N,)
                (self.grid, self.grid), c.mim_patches, g,
                min_patches=min(c.mim_min_patches, c.mim_patches), min_aspect=c.mim_min_aspect)
        return out

    def negative(self, index: int, pixels: np.ndarray, g: torch.Generator) -> np.ndarray | None:
        """Another example's stored image, drawn from `g`; never the example itself nor an
        image with the same pixels (a corpus with five captions a picture, as COCO, repeats
        it). None when NEGATIVE_TRIES draws found only the same picture."""
        n = len(self)
        for _ in range(NEGATIVE_TRIES if n > 1 else 0):
            j = randint(g, n - 1)
            j += j >= index  # uniform over the others
            other = np.asarray(self.store.example(j)["pixels"])
            if not np.array_equal(other, pixels):
                return other
        return None

    def batch_keys(self) -> tuple[BatchKey, ...]:
        c, s, t, i = self.config, self.size, self.text, self.image
        keys = [BatchKey(i + "pixel_values", "float32", (3, s, s), unit="images",
                         description="the image, normalised, channels first"),
                BatchKey(t + "input_ids", "int64", ("T",), pad=self.pad_id,
                         mask=t + "attention_mask", high=self.vocab_size,
                         description="the caption's token ids between its start and end tokens")]
        if c.mlm:
            keys.append(BatchKey("mlm_labels", "int64", ("T",), pad=IGNORE,
                                 description="the original id of each masked token, -100 "
                                 "elsewhere"))
        if c.itm:
            keys.append(BatchKey("itm_labels", "int64", (), low=0, high=2,
                                 description="1: the caption describes the image, 0: not"))
        if c.mim_patches:
            keys.append(BatchKey(i + "mim_mask", "bool", (self.grid ** 2,),
                                 description="True on the masked patches"))
        return tuple(keys)


class ImageTextProcessor:
    """Image-caption pairs from TSV, JSONL or WebDataset shards (ViLT, CLIP)."""

    Config = ImageTextConfig
    corpus_format: ClassVar[str] = "records"

    def __init__(self, config: ImageTextConfig | None = None) -> None:
        self.config = config or ImageTextConfig()
        self._contents: dict[str, Any] = {}

    def fields(self) -> dict[str, tuple[str, tuple[int | None, ...]]]:
        s = self.config.size
        return {"ids": ("int32", (None,)), "pixels": ("uint8", (s, s, 3))}

    def records(self, corpus: str, tokenizer: Any, workers: int
                ) -> Iterator[dict[str, np.ndarray]]:
        """The stored examples in corpus order: captions tokenized a batch at a time ahead of
        the images, which are decoded in parallel (`decode_many`: at most a few chunks in
        flight, so memory stays flat)."""
        start, end = text_specials(tokenizer)
        if self.config.mlm:  # a tokenizer without [MASK] or word pieces: now, not after decoding
            Masker(tokenizer, self.config)
        room = self.config.max_length - len(start) - len(end)
        pending: deque[tuple[str, str, list[int]]] = deque()  # source, caption, ids

        def images() -> Iterator[Any]:
            pairs = iter(read_pairs(corpus))
            while block := list(islice(pairs, TOKENIZE_BATCH)):
                for pair, ids in zip(block, tokenizer.encode_batch([p.text for p in block])):
                    pending.append((pair.source, pair.text, ids))
                    yield pair.image

        skipped: list[str] = []
        truncated = pairs = 0
        self._contents = {}
        for _, pixels, error in decode_many(images(), self.config.size, workers or 2, "skip"):
            source, text, ids = pending.popleft()
            if pixels is None:
                message = _located(str(error), source)
                if self.config.on_error == "raise":
                    raise ImageError(message, hint="re-download or re-export the image, or set "
                                     "data.processor.on_error=skip to leave such pairs out "
                                     "(counted in the summary)")
                skipped.append(message)
                continue
            if not ids:
                raise DataError(f"{source}: the caption {text[:60]!r} has no tokens",
                                hint="check the caption and the tokenizer's vocabulary")
            truncated += len(ids) > room
            pairs += 1
            yield {"ids": np.asarray(start + list(ids[:room]) + end, np.int32), "pixels": pixels}
        self._contents = {"pairs": pairs, "truncated_captions": truncated,
                          "max_length": self.config.max_length, "skipped": len(skipped),
                          "skipped_files": skipped[:SKIPPED_SHOWN]}

    def contents(self) -> dict[str, Any]:
        """Counts (pairs, captions cut to max_length, images skipped) for meta.json and the
        summary."""
        return dict(self._contents)

    def dataset(self, store: Any, tokenizer: Any, seed: int) -> ImageTextDataset:
        return ImageTextDataset(store, tokenizer, seed, self.config)


def _located(message: str, source: str) -> str:
    """decode's message about an image, naming the pair's line or shard member: encoded bytes
    are `<bytes>` to it, and a file's path does not say which line listed it."""
    if "<bytes>" in message:
        return message.replace("<bytes>", source, 1)
    return f"{source}: {message}"

