"""tp's training step with freed host memory kept (as `tp pretrain` runs on a CPU) against the
same step under glibc's default malloc: two processes of their own, alternating.

Each process builds the same tp model and batch (`cases.build_case`: the same seeds) and
runs its step when told to; only one runs at a time. One keeps freed memory
(`tpcli.train.host_memory.keep_freed_memory`, what the training loop calls before its first
step on a CPU), the other leaves glibc's malloc as it is, where buffers above its mmap threshold
(at most 32 MiB: BERT's 94 MB word-embedding gradient) are mapped, zero-filled page by page and
unmapped every step. The table gives both step times (median, min-max), the median of the
per-round ratios (default / kept, the rounds alternating which goes first), and the minor page
faults and system CPU time per step of each process. Run::

    python benchmarks/host_memory.py                       # BERT-base 8x128, 10 rounds
    python benchmarks/host_memory.py --models bert,gpt2 --rounds 6
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from cases import MODELS, build_case  # noqa: E402
from throughput import fmt_time, machine  # noqa: E402
from tp_process import TpProcess  # noqa: E402


def compare(name: str, rounds: int, layers: int | None) -> str:
    """One table row: `name`'s fp32 step under the default malloc and with memory kept."""
    case = build_case(name, 1, layers)
    device = torch.device("cpu")
    procs = {"default": TpProcess(case, device, keep=False), "kept": TpProcess(case, device)}
    try:
        steps = {k: p.step("fp32", False) for k, p in procs.items()}
        for step in steps.values():  # warm-up: kernels chosen, the kept heap grown
            step()
            step()
        times: dict[str, list[float]] = {k: [] for k in steps}
        start = {k: s.usage() for k, s in steps.items()}
        for r in range(rounds):
            for k in (("default", "kept") if r % 2 == 0 else ("kept", "default")):
                t = time.perf_counter()
                steps[k]()
                times[k].append(time.perf_counter() - t)
        end = {k: s.usage() for k, s in steps.items()}
    finally:
        for p in procs.values():
            p.close()
    faults = {k: (end[k][0] - start[k][0]) / rounds for k in steps}
    system = {k: (end[k][1] - start[k][1]) / rounds for k in steps}
    pairs = statistics.median(d / k for d, k in zip(times["default"], times["kept"]))

    def cell(k: str) -> str:
        v = times[k]
        return f"{fmt_time(statistics.median(v))} ({fmt_time(min(v))}-{fmt_time(max(v))})"

    return (f"| {case.name} | {case.shape} | {cell('default')} | {cell('kept')} | {pairs:.2f}x | "
            f"{faults['default']:,.0f} / {faults['kept']:,.0f} | "
            f"{system['default']:.2f} / {system['kept']:.2f} s |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="bert", help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--rounds", type=int, default=10, help="timed steps of each process")
    p.add_argument("--layers", type=int, default=None, help="fewer layers (a smoke run)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("# tp's step: glibc's default malloc against freed host memory kept\n")
    print(f"Machine: {machine(torch.device('cpu'))}\n")
    print(f"fp32; {args.rounds} timed steps of each process after 2 untimed ones, alternating "
          "(each round's first changes).\n")
    print("| model | batch | default malloc: step (median, min-max) | memory kept | default / "
          "kept (median of rounds) | page faults per step (default / kept) | system CPU per "
          "step |")
    print("|---|---|---|---|---:|---:|---:|")
    for name in (m.strip() for m in args.models.split(",") if m.strip()):
        print(compare(name, args.rounds, args.layers), flush=True)


if __name__ == "__main__":
    main()
