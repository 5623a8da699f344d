"""What CLIP's downstream tasks (`zero_shot`, `retrieval`, `embed`) share: the check that a
checkpoint is a CLIP, and its two towers run on raw texts and images the way the checkpoint's
recipe prepared them in pre-training.

- Texts go through the checkpoint's tokenizer between its start and end tokens and are cut to
  the `image_text` processor's `max_length` keeping the end token (`text_specials`): CLIP pools
  at the end-of-text token, so cutting it off would pool at a word.
- Images are decoded and stored as `tp preprocess` stores them (`tp_vision.images.fit`: shorter
  side to the processor's `size`, bicubic, centre square), then resized to the model's
  `image_size` and normalised with the processor's mean and std by tp-vision's evaluation
  transform (HF's arithmetic), so a converted CLIP sees CLIPImageProcessor's pixels.
- Each tower runs alone (`model.stream_0` / `model.stream_1`) and its pooled vector goes through
  the `clr` target's projection and L2 norm (`embed_text` / `embed_image`): class prompts, captions
  and images are embedded once each, never as pairs.

Images are decoded in parallel, a batch at a time (`decode_many`): memory holds one batch of
pixels however many images there are.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpcli.data.batch import BatchKey, collate
from tpcli.errors import TpError

CLIP_HINT = ("use a CLIP checkpoint: `tp convert openai/clip-vit-base-patch32 --from hf --out "
             "DIR`, or a run of a dual-stream recipe with the clr target (recipes/clip-*)")
Image = Path | bytes  # a file, or an encoded image's bytes (a WebDataset shard's member)


def check_clip(recipe: Any, task: str) -> Any:
    """The recipe's `image_text` processor options; a TpError naming what `task` needs when the
    checkpoint is not a dual-stream model with a clr target fed by that processor."""
    spec = recipe.model
    targets = [t.name for t in spec.targets]
    problems = []
    if not spec.dual:
        problems.append("it has one stack, not the two streams stream_0 (text) and stream_1 "
                        "(images)")
    if "clr" not in targets:
        problems.append(f"its targets are {', '.join(targets) or 'none'}, not clr")
    proc = recipe.processor
    layout = getattr(proc.options, "layout", None)
    if proc.name != "image_text" or layout != "dual":
        problems.append(f"its data.processor is {proc.name!r}"
                        + (f" with layout {layout!r}" if layout else "")
                        + ", not image_text with layout dual")
    if problems:
        raise TpError(f"task {task} needs a CLIP model (a dual-stream model with the clr target "
                      f"and the image_text processor, layout dual), and {recipe.name} is not "
                      f"one: {'; '.join(problems)}", hint=CLIP_HINT)
    return proc.options


class ClipTowers:
    """A CLIP checkpoint's text and image towers, with its recipe's text and image preparation
    (`check_clip`'s processor options)."""

    def __init__(self, options: Any, workers: int = 2) -> None:
        from tp_vision.transforms import EvalTransform

        self.options = options
        self.workers = workers
        s = options.image_size or options.size
        self.transform = EvalTransform(resize=(s, s), resample="bicubic", crop=None,
                                       mean=tuple(options.mean), std=tuple(options.std))

    # -- text

    def text_ids(self, texts: Sequence[str], tokenizer: Any) -> list[list[int]]:
        """Token ids of each text between the start and end tokens, at most max_length."""
        from tp_multimodal.image_text_processor import text_specials

        start, end = text_specials(tokenizer)
        room = self.options.max_length - len(start) - len(end)
        return [start + list(ids[:room]) + end for ids in tokenizer.encode_batch(list(texts))]

    def embed_texts(self, model: Any, texts: Sequence[str], tokenizer: Any,
                    device: torch.device, batch_size: int) -> torch.Tensor:
        """(N, P) float32 unit vectors of `texts`, in order."""
        clr = model.targets["clr"]
        key = BatchKey("input_ids", "int64", ("T",), pad=int(tokenizer.special_ids.get("pad", 0)),
                       mask="attention_mask")
        ids = self.text_ids(texts, tokenizer)
        out = []
        for first in range(0, len(ids), batch_size):
            rows = [{"input_ids": torch.tensor(t, dtype=torch.long)}
                    for t in ids[first:first + batch_size]]
            batch = {k: v.to(device) for k, v in collate(rows, (key,), "a CLIP task").items()}
            out.append(clr.embed_text(model.stream_0(batch)).float().cpu())  # (b, P)
        return torch.cat(out) if out else torch.zeros(0, clr.config.projection_dim)

    # -- images

    def pixels(self, images: Sequence[Image], sources: Sequence[str]) -> Iterator[torch.Tensor]:
        """Each image as the model's (3, S, S) input, in order; an ImageError names the first
        one that cannot be decoded (by its file, or its shard member for bytes)."""
        from tp_vision.hub_images import decode_blobs
        from tp_vision.images import decode_many

        size = self.options.size
        if images and isinstance(images[0], bytes):
            decoded = decode_blobs(list(images), list(sources), size, self.workers, "raise")
        else:
            decoded = decode_many(list(images), size, self.workers, on_error="raise")
        for _, array, _ in decoded:
            yield self.transform(np.asarray(array))  # (3, S, S)

    def embed_images(self, model: Any, images: Sequence[Image], sources: Sequence[str],
                     device: torch.device, batch_size: int) -> torch.Tensor:
        """(N, P) float32 unit vectors of `images`, in order."""
        clr = model.targets["clr"]
        out: list[torch.Tensor] = []
        batch: list[torch.Tensor] = []

        def flush() -> None:
            pixel_values = torch.stack(batch).to(device)  # (b, 3, S, S)
            tower = model.stream_1 or model.stream_0  # tied streams run stream_0 twice
            out.append(clr.embed_image(tower({"pixel_values": pixel_values}))
                       .float().cpu())  # (b, P)
            batch.clear()

        for x in self.pixels(images, sources):
            batch.append(x)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        return torch.cat(out) if out else torch.zeros(0, clr.config.projection_dim)

    @staticmethod
    def scale(model: Any) -> float:
        """The clr target's logit scale exp(logit_scale), clamped as in training."""
        return float(model.targets["clr"].scale().detach())


class PretrainedClipTask:
    """What `zero_shot`, `retrieval` and `embed` do alike: they run a pre-trained CLIP as it is,
    so there is no head to add, nothing to learn, and nothing to encode per example (`predict`
    embeds texts and images a batch at a time: memory holds one batch of pixels)."""

    def fit(self, train: list[Any]) -> None:
        """Nothing to learn."""

    def check(self, name: str, examples: list[Any]) -> None:
        """No gold answer to refuse."""

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """No state."""

    def target(self) -> None:
        return None  # the model's own clr target

    def head_sources(self) -> dict[str, str]:
        return {}

    def encode(self, examples: list[Any], tokenizer: Any, max_length: int,
               with_labels: bool = True) -> list[dict[str, torch.Tensor]]:
        return [{} for _ in examples]

    def batch_keys(self, rows: list[dict[str, torch.Tensor]], tokenizer: Any) -> tuple:
        return ()
