"""Task `text2text`: a target text for each source text (translation, summarisation, closed-book
QA) on an encoder-decoder model (T5, BART, any recipe with a decoder and an `lm` target).

Files: TSV with a header naming `source` and `target` columns (also `text_a` / `label`), or JSON
lines with those keys. Training is teacher-forced next-token prediction on the target, laid out
as the recipe's processor lays it out (`tpcli.downstream.generate.seq2seq_format`: T5 starts the decoder
with pad, BART with eos and wraps the source in bos ... eos); the model keeps its `lm` target.
Evaluation generates (greedy, or beam search with `num_beams`) and scores exact match,
corpus BLEU (sacreBLEU's defaults, as a fraction) and ROUGE-L (F-measure); `exact_match` selects
the best checkpoint unless `finetune.metric` says otherwise.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from tp_text.batch_keys import task_keys
from tpcli.errors import DataError, TpError
from tpcli.downstream.tasks import Example, Splits, TaskConfig, TaskData
from tp_text.records import records

SOURCE = ("source", "text_a", "input")
TARGET = ("target", "label", "output")


class Text2TextConfig(TaskConfig):
    max_target_length: int = Field(64, gt=1, description="target tokens kept for training")
    max_new_tokens: int = Field(64, gt=0, description="tokens generated for evaluation")
    num_beams: int = Field(1, ge=1, description="beam search width for evaluation (1: greedy)")


def read_pairs(path: str, need_target: bool) -> list[Example]:
    rows = records(path, "TSV (header: source, target) or JSONL file")
    out = []
    for n, row in rows:
        src = next((k for k in SOURCE if k in row), None)
        tgt = next((k for k in TARGET if k in row), None)
        if src is None or (need_target and tgt is None):
            raise DataError(f"{path}:{n}: needs a source and a target (have {', '.join(row)})",
                            hint=f"name the columns one of {', '.join(SOURCE)} and one of "
                            f"{', '.join(TARGET)}")
        out.append(Example(str(row.get("id", n)), {"source": str(row[src])},
                           None if tgt is None else str(row[tgt]), f"{path}:{n}"))
    return out


class Text2TextTask:
    """Generate a text from a text."""

    batch_keys = staticmethod(task_keys)  # text rows: keys by tp-text's naming convention

    Config: ClassVar[type[TaskConfig]] = Text2TextConfig
    metrics: tuple[str, ...] = ("exact_match", "bleu", "rouge_l")

    def __init__(self, config: Text2TextConfig, variant: str | None) -> None:
        self.config = config
        self.recipe: Any = None
        self.registry: Any = None  # the run's: its processor decides the layout

    def bind(self, recipe: Any, registry: Any) -> None:
        """The recipe decides the source/decoder layout; only encoder-decoder models qualify."""
        if recipe.model.decoder is None or not any(t.name == "lm" for t in recipe.model.targets):
            raise TpError("task text2text needs an encoder-decoder model with an `lm` target "
                          "(a decoder and tgt_embedding in the recipe)",
                          hint="fine-tune a t5-small, bart-base or seq2seq recipe")
        self.recipe, self.registry = recipe, registry

    def load(self, data: TaskData) -> Splits:
        return Splits.read(data, lambda path, labelled: read_pairs(path, need_target=labelled))

    def fit(self, train: list[Example]) -> None:
        """Nothing to learn from the targets."""

    def check(self, name: str, examples: list[Example]) -> None:
        """Any text is a valid target."""

    def state(self) -> dict[str, Any]:
        return {}

    def target(self) -> None:
        return None  # the model's own `lm` target

    def head_sources(self) -> dict[str, str]:
        return {}

    def _layout(self, tokenizer: Any) -> tuple[int, list[int], list[int], int]:
        from tpcli.downstream.prompting import seq2seq_format, special_token

        special = tokenizer.special_ids
        start, before, after = seq2seq_format(self.recipe, special, self.registry)
        eos = special_token(special, "eos", "sep")
        if start is None or eos is None:
            raise TpError("the tokenizer has no decoder start or end token for text2text",
                          hint="use a vocabulary with eos (or sep) and bos/pad")
        return start, before, after, eos

    def encode(self, examples: list[Example], tokenizer: Any, max_length: int,
               with_labels: bool = True) -> list[dict[str, torch.Tensor]]:
        start, before, after, eos = self._layout(tokenizer)
        room = max_length - len(before) - len(after)
        sources = tokenizer.encode_batch([e.fields["source"] for e in examples])
        targets = tokenizer.encode_batch([e.label or "" for e in examples])
        rows = []
        for e, src, tgt in zip(examples, sources, targets):
            row = {"input_ids": torch.tensor(before + src[:room] + after, dtype=torch.long)}
            if with_labels and e.label is not None:
                tgt = tgt[: self.config.max_target_length - 1]
                row["tgt_input_ids"] = torch.tensor([start] + tgt, dtype=torch.long)
                row["lm_labels"] = torch.tensor(tgt + [eos], dtype=torch.long)
            rows.append(row)
        return rows

    def predict(self, model: torch.nn.Module, examples: list[Example],
                rows: list[dict[str, torch.Tensor]], tokenizer: Any, device: torch.device,
                batch_size: int, precision: str = "fp32") -> list[dict[str, Any]]:
        """Generated texts, batched (the evaluator calls this instead of `decode`)."""
        from tpcli.downstream.generate import GenerationConfig, generate
        from tpcli.downstream.prompting import pad_rows, special_token, until_eos

        start, _, _, eos = self._layout(tokenizer)
        pad = special_token(tokenizer.special_ids, "pad", "eos", "sep")
        config = GenerationConfig(max_new_tokens=self.config.max_new_tokens,
                                  num_beams=self.config.num_beams, eos_token_id=eos,
                                  pad_token_id=pad, decoder_start_token_id=start)
        out = []
        for first in range(0, len(rows), batch_size):
            chunk = [r["input_ids"].tolist() for r in rows[first:first + batch_size]]
            ids, mask = pad_rows(chunk, config.pad, left=False)
            seqs = generate(model, ids.to(device), mask.to(device), config)
            for e, seq in zip(examples[first:], seqs[:, 1:].tolist()):
                new = until_eos(seq, config.eos_ids)
                out.append({"id": e.guid, "prediction": tokenizer.decode(new)})
        return out

    def decode(self, output: torch.Tensor, examples: list[Example]) -> list[dict[str, Any]]:
        raise TpError("text2text predicts by generating", hint="use Text2TextTask.predict")

    def evaluate(self, predictions: list[dict[str, Any]], examples: list[Example]
                 ) -> dict[str, float]:
        from tpcli.metrics import corpus_bleu, exact_match, rouge_l

        hyps = [p["prediction"] for p in predictions]
        refs = [str(e.label) for e in examples]
        return {"exact_match": exact_match(hyps, refs), "bleu": corpus_bleu(hyps, refs) / 100,
                "rouge_l": rouge_l(hyps, refs)}
