"""`tp plugins`: list the loaded plugins (bare, as before); `tp plugins new NAME` writes a new
plugin distribution to start from (`tpcli.scaffold`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tpcli.cli.info import JSON_HELP

KIND_HELP = ("what to write a module of: embedding, encoder, target, task, tokenizer, processor "
             "or converter; repeat for several (default: encoder)")

app = typer.Typer(name="plugins", invoke_without_command=True, add_completion=False,
                  help="The loaded plugins: name, distribution, version, hooks, what each "
                  "registered; `tp plugins new NAME` writes a new plugin to start from.")


@app.callback()
def plugins(ctx: typer.Context,
            as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List loaded plugins: name, distribution, version, hooks, what each registered, and any
    name two of them register (a clash: that name cannot be used until one goes)."""
    if ctx.invoked_subcommand is not None:
        return
    from tpcli.cli.info import plugins as list_plugins

    list_plugins(as_json=as_json)


@app.command("new")
def new(
    name: str = typer.Argument(..., metavar="NAME",
                               help="the distribution name, e.g. my-encoder (package "
                               "tp_my_encoder)"),
    kind: Optional[list[str]] = typer.Option(None, "--kind", help=KIND_HELP),
    folder: Optional[Path] = typer.Option(None, "--dir",
                                          help="folder to create NAME in (default: here)"),
    module_name: Optional[str] = typer.Option(
        None, "--module-name", help="the registry name recipes write (default: NAME as a "
        "Python name, less a tp_ prefix)"),
) -> None:
    """Write a new plugin distribution into DIR/NAME: pyproject.toml with the `tp` entry point,
    one working module per kind with its Config, tests (tp's module contract included), an
    example recipe and a README (install, test, use, publish)."""
    from tpcli.scaffold import new_plugin

    got = new_plugin(name, list(kind or []), folder, module_name)
    made = ", ".join(f"{k} {n}" for k, n in got["modules"].items())
    print(f"wrote {got['dest']} ({len(got['files'])} files): plugin {got['plugin']}, "
          f"package {got['package']}, {made}\nnext: cd {got['dest']} && pip install -e . && "
          "pytest -q && tp modules")


def register(root: typer.Typer) -> None:
    root.add_typer(app)
