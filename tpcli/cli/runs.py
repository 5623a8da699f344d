"""`tp runs`: the runs under a folder (state, steps, loss, best metric, size); `compare` their
recipes and results; `plot` their curves. Reads run folders only (tpcli.runview): no torch.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup


class _FolderOrCommand(TyperGroup):
    """`tp runs [FOLDER]` beside `tp runs compare ...`: a group's positional argument would
    swallow the subcommand's name, so the first word that names no subcommand becomes the
    (hidden) --folder option instead."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        args = list(args)
        for i, word in enumerate(args):
            if word == "--" or not word.startswith("-"):
                if word != "--" and word not in self.commands:
                    args[i:i + 1] = ["--folder", word]
                break
        return super().parse_args(ctx, args)


app = typer.Typer(name="runs", invoke_without_command=True, add_completion=False,
                  cls=_FolderOrCommand, subcommand_metavar="[FOLDER] | COMMAND [ARGS]...",
                  help="The training runs under a folder: recipe, steps, last loss, best "
                  "metric, state (finished, running, stopped with the command that resumes it, "
                  "failed with why) and size; `tp runs compare RUN...` and `tp runs plot "
                  "RUN...`.")
JSON_HELP = "print JSON on one line instead of a table"


@app.callback()
def runs(ctx: typer.Context,
         folder: Optional[Path] = typer.Option(None, "--folder", hidden=True,
                                               help="where to look (default: here)"),
         as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List the runs at or under FOLDER (default: here): pre-training and fine-tuning run
    folders, their checkpoints not searched."""
    if ctx.invoked_subcommand is not None:
        return
    import sys

    from tpcli.cli.render import print_json, print_table
    from tpcli.runview.read import find_runs, fmt_number, human_size, read_run

    root = folder or Path(".")
    found = [read_run(p) for p in find_runs(root)]
    if as_json:
        print_json([r.to_json() for r in found])
        return
    if not found:
        print(f"no runs under {root} (a run folder holds recipe.yaml with run.json or init.json)",
              file=sys.stderr)
        return
    rows = []
    for r in found:
        steps = f"{r.steps or 0}/{r.total if r.total is not None else '?'}"
        best = f"{r.best['metric']} {fmt_number(r.best['value'])}" if r.best else None
        rows.append((r.path, r.recipe, steps, fmt_number(r.loss) if r.loss is not None else None,
                     best, r.detail, human_size(r.size)))
    print_table(f"tp runs {root}", ("run", "recipe", "steps", "loss", "best", "state", "size"),
                rows)


@app.command("compare")
def compare(
    refs: list[str] = typer.Argument(..., metavar="RUN...",
                                     help="run folders (a folder of runs means each of them)"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """The recipe keys that differ between the runs (dotted, e.g. pretrain.lr; keys equal in
    all are left out), then their results side by side: steps, final loss, best metric."""
    from tpcli.cli.render import on_terminal, print_json, print_table
    from tpcli.errors import TpError
    from tpcli.runview.compare import compare as diff
    from tpcli.runview.read import expand, fmt_number, read_run

    found = [read_run(p) for p in expand(refs)]
    if len(found) < 2:
        raise TpError(f"only one run to compare ({found[0].path})",
                      hint="give two or more runs, or a folder that holds several")
    got = diff(found)
    if as_json:
        print_json(got)
        return
    cols = ("key", *got["runs"])

    def cell(v: object) -> str:
        return fmt_number(v) if isinstance(v, float) else ("(absent)" if v is None else str(v))

    if got["differ"]:
        print_table("recipe keys that differ", cols,
                    [(k, *(cell(v) for v in vs)) for k, vs in got["differ"].items()])
    else:
        print("the runs' recipes are the same")
    if not on_terminal():
        print()
    print_table("results", cols, [(k, *("-" if v is None else cell(v) for v in vs))
                                  for k, vs in got["results"].items()])


@app.command("plot")
def plot(
    refs: list[str] = typer.Argument(..., metavar="RUN...",
                                     help="run folders (a folder of runs means each of them)"),
    metric: str = typer.Option("loss", "--metric", help="what to plot (a key of "
                               "metrics.jsonl: loss, lr, mlm.acc, eval.dev.accuracy, ...)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write a PNG here (matplotlib); "
                                       "without it the plot is drawn in the terminal"),
    smoothing: float = typer.Option(0.6, "--smooth", help="TensorBoard's smoothing weight in "
                                    "[0, 1): a debiased exponential moving average; 0: raw"),
    size: str = typer.Option("1000x600", "--size", help="the PNG's WIDTHxHEIGHT in pixels"),
    height: int = typer.Option(14, "--height", min=4, max=200,
                               help="rows of the terminal plot"),
) -> None:
    """Plot METRIC against the step for each run, on one plot: to a PNG with --out, else in
    the terminal (width from the terminal). Smoothing is TensorBoard's debiased EMA."""
    from tpcli.cli.render import on_terminal
    from tpcli.runview import plot as p
    from tpcli.runview.read import curves, expand

    runs = [(str(path), curves(path)) for path in expand(refs)]
    named = p.pick(runs, metric)
    p.smooth([], smoothing)  # checks the weight before anything is drawn
    if out is not None:
        written = p.save_png(named, metric, smoothing, out, p.parse_size(size))
        print(f"wrote {written} ({metric} of {len(named)} run{'s' * (len(named) > 1)})")
        return
    color = on_terminal()
    width = shutil.get_terminal_size((100, 24)).columns
    lines = p.render(p.terminal_plot(named, metric, smoothing, width, height, braille=color),
                     color)
    if color:
        from rich.console import Console

        console = Console(soft_wrap=True, highlight=False)
        for line in lines:
            console.print(line)
    else:
        print("\n".join(lines))


def register(root: typer.Typer) -> None:
    root.add_typer(app)
