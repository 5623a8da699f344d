"""`tp preprocess` and `tp pretrain`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def preprocess(
    recipe: str = typer.Argument(..., help="recipe folder, recipe file, or built-in recipe name"),
    corpus: str = typer.Option(..., "--corpus", help="text corpus: a path or any fsspec URL"),
    out: Path = typer.Option(..., "--out", help="dataset folder to create"),
    overrides: Optional[list[str]] = typer.Argument(None, help="a.b.c=value recipe overrides"),
    workers: int = typer.Option(0, "--workers", help="tokenizer threads (0: all cores)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object"),
) -> None:
    """Tokenize a corpus into a memory-mapped dataset for a recipe."""
    from tpcli.cli.render import print_summary
    from tpcli.verbs import PreprocessRequest, preprocess as run

    summary = run(PreprocessRequest(recipe, corpus, out, list(overrides or []), workers))
    print_summary("preprocess", summary, as_json)


def pretrain(
    recipe: Optional[str] = typer.Argument(
        None, help="recipe folder, file or built-in name (omit with --resume)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="a.b.c=value recipe overrides"),
    data: Optional[Path] = typer.Option(None, "--data", help="dataset made by tp preprocess"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder to create"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="run folder to continue"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="live progress bar"),
    nproc: int = typer.Option(1, "--nproc", min=1,
                              help="processes on this machine: re-launches under torchrun"),
    loggers: Optional[list[str]] = typer.Option(
        None, "--logger", help="also log to this logger (repeatable; added to pretrain.loggers): "
        "tensorboard, wandb, ... (`tp modules logger`)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object"),
) -> None:
    """Pre-train a recipe's model; --resume continues a stopped or killed run.

    Under torchrun (or with --nproc N) every process runs this; rank 0 logs and prints."""
    import os

    from tpcli.cli.render import print_summary
    from tpcli.verbs import PretrainRequest, pretrain as run

    ovr = list(overrides or [])
    if recipe is not None and "=" in recipe:  # `tp pretrain --resume RUN a=b`
        ovr.insert(0, recipe)
        recipe = None
    summary = run(PretrainRequest(recipe, data, out, ovr, resume, progress, nproc=nproc,
                                  loggers=list(loggers or [])))
    from tpcli.train.launch import launched_rank

    # one summary: under plain torchrun rank 0's; with --nproc the launcher's, read back from
    # the finished run folder (the ranks print none)
    if os.environ.get("RANK", "0") == "0" and not launched_rank():
        print_summary("pretrain", summary, as_json)


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": True})(preprocess)
    app.command(context_settings={"allow_interspersed_args": True})(pretrain)
