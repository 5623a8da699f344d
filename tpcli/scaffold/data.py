'''The module files `tp plugins new` writes for the other kinds: tokenizer, processor, task,
converter (templates, as in `tpcli.scaffold.modules`).
'''

TOKENIZER = '''"""`__NAME__` (tokenizer): UTF-8 bytes as tokens; needs no vocabulary file.

Ids 0-4 are the special tokens (pad, unk, cls, sep, mask), ids 5-260 the 256 byte values: any
text encodes, nothing is unknown, and `decode(encode(text)) == text` (lower-cased with
`lowercase: true`). A checkpoint stores the options with `save` and rebuilds the tokenizer with
`from_saved`; `fingerprint` changes whenever the mapping from text to ids would.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pydantic import Field

from tpcli.model.module import ModuleConfig

SPECIALS = ("pad", "unk", "cls", "sep", "mask")
OFFSET = len(SPECIALS)  # byte b is id OFFSET + b
SAVED = "__NAME___tokenizer.json"  # the file `save` writes


class __CLASS__Tokenizer:
    """Byte-level tokenizer: 5 special tokens + 256 byte values."""

    class Config(ModuleConfig):
        lowercase: bool = Field(False, description="lower-case the text before encoding")

    def __init__(self, config: Config | None = None, base_dir: str | Path = ".") -> None:
        self.config = config or self.Config()  # base_dir: no file to resolve against it

    @property
    def vocab_size(self) -> int:
        return OFFSET + 256

    @property
    def special_ids(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(SPECIALS)}

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        lower = self.config.lowercase
        return [[OFFSET + b for b in (t.lower() if lower else t).encode("utf-8")] for t in texts]

    def decode(self, ids: list[int]) -> str:
        data = bytes(i - OFFSET for i in ids if OFFSET <= i < OFFSET + 256)
        return data.decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        spec = {"tokenizer": "__NAME__", "version": 1, **self.config.model_dump()}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def save(self, directory: str | Path) -> None:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        part = out / (SAVED + ".part")
        part.write_text(json.dumps(self.config.model_dump()), encoding="utf-8")
        os.replace(part, out / SAVED)  # never half-written

    @classmethod
    def from_saved(cls, directory: str | Path) -> "__CLASS__Tokenizer":
        options = json.loads((Path(directory) / SAVED).read_text(encoding="utf-8"))
        return cls(cls.Config(**options), directory)
'''

PROCESSOR = '''"""`__NAME__` (data processor): one training example per document, randomly cropped.

`tp preprocess` reads the corpus one document per line (`corpus_format = "documents"`) and
tokenizes it. At load time each document is one example: `[cls] tokens [sep]` when the
vocabulary has those, cut to `seq_length` tokens by a window whose start is drawn from the
example's generator, a function of (seed, epoch, index) only, so a resumed run sees the same
crops. The batch holds `input_ids` (B, T), padded with the pad id; collate adds
`attention_mask`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from tpcli.data.batch import BatchKey
from tpcli.data.dataset import ExampleDataset
from tpcli.model.module import ModuleConfig


class __CLASS__ProcessorConfig(ModuleConfig):
    """Options of the `__NAME__` processor."""

    seq_length: int = Field(128, ge=2, le=1 << 20, description="most tokens per example")


class __CLASS__Dataset(ExampleDataset):
    """A document per example, cropped at a random start to seq_length tokens."""

    def __init__(self, store: Any, tokenizer: Any, seed: int,
                 config: __CLASS__ProcessorConfig) -> None:
        super().__init__(store, tokenizer, seed)
        self.config = config
        self.vocab_size = int(tokenizer.vocab_size) if tokenizer is not None else None
        self.bos = self.special_ids.get("cls")
        self.eos = self.special_ids.get("sep")

    def __len__(self) -> int:
        return self.store.n_documents

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        parts = self.store.document(index)  # the document's stored sequences (lines)
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        ids = [*([self.bos] if self.bos is not None else []), *ids.tolist(),
               *([self.eos] if self.eos is not None else [])]
        extra = len(ids) - self.config.seq_length
        start = int(torch.randint(extra + 1, (1,), generator=g)) if extra > 0 else 0
        window = ids[start:start + self.config.seq_length]
        return {"input_ids": torch.tensor(window, dtype=torch.long)}  # (T,)

    def batch_keys(self) -> tuple[BatchKey, ...]:
        return (BatchKey("input_ids", "int64", ("T",), pad=self.pad_id, mask="attention_mask",
                         unit="tokens", high=self.vocab_size),)


class __CLASS__Processor:
    """A document per example, randomly cropped to seq_length tokens."""

    Config = __CLASS__ProcessorConfig
    corpus_format: ClassVar[str] = "documents"

    def __init__(self, config: __CLASS__ProcessorConfig | None = None) -> None:
        self.config = config or __CLASS__ProcessorConfig()

    def dataset(self, store: Any, tokenizer: Any, seed: int) -> __CLASS__Dataset:
        return __CLASS__Dataset(store, tokenizer, seed, self.config)
'''

TASK = '''"""`__NAME__` (task for `tp finetune` / `tp infer`): classify each text, from TSV files.

Files have one example a line, `label<TAB>text`, no header (a test file may hold the text
alone). The label list is the sorted labels of the training file unless the `labels` option
gives it. The head is the `cls` target (tp-text) on the first token; the scores are accuracy
(which selects the best checkpoint) and the number of dev examples.

    tp finetune RUN --task __NAME__ --train train.tsv --dev dev.tsv
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from tpcli.data.batch import IGNORE, BatchKey
from tpcli.downstream.tasks import Example, Splits, TaskConfig, data_file
from tpcli.errors import DataError
from tpcli.plugins.requests import TaskData


class __CLASS__TaskConfig(TaskConfig):
    labels: list[str] | None = Field(
        None, description="the label list, in order (default: sorted labels of the train file)")


def read_tsv(path: str, labelled: bool) -> list[Example]:
    """`label<TAB>text` lines -> Examples; a DataError names the file and line."""
    out = []
    with open(data_file(path, "TSV file (label<TAB>text)"), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\\n")
            if not line.strip():
                continue
            label, tab, text = line.partition("\\t")
            if not tab:
                if labelled:
                    raise DataError(f"{path}:{n}: no tab between label and text",
                                    hint="write each example as label<TAB>text")
                label, text = "", line
            out.append(Example(str(n), {"text": text}, label or None, f"{path}:{n}"))
    return out


class __CLASS__Task:
    """Text classification from `label<TAB>text` files; metric `accuracy`."""

    Config: ClassVar[type[TaskConfig]] = __CLASS__TaskConfig
    metrics: tuple[str, ...] = ("accuracy", "examples")

    def __init__(self, config: __CLASS__TaskConfig, variant: str | None) -> None:
        self.config = config
        self.labels: list[str] = list(config.labels or [])

    def load(self, data: TaskData) -> Splits:
        return Splits.read(data, read_tsv)

    def fit(self, train: list[Example]) -> None:
        if not self.labels:
            self.labels = sorted({str(e.label) for e in train})
        self.check("train", train)

    def check(self, name: str, examples: list[Example]) -> None:
        for e in examples:
            if e.label is not None and e.label not in self.labels:
                raise DataError(f"{e.source}: label {e.label!r} is not one of {self.labels}",
                                hint="fix the label, or list every label in `labels`")

    def state(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def restore(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])

    def target(self) -> dict[str, Any]:
        return {"cls": {"labels": max(2, len(self.labels))}}

    def head_sources(self) -> dict[str, str]:
        return {}  # the head starts fresh

    def encode(self, examples: list[Example], tokenizer: Any, max_length: int,
               with_labels: bool = True) -> list[dict[str, torch.Tensor]]:
        ids = tokenizer.special_ids
        head = [ids["cls"]] if "cls" in ids else []
        tail = [ids["sep"]] if "sep" in ids else []
        room = max_length - len(head) - len(tail)
        rows = []
        for e, toks in zip(examples, tokenizer.encode_batch([e.fields["text"] for e in examples])):
            row = {"input_ids": torch.tensor([*head, *toks[:room], *tail], dtype=torch.long)}
            if with_labels and e.label is not None:
                row["labels"] = torch.tensor(self.labels.index(e.label))
            rows.append(row)
        return rows

    def batch_keys(self, rows: list[dict[str, torch.Tensor]], tokenizer: Any
                   ) -> tuple[BatchKey, ...]:
        pad = int(tokenizer.special_ids.get("pad", 0))
        keys = [BatchKey("input_ids", "int64", ("T",), pad=pad, mask="attention_mask",
                         unit="tokens", high=tokenizer.vocab_size)]
        if rows and "labels" in rows[0]:
            keys.append(BatchKey("labels", "int64", (), pad=IGNORE))
        return tuple(keys)

    def decode(self, output: torch.Tensor, examples: list[Example]) -> list[dict[str, Any]]:
        best = output[:, : len(self.labels)].argmax(-1).tolist()  # output (B, C) logits
        return [{"id": e.guid, "label": self.labels[k]} for e, k in zip(examples, best)]

    def evaluate(self, predictions: list[dict[str, Any]], examples: list[Example]
                 ) -> dict[str, float]:
        right = sum(p["label"] == e.label for p, e in zip(predictions, examples))
        return {"accuracy": right / max(len(examples), 1), "examples": float(len(examples))}
'''

CONVERTER = '''"""`__NAME__` (converter): Hugging Face checkpoints laid out as BERT's whose
config.json says `model_type: "__NAME__"` (an in-house fork of BERT registered with
`transformers.AutoConfig.register`).

The key map and config translation are tp-text's `bert` converter's: only the names differ, so
`tp convert --from hf` picks this converter by the model_type, and `--to hf` writes it back.
A converter for a new architecture lists its own rules (`tpcli.convert`: Rename, Transpose,
Concat, Tied, ...) in the same `Converter`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tpcli.convert import Converter
from tp_text.convert_bert import CONVERTER as BERT

MODEL_TYPE = "__NAME__"


def config_to_recipe(hf: dict[str, Any]) -> dict[str, Any]:
    """HF config.json (as a dict) -> the recipe's model section: BERT's reading of it."""
    return BERT.config_to_recipe({**hf, "model_type": "bert"})


def recipe_to_config(spec: Any, vocab_size: int) -> dict[str, Any]:
    """A validated model section -> HF config.json, under this model_type."""
    assert BERT.recipe_to_config is not None
    return {**BERT.recipe_to_config(spec, vocab_size), "model_type": MODEL_TYPE}


CONVERTER: Converter = dataclasses.replace(
    BERT, name=MODEL_TYPE, config_to_recipe=config_to_recipe, recipe_to_config=recipe_to_config)
'''
