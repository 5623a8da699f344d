"""`tp recipes`: list the built-in recipes; `show` one as it will run; `cp` one to edit."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(name="recipes", invoke_without_command=True, add_completion=False,
                  help="The built-in recipes (usable by name: `tp pretrain NAME`); `tp recipes "
                  "show RECIPE` prints one as it will run, `tp recipes cp NAME DIR` copies one "
                  "to edit.")
JSON_HELP = "print JSON on one line instead of a table"


@app.callback()
def recipes(ctx: typer.Context,
            as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List the built-in recipes (usable by name: `tp pretrain NAME`)."""
    if ctx.invoked_subcommand is not None:
        return
    from tpcli.cli.info import recipe_rows
    from tpcli.cli.render import print_json, print_table

    rows = recipe_rows()
    if as_json:
        print_json([{k: (None if v == "-" else v) for k, v in r.items()} for r in rows])
        return
    cols = ("name", "embedding", "encoder", "decoder", "target", "folder")
    print_table("tp recipes", cols, [tuple(r[c] for c in cols) for r in rows])


@app.command("show")
def show(
    recipe: str = typer.Argument(..., metavar="RECIPE",
                                 help="recipe folder, file or built-in name"),
    overrides: Optional[list[str]] = typer.Argument(None, help="a.b.c=value recipe overrides"),
    as_json: bool = typer.Option(False, "--json", help="print JSON on one line instead of YAML"),
) -> None:
    """Print RECIPE as it will run: validated, overrides applied, every default filled in, the
    files it reads by absolute path, and its model's parameter count. To edit and run a recipe,
    copy it with `tp recipes cp`."""
    import yaml

    from tpcli.cli.render import print_json
    from tpcli.plugins import get_plugins
    from tpcli.recipes.resolved import show as resolve

    got = resolve(recipe, list(overrides or []), get_plugins())
    if as_json:
        print_json(got)
        return
    print(f"# {got['name']}: {got['source']}, as it will run (every default filled in)")
    print(f"# parameters: {got['parameters']:,}")
    print(yaml.safe_dump(got["recipe"], sort_keys=False, allow_unicode=True), end="")


@app.command("cp")
def cp(
    name: str = typer.Argument(..., metavar="NAME", help="a built-in recipe (`tp recipes`)"),
    dest: Path = typer.Argument(..., metavar="DIR", help="a new folder to copy it into"),
) -> None:
    """Copy the built-in recipe NAME (recipe.yaml, README.md) into the new folder DIR to edit;
    files it names relative to its folder (a tokenizer's) are rewritten as absolute paths, so
    `tp pretrain DIR` runs the copy as it was."""
    from tpcli.plugins import get_plugins
    from tpcli.recipes.resolved import copy_recipe

    got = copy_recipe(name, dest, get_plugins())
    print(f"copied recipe {got['name']} to {got['dest']} ({', '.join(got['files'])}); edit "
          f"{Path(got['dest']) / 'recipe.yaml'}, then: tp pretrain {got['dest']}")


def register(root: typer.Typer) -> None:
    root.add_typer(app)
