"""The core's logger plugin: metrics.jsonl always, and a rich progress bar or plain lines.

Loggers are plugins on the observer hooks; this one is registered by default (see
`tpcli.plugins.CORE_PLUGINS`). Another logger (TensorBoard, W&B) implements the same hooks.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tpcli.plugins.hookspecs import hookimpl


class _State:
    jsonl: Any = None
    progress: Any = None
    task: Any = None
    console: Any = None
    steps: int = 0
    start: int = 0
    t0: float = 0.0
    first: tuple[int, float] | None = None  # (step, time) after the segment's first step


def _eta(step: int) -> float | None:
    """Seconds left, from the pace since the first step: start-up and the first step's warm-up
    (allocation, compilation) are not counted as training pace."""
    if _s.first is None or step <= _s.first[0]:
        return None
    first_step, t_first = _s.first
    return (time.perf_counter() - t_first) / (step - first_step) * (_s.steps - step)


_s = _State()


def _fmt_metrics(metrics: dict[str, float]) -> str:
    rates = [k for k in metrics if k.endswith("_per_s") and k != "steps_per_s"]  # tokens, patches
    keys = (["loss"] + sorted(k for k in metrics if "." in k and not k.endswith(".count"))
            + ["lr", *rates, "mfu"])
    parts = []
    for k in keys:
        if k not in metrics:
            continue
        v = metrics[k]
        if k in rates:
            parts.append(f"{v:,.0f} {k.removesuffix('_per_s')}/s")
        elif k == "mfu":
            parts.append(f"mfu {100 * v:.1f}%")
        elif k == "lr":
            parts.append(f"lr {v:.2e}")
        else:
            parts.append(f"{k} {v:.4f}")
    return " | ".join(parts)


@hookimpl
def tp_on_train_start(run: dict[str, Any]) -> None:
    from rich.console import Console

    from tpcli.train import run_folder

    out = Path(run["out"])
    if run["start_step"]:
        run_folder.mark_resume(out, run["start_step"])
    _s.jsonl = open(out / run_folder.METRICS, "a", encoding="utf-8")
    _s.steps, _s.start, _s.t0 = run["steps"], run["start_step"], time.perf_counter()
    _s.first = None
    _s.console = Console(stderr=True, soft_wrap=True)  # one line per log step, never wrapped
    verb = "resuming at step" if run["start_step"] else "training from step"
    _s.console.print(f"tp: {verb} {run['start_step']} to {run['steps']}, "
                     f"{run['params']:,} parameters, run folder {out}", highlight=False)
    if run.get("progress", True) and _s.console.is_terminal:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        _s.progress = Progress(TextColumn("[bold]pretrain"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                               TextColumn("eta"), TimeRemainingColumn(), console=_s.console,
                               transient=False)
        _s.task = _s.progress.add_task("pretrain", total=run["steps"],
                                       completed=run["start_step"], info="")
        _s.progress.start()


@hookimpl
def tp_on_log(step: int, metrics: dict[str, float]) -> None:
    if _s.jsonl is not None:
        _s.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        _s.jsonl.flush()
    line = _fmt_metrics(metrics)
    if _s.progress is not None:
        _s.progress.update(_s.task, completed=step, info=f"loss {metrics['loss']:.4f}")
        _s.progress.console.print(f"step {step:>6} | {line}", highlight=False)
    elif _s.console is not None:
        eta = _eta(step)
        tail = f" | eta {eta:,.0f}s" if eta is not None else ""
        _s.console.print(f"step {step:>6}/{_s.steps} | {line}{tail}", highlight=False)


@hookimpl
def tp_on_step(step: int, seconds: float) -> None:
    if _s.first is None:
        _s.first = (step, time.perf_counter())
        if _s.progress is None and _s.console is not None:  # no terminal: say it started
            _s.console.print(f"step {step:>6}/{_s.steps} | first step done {seconds:.1f}s "
                             "after start-up", highlight=False)
    if _s.progress is not None:
        _s.progress.update(_s.task, completed=step)


@hookimpl
def tp_on_checkpoint(step: int, path: str) -> None:
    if _s.console is not None:
        _s.console.print(f"checkpoint step {step}: {path}", highlight=False, style="dim")


@hookimpl
def tp_on_train_end(summary: dict[str, Any]) -> None:
    if _s.progress is not None:
        _s.progress.stop()
    if _s.jsonl is not None:
        _s.jsonl.close()
    _s.jsonl = _s.progress = _s.task = None
    sys.stderr.flush()
