"""Fine-tuning's data and evaluation: encoded examples in memory, batched prediction through a
task, and the `Evaluator` the training loop calls (best checkpoint, early stopping)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from tpcli.data.batch import BatchKey
from tpcli.data.dataset import ExampleDataset
from tpcli.errors import TpError
from tpcli.downstream.tasks import Example


# ----------------------------------------------------------------------------- data


class MemoryDataset(ExampleDataset):
    """Encoded examples held in memory (fine-tuning sets are small), collated by the batch keys
    their task declares (`Task.batch_keys`)."""

    def __init__(self, rows: list[dict[str, torch.Tensor]], keys: tuple[BatchKey, ...],
                 seed: int) -> None:
        self.rows = rows
        self.keys = keys
        self.seed, self.epoch = int(seed), 0

    def batch_keys(self) -> tuple[BatchKey, ...]:
        return self.keys

    def __len__(self) -> int:
        return len(self.rows)

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        return self.rows[index]


def batches(dataset: MemoryDataset, size: int) -> Any:
    """(start, collated batch) over the dataset in order."""
    for start in range(0, len(dataset), size):
        yield start, dataset.collate([dataset.rows[i]
                                      for i in range(start, min(len(dataset), start + size))])


def predict(model: torch.nn.Module, task: Any, target: str, examples: list[Example],
            rows: list[dict[str, torch.Tensor]], tokenizer: Any, device: torch.device,
            batch_size: int, precision: str = "fp32") -> list[dict[str, Any]]:
    """The task's predictions for `examples` (encoded as `rows`), in order."""
    from tpcli.train.loop import _autocast, drop_full_masks

    own = getattr(task, "predict", None)
    if own is not None:  # a task that predicts by generating (text2text)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), _autocast(device, precision):
                return own(model, examples, rows, tokenizer, device, batch_size, precision)
        finally:
            model.train(was_training)
    data = MemoryDataset(rows, task.batch_keys(rows, tokenizer), 0)
    out: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start, host in batches(data, batch_size):
            batch = {k: v.to(device) for k, v in drop_full_masks(host)}
            with _autocast(device, precision):
                raw = model.predict(batch)[target]
            n = len(next(iter(host.values())))  # examples in this batch
            out += task.decode(raw.float().cpu(), examples[start:start + n])
    model.train(was_training)
    return out


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Atomically: a temp file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- evaluation


class Evaluator:
    """Scores every dev set every `every` steps (and at the last), keeps the best checkpoint by
    `metric` on the first dev set, and asks to stop after `patience` evaluations without a
    better score."""

    def __init__(self, task: Any, target: str, dev: dict[str, tuple[list[Example], list]],
                 tokenizer: Any, opts: Any, every: int, out: Path, device: torch.device,
                 log: Callable[[int, dict[str, float]], None]) -> None:
        self.task, self.target, self.dev, self.tokenizer = task, target, dev, tokenizer
        self.opts, self.every, self.out, self.device, self.log = opts, every, out, device, log
        self.metric = opts.metric or task.metrics[0]
        self.best: float | None = None
        self.best_step = 0
        self.bad = 0
        self.history: list[dict[str, Any]] = []

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.opts.steps

    def scores(self, model: torch.nn.Module) -> dict[str, dict[str, float]]:
        out = {}
        for name, (examples, rows) in self.dev.items():
            preds = predict(model, self.task, self.target, examples, rows, self.tokenizer,
                            self.device, self.opts.eval_batch_size, self.opts.precision)
            out[name] = self.task.evaluate(preds, examples)
        return out

    def __call__(self, model: torch.nn.Module, step: int, save: Callable[..., Path]) -> bool:
        scores = self.scores(model)
        first = next(iter(scores.values()))
        if self.metric not in first:
            raise TpError(f"finetune.metric={self.metric!r} is not a metric of this task",
                          hint=f"choose among {', '.join(first)}")
        value = first[self.metric]
        better = self.best is None or value > self.best
        record = {"step": step, **{f"{d}.{k}": v for d, s in scores.items() for k, v in s.items()}}
        self.history.append(record)
        with open(self.out / "eval.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.log(step, {f"eval.{k}": v for k, v in record.items() if k != "step"})
        if better:
            self.best, self.best_step, self.bad = value, step, 0
            save(step, "best")
            return False
        self.bad += 1
        return self.opts.patience is not None and self.bad >= self.opts.patience
