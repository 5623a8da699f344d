"""Training throughput of tp against Hugging Face `transformers`, and preprocessing throughput.

One run prints markdown tables: for BERT-base MLM (+NSP), GPT-2 small LM, a T5-small
span-corruption seq2seq step and BERT-base on real sentences padded to the longest of the
batch (`bert-padded`: the padding of fine-tuning and line-by-line pre-training, where tp's
feed-forward blocks skip the padded rows, `tpcli.layers.unpad`), in fp32 and bf16 autocast, the step time, tokens/s and MFU of tp
and of HF, and the ratio; then tp's preprocessing rate against the raw `tokenizers`
`encode_batch` rate on the same corpus, and preprocess's peak memory on a 10x larger corpus.

A step = zero_grad + forward (loss) + backward + AdamW step. tp and HF hold the same weights (HF's,
converted by the registered converter, `hf_to_tp`) and see the same batch (the cases:
`cases.py`). Their steps alternate
(tp first on even rounds, HF first on odd ones), so drift in the machine's speed hits both alike;
warm-up rounds are not timed, and the table shows the median step (min-max in brackets).

MFU = model FLOPs per step x steps/s / peak. The model FLOPs are counted by torch's
FlopCounterMode on one step of each implementation (forward + backward; attention included,
CPU flash-attention kernels too) and the smaller of the two counts is used for both rows: tp
projects only the masked / predicted rows onto the vocabulary, HF every row, and work that is
not needed is not model FLOPs. The peak is `tpcli.train.perf.measure_peak` (the training loop's:
the best of several matmul sizes in the precision, measured on this device), re-measured after
each case, the best of the run kept, and raised to any step that ran faster. Run::

    python benchmarks/throughput.py                          # everything (~8 min on 2 CPU cores)
    python benchmarks/throughput.py --models bert --precisions bf16 --steps 3
    python benchmarks/throughput.py --device cuda --steps 20 --compile
    python benchmarks/throughput.py --models bert --precisions fp32 --no-preprocess \\
        --tencentpretrain ~/TencentPretrain --profile   # + TencentPretrain's own BERT step

With `--tencentpretrain PATH` (a checkout of https://github.com/Tencent/TencentPretrain) the
BERT case gains a third implementation, TencentPretrain's own model and training step
(`tencentpretrain_bert`), timed in the same alternation; without it that row is skipped and the
output says how to get one. `--profile` adds a torch.profiler table per implementation and
precision (the top ops by self time of one step) after the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from cases import MODELS, Case, build_case  # noqa: E402
from tencentpretrain_bert import TPRE, TPRE_GET, tencentpretrain_checkout  # noqa: E402
from tp_process import (TP_IN_PROCESS_HELP, RemoteStep, TpProcess,  # noqa: E402
                        start_tp_process)
from tpcli.train.perf import flop_counter  # noqa: E402

PRECISIONS = ("fp32", "bf16")


# ----------------------------------------------------------------------------- one step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], is_hf: bool,
              precision: str, device: torch.device, compile_: bool) -> Callable[[], float]:
    try:  # the fastest AdamW this torch has for the device, the same for both
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    dtype = torch.bfloat16 if precision == "bf16" else None
    forward: Callable[..., Any] = torch.compile(model) if compile_ else model

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        ctx = (torch.autocast(device.type, dtype=dtype) if dtype is not None
               else contextlib.nullcontext())
        with ctx:
            loss = forward(**batch).loss if is_hf else forward(batch).loss
        loss.backward()
        opt.step()
        return float(loss.detach())  # a sync, the same for both

    return step


@dataclass
class Timing:
    impl: str
    times: list[float]
    flops: float  # counted FLOPs of one step
    loss: float

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def paired(other: Timing, tp: Timing) -> float:
    """The median over rounds of other / tp, each round's two steps timed back to back: drift
    in the machine's speed between rounds cancels (the rounds alternate which runs first)."""
    return statistics.median(o / t for o, t in zip(other.times, tp.times))


def measure(case: Case, precision: str, device: torch.device, steps: int, warmup: int,
            compile_: bool, profile: list[str] | None = None,
            tp_process: "TpProcess | None" = None) -> dict[str, Timing]:
    """Every implementation's step (tp, HF, then `case.others` that have one in `precision`),
    alternating; with `profile` (a list), one more step of each under torch.profiler, its
    table of the top ops by self CPU time appended to the list. With `tp_process`, tp's step
    runs there (its FLOPs and profile too)."""
    fns: dict[str, Callable[[], float]] = {
        "tp": (tp_process.step(precision, compile_) if tp_process is not None
               else make_step(case.tp, case.tp_batch, False, precision, device, compile_)),
        "HF": make_step(case.hf, case.hf_batch, True, precision, device, compile_),
    }
    for name, make in case.others.items():
        fn = make(precision, device)
        if fn is not None:
            fns[name] = fn
    flops: dict[str, float] = {}
    loss: dict[str, float] = {}
    for name, fn in fns.items():  # warm-up 1: FLOPs counted (and kernels chosen, caches filled)
        if isinstance(fn, RemoteStep):
            flops[name], loss[name] = fn.counted()
            continue
        counter = flop_counter()
        with counter:
            loss[name] = fn()
        flops[name] = float(counter.get_total_flops())
    for _ in range(max(warmup - 1, 0) + (2 if compile_ else 0)):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(steps):
        for name in (order if r % 2 == 0 else order[::-1]):
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    if profile is not None:
        for name, fn in fns.items():
            title = f"{case.name}, {precision}, {name}"
            profile.append(fn.profile(title) if isinstance(fn, RemoteStep)
                           else profile_table(fn, device, title))
    return {name: Timing(name, times[name], flops[name], loss[name]) for name in fns}


def profile_table(fn: Callable[[], float], device: torch.device, title: str,
                  rows: int = 25) -> str:
    """One step of `fn` under torch.profiler: the top `rows` ops by self CPU time (and self
    CUDA time on a GPU), as a markdown section with the table in a code block."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    sync(device)
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=48)
    return f"### Profile: {title} (one step, top {rows} ops by self time)\n\n```\n{table}```"


def prepare(case: Case, device: torch.device, hf: bool = True) -> None:
    """The models on `device` in training mode and the batches there: tp's as the training loop
    hands it over (an all-real mask dropped on the host); HF's unless `hf` is False."""
    from tpcli.train.loop import drop_full_masks

    case.tp.to(device).train()
    case.tp_batch = {k: v.to(device) for k, v in drop_full_masks(case.tp_batch)}
    if hf:
        case.hf.to(device).train()
        case.hf_batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                         for k, v in case.hf_batch.items()}


# ----------------------------------------------------------------------------- preprocessing


def preprocessing_section() -> list[str]:
    """tp preprocess against the raw `tokenizers` encode_batch rate at 1x and 10x a corpus, with
    peak memory: `benchmarks/preprocess_rate.py` (run it alone for more rounds or a profile)."""
    from preprocess_rate import preprocessing_section as section  # beside this script

    return section()


# ----------------------------------------------------------------------------- report


def machine(device: torch.device) -> str:
    import transformers

    if device.type == "cuda":
        what = f"GPU {torch.cuda.get_device_name(device)}"
    else:
        name = platform.processor() or "CPU"
        with contextlib.suppress(OSError):
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        what = f"CPU {name}, {os.cpu_count()} logical cores"
    return (f"{what}; torch {torch.__version__}, transformers {transformers.__version__}, "
            f"intra-op threads {torch.get_num_threads()}, python {platform.python_version()}")


def fmt_time(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=3, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds (the first counts FLOPs)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list of fp32, bf16")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--batch-scale", type=int, default=1,
                   help="multiply every batch size (bigger batches for a GPU)")
    p.add_argument("--layers", type=int, default=None,
                   help="layers of every stack (default: each model's own; fewer for a smoke run)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-preprocess", action="store_true", help="skip the preprocessing section")
    p.add_argument("--tencentpretrain", type=Path, default=None, metavar="PATH",
                   help="a TencentPretrain checkout: its own BERT becomes a third row of the "
                   f"BERT case (fp32); get one with `{TPRE_GET}`")
    p.add_argument("--profile", action="store_true",
                   help="after the timed steps, one step of each implementation under "
                   "torch.profiler: the top ops by self time, printed after the tables")
    p.add_argument("--tp-in-process", action="store_true", help=TP_IN_PROCESS_HELP)
    return p.parse_args(argv)


def run_training(args: argparse.Namespace, device: torch.device) -> Iterator[str]:
    from tpcli.train.perf import measure_peak

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    for p in precisions:
        if p not in PRECISIONS:
            raise SystemExit(f"unknown precision {p!r}; choose among {', '.join(PRECISIONS)}")
    def best_peak(p: str, old: float = 0.0) -> float:
        # the training loop's measurement (tpcli.train.perf), given 3 s instead of 1: another
        # process on the machine only ever lowers a try, so the best of the run is kept
        return max(old, measure_peak(device, p, budget_s=3.0).flops)

    if args.tencentpretrain is not None:  # before minutes of measuring, not after
        tencentpretrain_checkout(args.tencentpretrain)
    precisions, skipped = runnable(precisions, device)
    peaks = {p: best_peak(p) for p in precisions}
    rows: list[tuple[str, str, int, str, str, Timing, float, str | None]] = []
    header = ("| model | batch | precision | impl | step (median, min-max) | tokens/s | "
              "GFLOP/step | MFU | tp speed-up over this row: medians (paired) | loss |\n"
              "|---|---|---|---|---|---:|---:|---:|---:|---:|")
    notes: list[str] = list(skipped)
    profiles: list[str] | None = [] if args.profile else None
    for name in models:
        tpre = args.tencentpretrain if name == "bert" else None
        case = build_case(name, args.batch_scale, args.layers, tpre)
        prepare(case, device)
        own = start_tp_process(case, device, args.tp_in_process, notes)
        for precision in precisions:
            res = measure(case, precision, device, args.steps, args.warmup, args.compile,
                          profiles, own)
            model_flops = min(r.flops for r in res.values())
            # as in training: a step faster than the peak shows the peak was measured too low
            fastest = max(model_flops / r.median for r in res.values())
            peaks[precision] = max(best_peak(precision, peaks[precision]), fastest)
            tp = res["tp"].median
            for impl, r in res.items():
                rows.append((case.name, case.shape, case.tokens, precision, impl, r,
                             model_flops, None if impl == "tp" else
                             f"{r.median / tp:.2f}x ({paired(r, res['tp']):.2f}x)"))
            print(f"{case.name} {precision}: tp {fmt_time(tp)}, " + ", ".join(
                f"{impl} {fmt_time(r.median)} ({r.median / tp:.2f}x)" for impl, r in res.items()
                if impl != "tp"), file=sys.stderr, flush=True)
        notes.append(f"{case.name}: HF attention implementation "
                     f"`{getattr(case.hf.config, '_attn_implementation', '?')}`")
        notes += case.notes
        if name == "bert" and tpre is None:
            notes.append(f"no {TPRE} row: pass --tencentpretrain PATH, a checkout "
                         f"(`{TPRE_GET}`), to time its own BERT step too")
        if own is not None:
            own.close()
        del case
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # MFU over the best peak seen during the whole run (measured before and after each case)
    yield ("Measured matmul peak (best of the run): "
           + ", ".join(f"{p} {peaks[p] / 1e9:,.0f} GFLOP/s" for p in precisions))
    yield ""
    yield header
    for name, shape, tokens, precision, impl, r, model_flops, ratio in rows:
        mfu = model_flops / r.median / peaks[precision]
        yield (f"| {name} | {shape} | {precision} | {impl} | {fmt_time(r.median)} "
               f"({fmt_time(min(r.times))}-{fmt_time(max(r.times))}) | "
               f"{tokens / r.median:,.0f} | {r.flops / 1e9:,.0f} | {100 * mfu:.1f}% | "
               f"{ratio or ''} | {r.loss:.3f} |")
    yield ""
    yield "; ".join(notes) + "."
    for table in profiles or []:
        yield ""
        yield table


def runnable(precisions: list[str], device: torch.device) -> tuple[list[str], list[str]]:
    """`precisions` without those this CPU runs at under half of fp32's matmul rate (bf16 on
    a CPU without AVX512-BF16 or AMX: ~100x slower, hours for one table), and a note for each
    one left out, with both measured rates."""
    from tpcli.train.perf import slow_precision

    keep, notes = [], []
    for p in precisions:
        note = slow_precision(device, p)  # the training loop's check, on its cached peaks
        if note is None:
            keep.append(p)
            continue
        print(f"{p} skipped: {note}", file=sys.stderr, flush=True)
        rates = note.removeprefix("warning: ").split(":")[0]
        notes.append(f"{p} not timed: {rates}, no {p} matrix instructions")
    return keep, notes


def step_options(p: argparse.ArgumentParser, unit: str | None, quick: str) -> None:
    """The options of a step benchmark (s2t_step.py, clip_step.py, families.py): device, timed
    and warm-up steps, precisions, batch (`unit`s per step; none where `unit` is None), --quick
    (`quick` says what it shrinks), --compile, --threads."""
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per implementation (default 3; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds (the first counts FLOPs)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list of fp32, bf16")
    if unit is not None:
        p.add_argument("--batch", type=int, default=8, help=f"{unit} per step")
    p.add_argument("--quick", action="store_true", help=f"smoke run: {quick}")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--tp-in-process", action="store_true", help=TP_IN_PROCESS_HELP)


def time_case(case: Case, args: argparse.Namespace, device: torch.device
              ) -> list[tuple[str, dict[str, Timing]]]:
    """Both models and batches moved to `device` (`prepare`), tp's own process started where
    `tp pretrain` would set its process up differently (`TpProcess`), then each of --precisions
    timed (`measure`), a one-line result on stderr as each finishes."""
    prepare(case, device)
    rows = []
    wanted = [p.strip() for p in args.precisions.split(",") if p.strip()]
    for precision in wanted:
        if precision not in PRECISIONS:
            raise SystemExit(f"unknown precision {precision!r}; choose among "
                             f"{', '.join(PRECISIONS)}")
    wanted, skipped = runnable(wanted, device)
    case.notes.extend(skipped)
    own = start_tp_process(case, device, args.tp_in_process, case.notes)
    for precision in wanted:
        res = measure(case, precision, device, args.steps, args.warmup, args.compile,
                      tp_process=own)
        rows.append((precision, res))
        print(f"{precision}: tp {fmt_time(res['tp'].median)}, HF {fmt_time(res['HF'].median)}, "
              f"{res['HF'].median / res['tp'].median:.2f}x", file=sys.stderr, flush=True)
    if own is not None:
        own.close()
    return rows


def case_report(args: argparse.Namespace, device: torch.device, make: Callable[..., Case],
                *make_args: Any, rate: str, digits: int = 0) -> None:
    """Print the ratio table and notes of the case `make(*make_args)`, timed by `time_case`
    (tp's own process makes it again by the same call)."""
    case = make(*make_args)
    case.build = functools.partial(make, *make_args)
    for line in ratio_table(case, time_case(case, args, device), rate, digits=digits):
        print(line, flush=True)
    print("\nNotes: " + "; ".join(case.notes) + ".\n")


def ratio_table(case: Case, rows: list[tuple[str, dict[str, Timing]]], rate: str,
                digits: int = 0) -> Iterator[str]:
    """One row per precision: both step times (median, min-max), HF / tp (the goal: >= 1.2),
    tp's rate (`case.tokens` per second, named `rate`), FLOPs and both first-step losses."""
    yield ("| model | batch | precision | tp s/step (median, min-max) | HF s/step (median, "
           f"min-max) | HF/tp: medians (paired, bests) | tp {rate} | GFLOP/step | "
           "loss tp / HF |")
    yield "|---|---|---|---:|---:|---:|---:|---:|---:|"
    for precision, res in rows:
        tp, hf = res["tp"], res["HF"]
        yield (f"| {case.name} | {case.shape} | {precision} | {tp.median:.3f} "
               f"({min(tp.times):.3f}-{max(tp.times):.3f}) | {hf.median:.3f} "
               f"({min(hf.times):.3f}-{max(hf.times):.3f}) | {hf.median / tp.median:.2f}x "
               f"({paired(hf, tp):.2f}x, {min(hf.times) / min(tp.times):.2f}x) | "
               f"{case.tokens / tp.median:,.{digits}f} | "
               f"{tp.flops / 1e9:,.0f} | {tp.loss:.4f} / {hf.loss:.4f} |")


def start_report(args: argparse.Namespace, title: str) -> torch.device:
    """Threads and device from `args`, then the report's heading: the machine and how steps
    are timed (shared by the step benchmarks)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    print(f"# {title}\n\nMachine: {machine(device)}\n", flush=True)
    print(f"Steps: {args.steps} timed per implementation after {args.warmup} warm-up round(s), "
          f"the implementations alternating; forward + backward + AdamW (fused; TencentPretrain: "
          f"its own); bf16 = autocast"
          f"{'; torch.compile' if args.compile else ''}.\n", flush=True)
    return device


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    device = start_report(args, "tp vs Hugging Face throughput")
    for line in run_training(args, device):
        print(line, flush=True)
    if not args.no_preprocess:
        print()
        for line in preprocessing_section():
            print(line, flush=True)
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
