"""The plain `transformers` + PyTorch side of benchmarks/finetune_fidelity.py, and what both
sides share: the settings (one set of hyperparameters, also written as tp overrides) and the
result record.

The loop is what a user writes without a toolkit: BertForSequenceClassification, AdamW as
`Trainer` builds it (fused, no decay on 1-D parameters), transformers' linear warm-up + decay,
clipping, evaluation each epoch keeping the best accuracy; batches in tp's sampler order so both
see the same examples at each step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

Row = tuple[str, str]  # (label, text)


@dataclass
class Settings:
    """The hyperparameters both implementations share."""

    epochs: float
    batch_size: int
    lr: float
    max_length: int
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    eval_batch_size: int = 64
    parity: bool = False  # dropout off in both, and HF on tp's warm-up formula

    def steps(self, n_train: int) -> tuple[int, int]:
        """(total optimizer steps, steps per epoch), as tp counts them."""
        per_epoch = max(1, math.ceil(n_train / self.batch_size))
        return max(1, math.ceil(self.epochs * per_epoch)), per_epoch

    def overrides(self, seed: int) -> list[str]:
        return [f"finetune.seed={seed}", f"finetune.epochs={self.epochs}",
                f"finetune.batch_size={self.batch_size}", f"finetune.lr={self.lr}",
                f"finetune.max_length={self.max_length}",
                f"finetune.warmup_ratio={self.warmup_ratio}",
                f"finetune.weight_decay={self.weight_decay}",
                f"finetune.betas=[{self.betas[0]},{self.betas[1]}]",
                f"finetune.adam_eps={self.adam_eps}", f"finetune.grad_clip={self.grad_clip}",
                f"finetune.eval_batch_size={self.eval_batch_size}", "finetune.schedule=linear",
                "finetune.precision=fp32", "finetune.device=cpu", "finetune.log_every=1",
                *(["model.dropout=0", "model.encoder.attention_dropout=0"] if self.parity
                  else [])]


@dataclass
class Result:
    impl: str
    seed: int
    accuracy: float  # at the best epoch
    macro_f1: float
    best_step: int
    step_times: list[float]  # training steps counted for steps/s
    wall: float
    losses: list[float]  # the training loss of every step
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_per_s(self) -> float:
        return len(self.step_times) / sum(self.step_times) if self.step_times else float("nan")


# ----------------------------------------------------------------------------- HF


def tp_order(n: int, seed: int, batch: int, steps: int) -> list[list[int]]:
    """The example indices of each step, as `tpcli.train.loop.Sampler` draws them: epoch e is
    randperm(n, seed * 1_000_003 + e), and a batch runs on into the next epoch."""
    order: list[int] = []
    epoch = 0
    while len(order) < batch * steps:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order += torch.randperm(n, generator=g).tolist()
        epoch += 1
    return [order[i * batch:(i + 1) * batch] for i in range(steps)]


def hf_batch(ids: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """Padded to the longest row, with attention mask and zero token types."""
    width = max(len(r) for r in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(ids), width, dtype=torch.long)  # (B, T)
    for i, r in enumerate(ids):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": mask,
            "token_type_ids": torch.zeros_like(input_ids)}


def hf_optimizer(model: torch.nn.Module, s: Settings) -> torch.optim.Optimizer:
    """AdamW as `Trainer` builds it (fused on torch >= 2.8), no decay on 1-D parameters."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=s.lr, betas=s.betas, eps=s.adam_eps, fused=True)


def hf_evaluate(model: torch.nn.Module, ids: list[list[int]], gold: list[int], pad: int,
                batch: int) -> dict[str, float]:
    from tpcli.metrics import accuracy, f1

    model.eval()
    preds: list[int] = []
    with torch.no_grad():
        for i in range(0, len(ids), batch):
            logits = model(**hf_batch(ids[i:i + batch], pad)).logits  # (B, C)
            preds += logits.argmax(-1).tolist()
    model.train()
    return {"accuracy": accuracy(preds, gold), "macro_f1": f1(preds, gold, average="macro")}


def hf_model(hf_dir: Path, n_labels: int, head: dict[str, torch.Tensor] | None,
             parity: bool) -> torch.nn.Module:
    """BertForSequenceClassification on the checkpoint (body and pooler), its classifier
    `head` when given (else drawn from the current seed); dropout off under `parity`."""
    import transformers

    off = ({"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "classifier_dropout": 0.0} if parity else {})
    model = transformers.BertForSequenceClassification.from_pretrained(
        str(hf_dir), num_labels=n_labels, **off)
    if head is not None:
        with torch.no_grad():
            model.classifier.weight.copy_(head["weight"])
            model.classifier.bias.copy_(head["bias"])
    return model.train()


def hf_schedule(opt: torch.optim.Optimizer, s: Settings, steps: int) -> Any:
    """transformers' linear warm-up + decay; under `parity` tp's formula (its warm-up starts at
    lr / (warm-up + 1) where transformers' starts at 0: one step apart)."""
    import transformers

    if s.parity:
        from tpcli.recipes.options import FinetuneOptions
        from tpcli.train.optim import make_scheduler

        return make_scheduler(opt, FinetuneOptions(steps=steps, warmup_ratio=s.warmup_ratio))
    return transformers.get_linear_schedule_with_warmup(
        opt, int(round(s.warmup_ratio * steps)), steps)


def run_hf(hf_dir: Path, data: dict[str, Any], s: Settings, seed: int,
           head: dict[str, torch.Tensor] | None) -> Result:
    """A plain PyTorch loop around BertForSequenceClassification."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = hf_model(hf_dir, len(data["labels"]), head, s.parity)
    steps, per_epoch = s.steps(len(data["train_ids"]))
    opt = hf_optimizer(model, s)
    sched = hf_schedule(opt, s, steps)
    labels = torch.tensor(data["train_y"])
    pad = data["pad"]
    best: dict[str, float] | None = None
    best_step, times, losses = 0, [], []
    torch.manual_seed(seed)  # the dropout stream of this seed
    for step, rows in enumerate(tp_order(len(labels), seed, s.batch_size, steps), 1):
        t0 = time.perf_counter()
        batch = hf_batch([data["train_ids"][i] for i in rows], pad)
        loss = model(**batch, labels=labels[rows]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        times.append(time.perf_counter() - t0)
        if step % per_epoch == 0 or step == steps:
            scores = hf_evaluate(model, data["dev_ids"], data["dev_y"], pad, s.eval_batch_size)
            if best is None or scores["accuracy"] > best["accuracy"]:
                best, best_step = scores, step
    assert best is not None  # the last step always evaluates
    return Result("HF", seed, best["accuracy"], best["macro_f1"], best_step, times[1:],
                  time.perf_counter() - start, losses)


def hf_data(hf_dir: Path, train: list[Row], dev: list[Row], max_length: int) -> dict[str, Any]:
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(str(hf_dir))
    labels = sorted({label for label, _ in train})  # tp's label list: sorted train labels
    index = {label: k for k, label in enumerate(labels)}

    def ids(rows: list[Row]) -> list[list[int]]:
        return tok([t for _, t in rows], truncation=True, max_length=max_length)["input_ids"]

    return {"labels": labels, "pad": tok.pad_token_id,
            "train_ids": ids(train), "train_y": [index[label] for label, _ in train],
            "dev_ids": ids(dev), "dev_y": [index[label] for label, _ in dev]}
