"""Small printing helpers shared by the verbs."""

from __future__ import annotations

from typing import Any


def print_summary(verb: str, summary: Any) -> None:
    from rich.console import Console

    console = Console()
    if not isinstance(summary, dict):
        return
    items = ", ".join(f"{k}={_fmt(v)}" for k, v in summary.items() if not isinstance(v, (dict, list)))
    console.print(f"[bold green]{verb} done[/]: {items}", highlight=False)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
