"""Every model family's training step, tp against Hugging Face, in one run and one table.

Issue 18's goal for the families is a ratio per family and precision: HF step time / tp step
time >= 1.1 in fp32 and >= 1.3 in bf16 autocast. Each family's own benchmark prints its
details (profiles, memory, padding tables); this one times them all in the same run, on the
same machine state, and prints one summary row per family with the goal met or not:

    bert  BERT-base MLM+NSP, 8x128              (throughput.py)
    gpt2  GPT-2 small LM, 4x512                 (throughput.py)
    t5    T5-small span corruption, 8x(512->114) (throughput.py)
    vit   ViT-B/16 classification, 8 images      (vit_step.py)
    beit  BEiT-B/16 masked image modelling       (vit_step.py --models beit)
    clip  CLIP ViT-B/16 contrastive, 8 pairs     (clip_step.py)
    vilt  ViLT-B/32 masked language modelling    (vilt_step.py)
    s2t   S2T-small speech recognition, 8 utterances (s2t_step.py)

The steps are those benchmarks' own (the same weights in both, HF's converted by tp's
converter; zero_grad + forward + backward + fused AdamW; tp and HF alternating; tp's step in a
process of its own set up as `tp pretrain` sets itself up). The first losses agree where the
model has no dropout; BERT, GPT-2 and T5 train with dropout 0.1, drawn differently by the two.
bf16 is left out, with the reason, on a CPU without bf16 matrix instructions (there it runs in
software at a few GFLOP/s). Run::

    python benchmarks/families.py --precisions fp32 --steps 5    # ~12 min on 2 cores
    python benchmarks/families.py --quick                         # 2 layers, 1 step each
    python benchmarks/families.py --families vit,beit --steps 8
    python benchmarks/families.py --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import functools
import gc
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import Case, build_case  # noqa: E402
from throughput import (Timing, paired, start_report, step_options,  # noqa: E402
                        time_case)

GOALS = {"fp32": 1.1, "bf16": 1.3}  # HF / tp, the floor per precision


def _vision(name: str) -> Callable[[bool], Case]:
    def make(quick: bool) -> Case:
        import vit_step
        return vit_step.CASES[name](8, 2 if quick else None)
    return make


def _text(name: str) -> Callable[[bool], Case]:
    return lambda quick: build_case(name, 1, 2 if quick else None)


def _clip(quick: bool) -> Case:
    import clip_step
    return clip_step.clip_case(8, quick)


def _vilt(quick: bool) -> Case:
    import vilt_step
    return vilt_step.vilt_case(8, quick)


def _s2t(quick: bool) -> Case:
    import s2t_step
    return s2t_step.s2t_case(8, quick)


FAMILIES: dict[str, Callable[[bool], Case]] = {
    "bert": _text("bert"), "gpt2": _text("gpt2"), "t5": _text("t5"),
    "vit": _vision("vit"), "beit": _vision("beit"), "clip": _clip, "vilt": _vilt, "s2t": _s2t,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default=",".join(FAMILIES),
                   help=f"comma list of {', '.join(FAMILIES)}")
    step_options(p, None, "2 layers a stack")
    args = p.parse_args(argv)
    args.steps = args.steps or (1 if args.quick else 3)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    for f in args.families:
        if f not in FAMILIES:
            raise SystemExit(f"unknown family {f!r}; choose among {', '.join(FAMILIES)}")
    return args


def make_case(family: str, quick: bool) -> Case:
    """The family's case (module-level, so that tp's own process can make it again)."""
    return FAMILIES[family](quick)


def summary(results: list[tuple[str, str, str, list[tuple[str, dict[str, Timing]]]]],
            precisions: list[str]) -> Iterator[str]:
    """One row per family: each precision's HF / tp (medians; paired) against its goal, and
    the first step's losses (the two compute the same thing)."""
    head = " | ".join(f"{p}: HF/tp (paired), goal >= {GOALS[p]}x" for p in precisions)
    yield f"| family | model | batch | {head} | tp s/step | first loss tp / HF |"
    yield "|---|---|---|" + "---:|" * len(precisions) + "---:|---:|"
    for family, name, shape, rows in results:
        by = dict(rows)
        cells, steps, losses = [], [], []
        for p in precisions:
            res = by.get(p)
            if res is None:
                cells.append("not timed")
                continue
            tp, hf = res["tp"], res["HF"]
            ratio = hf.median / tp.median
            mark = "met" if ratio >= GOALS[p] else "NOT met"
            cells.append(f"{ratio:.2f}x ({paired(hf, tp):.2f}x) {mark}")
            steps.append(f"{p} {tp.median:.2f}")
            losses.append(f"{tp.loss:.4f} / {hf.loss:.4f}")
        yield (f"| {family} | {name} | {shape} | {' | '.join(cells)} | "
               f"{'; '.join(steps) or '-'} | {'; '.join(losses) or '-'} |")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    device = start_report(args, "Every family's training step: tp vs Hugging Face")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    results = []
    notes: list[str] = []
    for family in args.families:
        print(f"{family} ...", file=sys.stderr, flush=True)
        case = make_case(family, args.quick)
        if args.quick and "layers" not in case.name:
            case.name += " (2 layers a stack)"
        case.build = functools.partial(make_case, family, args.quick)
        rows = time_case(case, args, device)
        notes.extend(n for n in case.notes if n.startswith(("bf16", "fp32")) and n not in notes)
        results.append((family, case.name, case.shape, rows))
        del case  # both models go before the next family's are built
        gc.collect()
    for line in summary(results, [p for p in precisions if p in GOALS]):
        print(line, flush=True)
    print()
    if notes:
        print("Notes: " + "; ".join(notes) + ".\n")
    print(f"(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
