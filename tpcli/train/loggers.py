"""The core's logger plugin: metrics.jsonl always, and a rich progress bar or plain lines.

Loggers are plugins on the observer hooks; this one is registered by default (see
`tpcli.plugins.CORE_PLUGINS`). The loggers a recipe chooses (`pretrain.loggers`, `--logger`:
TensorBoard, W&B) are registered by name (`tp_register_loggers`) and attached to the same hooks
for one training segment by `attached_loggers`, each behind a guard: the first error a logger
raises is one warning line and the logger is off; training never stops for a logger.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import time
from collections.abc import Iterator
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
        if "loss" in metrics:  # fine-tuning's evaluations log eval.* metrics only
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


# ----------------------------------------------------------------- the loggers a recipe chooses


def check_loggers(names: list[str], registry: Any) -> list[Any]:
    """The logger classes `names` choose, each able to run: an unknown name is the registry's
    "did you mean" error, a logger whose package is missing raises its own `check()` error
    (naming the install command). Called before the run folder is written."""
    classes = []
    for name in names:
        cls = registry.get("logger", name)
        check = getattr(cls, "check", None)
        if check is not None:
            check()
        classes.append(cls)
    return classes


def with_loggers(recipe: Any, section: str, given: list[str], plugins: Any) -> Any:
    """The recipe with the command line's `--logger` names added to `<section>.loggers` (so the
    run folder's recipe keeps them and `--resume` logs to them too), every chosen logger checked
    by `check_loggers`."""
    from tpcli.recipes.config import build_recipe

    have = list(getattr(recipe, section).loggers)
    merged = list(dict.fromkeys([*have, *given]))
    if merged != have:
        raw = copy.deepcopy(recipe.raw)
        raw[section] = {**(raw.get(section) or {}), "loggers": merged}
        recipe = build_recipe(raw, plugins.registry, name=recipe.name, path=recipe.path)
    check_loggers(merged, plugins.registry)
    return recipe


class _Attached:
    """One chosen logger on the observer hooks for one segment. Its first exception is reported
    in one line and switches it off: a full disk or a service gone never stops training."""

    def __init__(self, name: str, logger: Any) -> None:
        self.name, self.logger, self.failed = name, logger, False

    def call(self, method: str, **kwargs: Any) -> None:
        fn = getattr(self.logger, method, None)
        if fn is None or self.failed:
            return
        try:
            fn(**kwargs)
        except Exception as e:  # noqa: BLE001 - any failure of a logger is reported, not raised
            self.failed = True
            print(f"tp: warning: logger {self.name!r} failed ({type(e).__name__}: {e}) and is "
                  "off for the rest of this run; training goes on", file=sys.stderr, flush=True)
            with contextlib.suppress(Exception):
                self.logger.close()

    @hookimpl
    def tp_on_train_start(self, run: dict[str, Any]) -> None:
        self.call("tp_on_train_start", run=run)

    @hookimpl
    def tp_on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.call("tp_on_log", step=step, metrics=metrics)

    @hookimpl
    def tp_on_step(self, step: int, seconds: float) -> None:
        self.call("tp_on_step", step=step, seconds=seconds)

    @hookimpl
    def tp_on_checkpoint(self, step: int, path: str) -> None:
        self.call("tp_on_checkpoint", step=step, path=path)

    @hookimpl
    def tp_on_train_end(self, summary: dict[str, Any]) -> None:
        self.call("tp_on_train_end", summary=summary)


@contextlib.contextmanager
def attached_loggers(names: list[str], plugins: Any, active: bool = True) -> Iterator[None]:
    """The chosen loggers on `plugins`' observer hooks while the block runs, each closed at its
    end however it ends. `active`: only rank 0 writes (the other ranks attach none)."""
    attached: list[_Attached] = []
    if active:
        for name, cls in zip(names, check_loggers(names, plugins.registry)):
            guard = _Attached(name, None)
            try:
                guard.logger = cls()
            except Exception as e:  # noqa: BLE001 - as a failure mid-run: reported, not raised
                print(f"tp: warning: logger {name!r} could not start ({type(e).__name__}: {e}); "
                      "training goes on without it", file=sys.stderr, flush=True)
                continue
            plugins.pm.register(guard, name=f"tp-logger-{name}-{id(guard)}")
            attached.append(guard)
    try:
        yield
    finally:
        for guard in attached:
            plugins.pm.unregister(guard)
            guard.call("close")
