"""Task `zero_shot`: image classification by a CLIP model that was never trained on the classes.

    tp infer CLIP_CHECKPOINT --task zero_shot --input images.tsv --out predictions.jsonl
    tp infer CLIP_CHECKPOINT --task zero_shot 'finetune.task.classes=[cat, dog]' \\
        'finetune.task.templates=["a photo of a {}.", "a drawing of a {}."]' \\
        --input photos/ --out predictions.jsonl

Each class name is written into the prompt templates ("a photo of a {}." by default, CLIP's),
the prompts go through the text tower and the clr projection once, and a class's embedding is
the mean of its prompts' unit vectors, renormalised (CLIP's prompt ensembling). Each image goes
through the image tower; its logits are the clr target's scale times the cosine with every
class, its probabilities their softmax.

Input: any image corpus tp-vision reads (a `label<TAB>path` TSV, a class-per-folder tree, a
CSV / JSONL manifest, a Hub dataset), or unlabelled images: a list of paths (one a line), a
folder of images without class folders, one image file. The class names are the `classes`
option, or by default the labels the input holds (sorted). When the labels are not words
(ImageNet's folders are WordNet ids, n01440764), `classes` maps each label to the name its
prompts say: {n01440764: tench, ...}, or a file of `label<TAB>name` lines. With labels, the
metrics are top-1 `accuracy` and `top5`; each prediction lists its five likeliest classes with
their probabilities (as `image_classification`'s do; with a mapping, each also its name).

There is nothing to fine-tune: `tp finetune --task zero_shot` is refused with the command to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from tp_multimodal.clip_inputs import PretrainedClipTask
from tpcli.downstream.tasks import Example, Splits, TaskConfig, no_examples
from tpcli.errors import DataError, TpError
from tpcli.plugins.requests import TaskData

CLIP_TEMPLATE = "a photo of a {}."  # the Config default spells it out: `tp modules` reads it
TOP = 5  # classes listed per prediction (what top-5 accuracy reads)


class ZeroShotConfig(TaskConfig):
    """Options of the `zero_shot` task."""

    classes: list[str] | dict[str, str] | str | None = Field(
        None, description="the class names in order, or {label: name} (the name the prompts "
        "say for each label of the input), or a text file of names or `label<TAB>name` lines, "
        "one a line; None: the labels the input holds, sorted")
    templates: list[str] | str = Field(
        ["a photo of a {}."], description="prompt templates, each with one {} where the class name "
        "goes (or a text file, one a line); several are averaged per class, as CLIP's prompt "
        "ensembling")
    workers: int = Field(2, ge=1, description="processes that decode images")


def read_list(value: list[str] | str, what: str, option: str) -> list[str]:
    """A list option given inline or as a file with one item a line (blank lines skipped)."""
    if isinstance(value, list):
        items = [str(v) for v in value]
        where = f"finetune.task.{option}"
    else:
        p = Path(value)
        if not p.is_file():
            raise DataError(f"finetune.task.{option}: {value} is not a file",
                            hint=f"give the {what} as a list ({option}=[a, b]) or as a file "
                            "with one a line")
        items = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        where = f"{option} file {value}"
    if not items:
        raise DataError(f"{where} holds no {what}", hint=f"give at least one of the {what}")
    return items


def labelled_layout(path: str) -> bool:
    """Whether `path` is read as an image corpus (class folders, a TSV, a manifest, a list of
    paths), not as one image file or a folder of images without class folders."""
    from tp_multimodal.embed import IMAGE_SUFFIXES

    p = Path(path)
    if p.is_dir():
        return any(c.is_dir() and not c.name.startswith(".") for c in p.iterdir())
    return p.suffix.lower() not in IMAGE_SUFFIXES


def read_classes(value: list[str] | dict[str, str] | str) -> tuple[list[str], list[str]]:
    """(labels, names) of the classes option: a list (each label its own name), a mapping
    label -> name, or a file of names or of `label<TAB>name` lines."""
    if isinstance(value, dict):
        pairs = [(str(k).strip(), str(v).strip()) for k, v in value.items()]
        if not pairs:
            raise DataError("finetune.task.classes holds no class names",
                            hint="give at least one of the class names")
    else:
        items = read_list(value, "class names", "classes")
        if isinstance(value, str) and all("\t" in i for i in items):  # label<TAB>name lines
            pairs = [(a.strip(), b.strip()) for a, _, b in (i.partition("\t") for i in items)]
        else:
            pairs = [(i, i) for i in items]
    labels = [label for label, _ in pairs]
    repeated = sorted({c for c in labels if labels.count(c) > 1})
    if repeated:
        raise TpError(f"finetune.task.classes names {', '.join(repeated[:5])} twice",
                      hint="give each class once")
    return labels, [name for _, name in pairs]


class ZeroShotTask(PretrainedClipTask):
    """Classify images against class-name prompts; score top-1 and top-5 accuracy."""

    Config: ClassVar[type[TaskConfig]] = ZeroShotConfig
    metrics = ("accuracy", "top5")

    def __init__(self, config: ZeroShotConfig, variant: str | None) -> None:
        if variant is not None:
            raise TpError(f"task zero_shot has no variant {variant!r}",
                          hint="name it alone: --task zero_shot")
        self.config = config
        self.templates = read_list(config.templates, "prompt templates", "templates")
        for t in self.templates:
            if t.count("{}") != 1:
                raise TpError(f"finetune.task.templates: {t!r} needs exactly one {{}} where the "
                              "class name goes", hint=f"e.g. {CLIP_TEMPLATE!r}")
        self.classes: list[str] = []  # the labels, in order
        self.names: list[str] = []  # what the prompts call each
        if config.classes is not None:
            self.classes, self.names = read_classes(config.classes)
        self.towers: Any = None  # ClipTowers (bind)

    def bind(self, recipe: Any, registry: Any) -> None:
        """The text and image preparation of the checkpoint's `image_text` processor."""
        from tp_multimodal.clip_inputs import ClipTowers, check_clip

        self.towers = ClipTowers(check_clip(recipe, "zero_shot"), self.config.workers)

    # -- data

    def load(self, data: TaskData) -> Splits:
        from tp_multimodal.embed import read_inputs
        from tp_vision.image_classification import read_images

        if data.train or data.dev or data.source:
            raise TpError("task zero_shot classifies with a pre-trained CLIP as it is: there is "
                          "nothing to fine-tune", hint="run tp infer CHECKPOINT --task zero_shot "
                          "--input IMAGES --out predictions.jsonl")
        splits = Splits()
        if data.test:
            examples = read_images(data.test, labelled=False) if labelled_layout(data.test) \
                else read_inputs(data.test, "images")
            if not examples:
                raise no_examples(data.test, "input")
            if not self.classes:
                found = {str(e.label) for e in examples if e.label is not None}
                if not found:
                    raise DataError(f"{data.test} has no labels to take the class names from",
                                    hint="name the classes: finetune.task.classes=[cat, dog] "
                                    "(or a file with one a line)")
                self.classes = self.names = sorted(found)
            splits.test[Path(data.test).stem] = examples
        return splits

    def check(self, name: str, examples: list[Example]) -> None:
        for e in examples:
            if e.label is not None and str(e.label) not in self.classes:
                raise DataError(f"{e.source}: label {e.label!r} is not one of the classes",
                                hint=f"the classes are {', '.join(self.classes[:10])}; add it "
                                "to finetune.task.classes, or map the input's labels to the "
                                "names the prompts say (a file of label<TAB>name lines)")

    def state(self) -> dict[str, Any]:
        return {"classes": dict(zip(self.classes, self.names))}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("classes"):
            self.classes, self.names = read_classes(state["classes"])

    # -- prediction

    def class_embeddings(self, model: Any, tokenizer: Any, device: torch.device,
                         batch_size: int) -> torch.Tensor:
        """(C, P): each class's prompts embedded, averaged and renormalised."""
        prompts = [t.format(c) for c in self.names for t in self.templates]
        emb = self.towers.embed_texts(model, prompts, tokenizer, device, batch_size)  # (C*K, P)
        emb = emb.view(len(self.classes), len(self.templates), -1).mean(dim=1)  # (C, P)
        return F.normalize(emb, dim=-1)

    def logits(self, model: Any, examples: list[Example], tokenizer: Any,
               device: torch.device, batch_size: int) -> torch.Tensor:
        """(N, C): scale x cosine of each image with each class."""
        if self.towers is None:
            raise TpError("task zero_shot was not bound to a model's recipe",
                          hint="call bind(recipe, registry) first (tp infer does)")
        classes = self.class_embeddings(model, tokenizer, device, batch_size)  # (C, P)
        images = [e.fields.get("image") or Path(e.fields["path"]) for e in examples]
        embeds = self.towers.embed_images(model, images, [e.source for e in examples], device,
                                          batch_size)  # (N, P)
        return self.towers.scale(model) * embeds @ classes.t()  # (N, C)

    def predict(self, model: torch.nn.Module, examples: list[Example],
                rows: list[dict[str, torch.Tensor]], tokenizer: Any, device: torch.device,
                batch_size: int, precision: str = "fp32") -> list[dict[str, Any]]:
        return self.decode(self.logits(model, examples, tokenizer, device, batch_size), examples)

    def decode(self, output: torch.Tensor, examples: list[Example]) -> list[dict[str, Any]]:
        probs = torch.softmax(output.float(), dim=-1)  # (N, C)
        top_p, top_i = probs.topk(min(TOP, probs.shape[1]), dim=-1)
        out = []
        for e, p, i in zip(examples, top_p.tolist(), top_i.tolist()):
            out.append({"id": e.guid, "path": e.fields.get("path", e.source),
                        "label": self.classes[i[0]],
                        "top": [{"label": self.classes[c], "probability": round(q, 6),
                                 **({"name": self.names[c]} if self.names[c] != self.classes[c]
                                    else {})} for c, q in zip(i, p)]})
        return out

    def evaluate(self, predictions: list[dict[str, Any]], examples: list[Example]
                 ) -> dict[str, float]:
        n = max(1, len(examples))
        top1 = sum(p["label"] == str(e.label) for p, e in zip(predictions, examples))
        top5 = sum(str(e.label) in [t["label"] for t in p["top"]]
                   for p, e in zip(predictions, examples))
        return {"accuracy": top1 / n, "top5": top5 / n}
