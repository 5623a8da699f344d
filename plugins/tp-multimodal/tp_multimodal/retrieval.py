"""Task `retrieval`: image-text retrieval with a CLIP model, scored by recall@K both ways.

    tp infer CLIP_CHECKPOINT --task retrieval --input pairs.tsv --out ranks.jsonl

Input: image-caption pairs in any layout the `image_text` processor reads
(`tp_multimodal.pairs`: a `text<TAB>path` TSV, a JSONL manifest, WebDataset tar shards). An
image listed with several captions (COCO and Flickr30k give five) is one candidate image: it is
embedded once, and every one of its captions counts as its match. Every caption and every
distinct image is embedded once; the similarity of a caption and an image is the cosine of
their embeddings (the clr scale does not change a ranking).

- text -> image: for each caption, the rank of its image among all distinct images;
- image -> text: for each distinct image, the rank of its best-placed caption among all
  captions.

A rank is 1 + the number of wrong candidates scoring strictly higher than the match (ties go
to the match). recall@K is the share of queries whose match ranks K or better; the metrics are
`t2i_recall@{1,5,10}`, `i2t_recall@{1,5,10}` (each over its own queries: captions, distinct
images) and `mean_recall`, their mean (the figure CLIP-style papers report as RSUM / 6). Each
prediction (one a pair, in input order) gives the pair's caption, image and both ranks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field

from tp_multimodal.clip_inputs import PretrainedClipTask
from tpcli.downstream.tasks import Example, Splits, TaskConfig, no_examples
from tpcli.errors import TpError
from tpcli.plugins.requests import TaskData

KS = (1, 5, 10)


class RetrievalConfig(TaskConfig):
    """Options of the `retrieval` task."""

    workers: int = Field(2, ge=1, description="processes that decode images")


def image_key(image: Path | bytes) -> str:
    """What makes two pairs' images the same candidate: the file, or the bytes' digest."""
    if isinstance(image, bytes):
        return "sha1:" + hashlib.sha1(image).hexdigest()
    return str(Path(image).resolve())


def read_pair_examples(path: str) -> list[Example]:
    """The pairs of a corpus as examples: fields text, image (path or bytes), label = the
    image's key (several captions of one image share it)."""
    from tp_multimodal.pairs import read_pairs

    out = []
    for i, pair in enumerate(read_pairs(path)):
        shown = str(pair.image) if isinstance(pair.image, Path) else pair.source
        out.append(Example(str(i), {"text": pair.text, "image": pair.image, "shown": shown},
                           image_key(pair.image), pair.source))
    if not out:
        raise no_examples(path, "retrieval")
    return out


def ranks(similarity: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """For each query row of `similarity` (Q, C) and its boolean `match` row (Q, C), with at
    least one match a row: 1 + the number of non-matching candidates scoring strictly higher
    than the row's best match. # (Q,)"""
    best = similarity.masked_fill(~match, float("-inf")).max(dim=1, keepdim=True).values
    return 1 + ((similarity > best) & ~match).sum(dim=1)


class RetrievalTask(PretrainedClipTask):
    """Rank images for captions and captions for images; score recall@1/5/10 both ways."""

    Config: ClassVar[type[TaskConfig]] = RetrievalConfig
    metrics = ("mean_recall", *(f"t2i_recall@{k}" for k in KS),
               *(f"i2t_recall@{k}" for k in KS))

    def __init__(self, config: RetrievalConfig, variant: str | None) -> None:
        if variant is not None:
            raise TpError(f"task retrieval has no variant {variant!r}",
                          hint="name it alone: --task retrieval")
        self.config = config
        self.towers: Any = None  # ClipTowers (bind)

    def bind(self, recipe: Any, registry: Any) -> None:
        from tp_multimodal.clip_inputs import ClipTowers, check_clip

        self.towers = ClipTowers(check_clip(recipe, "retrieval"), self.config.workers)

    def load(self, data: TaskData) -> Splits:
        if data.train or data.dev or data.source:
            raise TpError("task retrieval ranks with a pre-trained CLIP as it is: there is "
                          "nothing to fine-tune here (train CLIP with tp pretrain)",
                          hint="run tp infer CHECKPOINT --task retrieval --input PAIRS --out "
                          "ranks.jsonl")
        splits = Splits()
        if data.test:
            splits.test[Path(data.test).stem] = read_pair_examples(data.test)
        return splits

    # -- prediction

    def similarity(self, model: Any, examples: list[Example], tokenizer: Any,
                   device: torch.device, batch_size: int) -> tuple[torch.Tensor, list[int]]:
        """((N, M) cosine of every caption with every distinct image, the distinct image
        index of each pair)."""
        if self.towers is None:
            raise TpError("task retrieval was not bound to a model's recipe",
                          hint="call bind(recipe, registry) first (tp infer does)")
        first: dict[str, int] = {}  # image key -> index of the pair that shows it first
        for i, e in enumerate(examples):
            first.setdefault(str(e.label), i)
        order = list(first.values())  # pairs whose image is embedded
        column = {key: j for j, key in enumerate(first)}
        texts = self.towers.embed_texts(model, [e.fields["text"] for e in examples], tokenizer,
                                        device, batch_size)  # (N, P)
        images = self.towers.embed_images(
            model, [examples[i].fields["image"] for i in order],
            [examples[i].source for i in order], device, batch_size)  # (M, P)
        return texts @ images.t(), [column[str(e.label)] for e in examples]

    def predict(self, model: torch.nn.Module, examples: list[Example],
                rows: list[dict[str, torch.Tensor]], tokenizer: Any, device: torch.device,
                batch_size: int, precision: str = "fp32") -> list[dict[str, Any]]:
        sim, image_of = self.similarity(model, examples, tokenizer, device, batch_size)
        cols = torch.tensor(image_of)  # (N,)
        match = cols[:, None] == torch.arange(sim.shape[1])[None, :]  # (N, M)
        t2i = ranks(sim, match)  # (N,)
        i2t = ranks(sim.t(), match.t())  # (M,)
        return [{"id": e.guid, "text": e.fields["text"], "image": e.fields["shown"],
                 "text_to_image_rank": int(t2i[n]), "image_to_text_rank": int(i2t[image_of[n]])}
                for n, e in enumerate(examples)]

    def decode(self, output: torch.Tensor, examples: list[Example]) -> list[dict[str, Any]]:
        raise TpError("retrieval ranks the whole set at once", hint="use RetrievalTask.predict")

    def evaluate(self, predictions: list[dict[str, Any]], examples: list[Example]
                 ) -> dict[str, float]:
        """recall@K over the captions (text -> image) and over the distinct images (image ->
        text: one query per image, however many captions it has)."""
        t2i = [p["text_to_image_rank"] for p in predictions]
        per_image = {str(e.label): p["image_to_text_rank"] for p, e in zip(predictions, examples)}
        i2t = list(per_image.values())
        out = {f"t2i_recall@{k}": sum(r <= k for r in t2i) / max(1, len(t2i)) for k in KS}
        out |= {f"i2t_recall@{k}": sum(r <= k for r in i2t) / max(1, len(i2t)) for k in KS}
        return {"mean_recall": sum(out.values()) / len(out), **out}
