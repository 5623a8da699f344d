"""Task `embed`: a CLIP model's unit-length embeddings of images or texts, for search indexes,
deduplication and zero-shot work outside tp.

    tp infer CLIP_CHECKPOINT --task embed --input photos/ --out photos.npy
    tp infer CLIP_CHECKPOINT --task embed --input captions.txt --out captions.npy
    tp infer CLIP_CHECKPOINT --task embed --input captions.txt --out captions.jsonl

Input: a folder of images (searched recursively, in path order), one image file, a list of
image paths (one a line, relative to the list's folder), or a text file with one text a line
(blank lines skipped). A list is read as image paths when every line names an image file by its
extension (the `inputs` option decides instead: `images` or `texts`).

Output: with `--out` ending in `.npy`, an (N, P) float32 array of the L2-normalised embeddings
(the clr target's projections: what CLIP's `get_image_features` / `get_text_features` give,
normalised) in input order, and beside it a JSONL file of the same stem naming each row
(`{"index", "path"}` or `{"index", "line", "text"}`); otherwise one JSONL with each row's
name and its `embedding`. Every file is written to a temporary name and renamed into place, so
a reader never sees half an array.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from tp_multimodal.clip_inputs import PretrainedClipTask
from tpcli.downstream.tasks import Example, Splits, TaskConfig, data_file
from tpcli.errors import DataError, TpError
from tpcli.plugins.requests import TaskData

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
INPUT_HINT = ("pass a folder of images, an image file, a list of image paths (one a line) or a "
              "text file with one text a line")


class EmbedConfig(TaskConfig):
    """Options of the `embed` task."""

    inputs: Literal["auto", "images", "texts"] = Field(
        "auto", description="what a list file holds: image paths or texts, one a line; auto: "
        "image paths when every line ends in an image extension (a folder or an image file "
        "is always images)")
    workers: int = Field(2, ge=1, description="processes that decode images")


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def read_inputs(path: str, inputs: str = "auto") -> list[Example]:
    """The images or texts of `path` as examples (fields `path`, or `text` and `line`)."""
    p = Path(path)
    if p.is_dir():
        if inputs == "texts":
            raise DataError(f"{path} is a folder, and finetune.task.inputs=texts reads a text "
                            "file", hint="pass a text file with one text a line")
        files = sorted(f for f in p.rglob("*") if f.is_file() and _is_image(f.name))
        if not files:
            raise DataError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, "
                            "...)", hint=INPUT_HINT)
        return [Example(str(i), {"path": str(f)}, None, str(f)) for i, f in enumerate(files)]
    data_file(path, "folder of images, image file, list of image paths or text file")
    if _is_image(p.name) and inputs != "texts":
        return [Example("0", {"path": str(p)}, None, str(p))]
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path} is neither an image ({', '.join(IMAGE_SUFFIXES[:4])}, ...) nor "
                        "a UTF-8 text file", hint=INPUT_HINT) from None
    numbered = [(n, ln.strip()) for n, ln in enumerate(lines, start=1) if ln.strip()]
    if not numbered:
        raise DataError(f"{path} has no lines to embed (it is empty or blank)", hint=INPUT_HINT)
    images = inputs == "images" or (inputs == "auto" and all(_is_image(t) for _, t in numbered))
    if not images:
        return [Example(str(i), {"text": t, "line": n}, None, f"{path}:{n}")
                for i, (n, t) in enumerate(numbered)]
    out = []
    for i, (n, t) in enumerate(numbered):
        f = p.parent / t  # an absolute path stays itself
        if not f.is_file():
            raise DataError(f"{path}:{n}: image {t} does not exist (looked at {f})",
                            hint="list one existing image a line (relative paths are relative "
                            "to the list's folder), or set finetune.task.inputs=texts to embed "
                            "the lines as texts")
        out.append(Example(str(i), {"path": str(f)}, None, f"{path}:{n}"))
    return out


def save_npy(path: Path, array: np.ndarray) -> None:
    """`array` as a .npy file, atomically: a temp file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class EmbedTask(PretrainedClipTask):
    """Embed images or texts with a CLIP model's towers; nothing to score."""

    Config: ClassVar[type[TaskConfig]] = EmbedConfig
    metrics: tuple[str, ...] = ()

    def __init__(self, config: EmbedConfig, variant: str | None) -> None:
        if variant is not None:
            raise TpError(f"task embed has no variant {variant!r}",
                          hint="name it alone: --task embed")
        self.config = config
        self.towers: Any = None  # ClipTowers (bind)
        self.embeddings = np.zeros((0, 0), np.float32)  # (N, P): the last `predict`'s

    def bind(self, recipe: Any, registry: Any) -> None:
        from tp_multimodal.clip_inputs import ClipTowers, check_clip

        self.towers = ClipTowers(check_clip(recipe, "embed"), self.config.workers)

    def load(self, data: TaskData) -> Splits:
        if data.train or data.dev or data.source:
            raise TpError("task embed writes a pre-trained CLIP's embeddings: there is nothing "
                          "to fine-tune", hint="run tp infer CHECKPOINT --task embed --input "
                          "IMAGES_OR_TEXTS --out embeddings.npy")
        splits = Splits()
        if data.test:
            splits.test[Path(data.test).stem] = read_inputs(data.test, self.config.inputs)
        return splits

    def predict(self, model: torch.nn.Module, examples: list[Example],
                rows: list[dict[str, torch.Tensor]], tokenizer: Any, device: torch.device,
                batch_size: int, precision: str = "fp32") -> list[dict[str, Any]]:
        """One record a row naming it; the (N, P) embeddings are kept in `self.embeddings`
        for `write` (a million rows as JSON numbers would not fit in memory)."""
        if self.towers is None:
            raise TpError("task embed was not bound to a model's recipe",
                          hint="call bind(recipe, registry) first (tp infer does)")
        if examples and "text" in examples[0].fields:
            emb = self.towers.embed_texts(model, [e.fields["text"] for e in examples],
                                          tokenizer, device, batch_size)
            records = [{"index": i, "line": e.fields["line"], "text": e.fields["text"]}
                       for i, e in enumerate(examples)]
        else:
            emb = self.towers.embed_images(model, [Path(e.fields["path"]) for e in examples],
                                           [e.source for e in examples], device, batch_size)
            records = [{"index": i, "path": e.fields["path"]} for i, e in enumerate(examples)]
        self.embeddings = emb.float().numpy().astype(np.float32, copy=False)  # (N, P)
        return records

    def decode(self, output: torch.Tensor, examples: list[Example]) -> list[dict[str, Any]]:
        raise TpError("embed runs the towers itself", hint="use EmbedTask.predict")

    def write(self, predictions: list[dict[str, Any]], out: Path) -> dict[str, Any]:
        """`out` as .npy (+ the JSONL of row names beside it), or one JSONL with embeddings;
        the summary's extra entries."""
        from tpcli.downstream.evaluate import write_jsonl

        if out.suffix.lower() == ".npy":
            rows = out.with_suffix(".jsonl")
            write_jsonl(rows, predictions)
            save_npy(out, self.embeddings)
            return {"rows": str(rows), "shape": list(self.embeddings.shape)}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                for record, vector in zip(predictions, self.embeddings):
                    f.write(json.dumps({**record, "embedding": vector.tolist()},
                                       ensure_ascii=False) + "\n")
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return {"shape": list(self.embeddings.shape)}

    def evaluate(self, predictions: list[dict[str, Any]], examples: list[Example]
                 ) -> dict[str, float]:
        return {}
