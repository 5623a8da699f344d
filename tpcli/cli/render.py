"""Printing helpers shared by the commands: what lands on stdout.

Three forms, one source: on a terminal a rich table (wrapped to the window); piped, plain aligned
lines that are never wrapped or cut (`| grep`, `| tail -1` and `| cut` see whole rows); with
`--json`, one JSON document on one line (`| jq`). Progress and logs go to stderr, so stdout only
ever carries the result.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

EMPTY = "-"  # an empty cell in plain lines, so every row splits into the same columns


def on_terminal() -> bool:
    """True when stdout is a terminal (rich formatting); False when piped or redirected."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def jsonable(value: Any) -> Any:
    """`value` with paths as strings, tuples as lists and NaN/inf as null: strict JSON that
    every parser reads (json.dumps would write a bare NaN)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def print_json(value: Any) -> None:
    """One JSON document on one line of stdout."""
    sys.stdout.write(json.dumps(jsonable(value), ensure_ascii=False) + "\n")
    sys.stdout.flush()


def plain_lines(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A header of upper-case column names and one line per row, columns aligned by two spaces;
    nothing is cut and the last column runs to the end of the line."""
    cells = [[str(c).upper() for c in columns]]
    cells += [[EMPTY if v is None or str(v) == "" else " ".join(str(v).split()) for v in row]
              for row in rows]
    width = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip() for r in cells]


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on a terminal, plain aligned lines otherwise."""
    if not on_terminal():
        for line in plain_lines(columns, rows):
            print(line)
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:  # cells are text, not markup: `[CLS]` and `[bold]` print as they are
        table.add_row(*("" if v is None else escape(str(v)) for v in row))
    Console().print(table)


def print_line(text: str, markup: str | None = None) -> None:
    """One line of text: styled by rich (`markup`, rich markup for the same text) on a terminal,
    printed as it is when piped, so it is never wrapped."""
    if markup is not None and on_terminal():
        from rich.console import Console

        Console(soft_wrap=True).print(markup, highlight=False)  # the terminal wraps, not rich
    else:
        print(text, flush=True)


def print_summary(verb: str, summary: Any, as_json: bool = False) -> None:
    """The last line of a verb: `VERB done: k=v, ...` (or the whole summary as one JSON object)."""
    if not isinstance(summary, dict):
        return
    if as_json:
        print_json(summary)
        return
    items = ", ".join(f"{k}={_fmt(v)}" for k, v in summary.items() if not isinstance(v, (dict, list)))
    print_line(f"{verb} done: {items}", f"[bold green]{verb} done[/]: {_escape(items)}")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
