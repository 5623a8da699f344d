"""`tp finetune` and `tp infer`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from tpcli.cli.render import on_terminal, print_line, print_table


def finetune(
    recipe: Optional[str] = typer.Argument(
        None, help="recipe folder, file or built-in name (omit: the one saved with --init)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="a.b.c=value recipe overrides"),
    task: Optional[str] = typer.Option(None, "--task",
                                       help="the task: classification, glue/sst2, ..."),
    init: Optional[str] = typer.Option(
        None, "--init", help="pre-trained checkpoint or run, or zoo:NAME (pulled on first use)"),
    train: Optional[str] = typer.Option(None, "--train", help="training file"),
    dev: Optional[list[str]] = typer.Option(None, "--dev", help="dev file (repeatable)"),
    test: Optional[str] = typer.Option(None, "--test", help="file to predict with the best"),
    data: Optional[str] = typer.Option(None, "--data",
                                       help="the task's data folder or source (GLUE: a folder "
                                       "or `hub`)"),
    out: Path = typer.Option(..., "--out", help="run folder to create"),
    seeds: int = typer.Option(1, "--seeds", min=1, help="runs with seeds seed..seed+N-1"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="live progress bar"),
    loggers: Optional[list[str]] = typer.Option(
        None, "--logger", help="also log to this logger (repeatable; added to finetune.loggers): "
        "tensorboard, wandb, ... (`tp modules logger`)"),
    as_json: bool = typer.Option(False, "--json", help="print the results as one JSON object"),
) -> None:
    """Fine-tune a pre-trained model on a downstream task; prints the dev metrics."""
    from tpcli.downstream.finetune import FinetuneRequest
    from tpcli.downstream.tasks import TaskData
    from tpcli.verbs import finetune as run

    ovr = list(overrides or [])
    if recipe is not None and "=" in recipe:  # `tp finetune --init RUN a=b`
        ovr.insert(0, recipe)
        recipe = None
    result = run(FinetuneRequest(recipe, task, out, TaskData(train, list(dev or []), test, data),
                                 init, ovr, seeds, progress, loggers=list(loggers or [])))
    if as_json:
        from tpcli.cli.render import print_json

        print_json(result)
    else:
        print_results(result)


def print_results(result: dict[str, Any]) -> None:
    """The dev metrics: one row per dev set, mean ± std over seeds when there are several;
    for a task's `/all`, one table per variant and the summary row (the paper's layout). A rich
    table on a terminal, plain lines (never wrapped) when piped."""
    if "tasks" in result:
        for sub in result["tasks"].values():
            print_results(sub)
        columns, row = result["table"]["columns"], result["table"]["row"]
        if columns:
            _table(f"{result['task']} (dev)", columns,
                   [["-" if v is None else f"{v:.1f}" for v in row]])
        return
    many = len(result["seeds"]) > 1
    metrics = sorted({m for d in result["dev"].values() for m in d})
    rows = [[name, *(f"{100 * scores[m]['mean']:.2f}"
                     + (f" ± {100 * scores[m]['std']:.2f}" if many else "")
                     if m in scores else "-" for m in metrics)]
            for name, scores in result["dev"].items()]
    _table(f"{result['task']}: best checkpoint by {result['metric']}"
           + (f", {len(result['seeds'])} seeds" if many else ""), ["dev set", *metrics], rows)
    print_line(f"results: {Path(result['out']) / 'results.json'}")


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A titled table; piped, the title is a line of its own before the plain rows (glue/all
    prints one table per variant: the title says which)."""
    if not on_terminal():
        print_line(title)
    print_table(title, columns, rows)


def infer(
    checkpoint: str = typer.Argument(..., help="fine-tuned run folder or checkpoint (or a "
                                     "pre-trained one with --task)"),
    overrides: Optional[list[str]] = typer.Argument(
        None, help="the task's options as finetune.task.OPTION=VALUE"),
    task: Optional[str] = typer.Option(
        None, "--task", help="run this task instead of the checkpoint's finetune.task (one that "
        "needs no fine-tuning: zero_shot, retrieval, embed on a CLIP)"),
    input: str = typer.Option(..., "--input", help="examples in the task's file format"),
    out: Path = typer.Option(..., "--out", help="predictions (JSONL) to write (embed: .npy "
                             "too)"),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="examples per batch"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object"),
) -> None:
    """Predict with a fine-tuned checkpoint (or run a task that needs no fine-tuning, --task):
    one JSON line per input example."""
    from tpcli.cli.render import print_summary
    from tpcli.downstream.finetune import InferRequest
    from tpcli.verbs import infer as run

    result = run(InferRequest(checkpoint, input, out, batch_size, task=task,
                              overrides=list(overrides or [])))
    metrics = result.pop("metrics", None)
    print_summary("infer", result | ({f"{k}": v for k, v in metrics.items()} if metrics else {}),
                  as_json)


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": True})(finetune)
    app.command(context_settings={"allow_interspersed_args": True})(infer)
