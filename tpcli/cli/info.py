"""`tp plugins`, `tp modules`, `tp recipes`: what is installed, read from the registry."""

from __future__ import annotations

from typing import Any, Optional

import typer

SECTION_KINDS = ("model", "pretrain", "finetune")  # option tables that are not modules


def plugins() -> None:
    """List loaded plugins: name, distribution, version, hooks, and what each registered."""
    from rich.console import Console
    from rich.table import Table

    from tpcli.plugins import get_plugins

    ps = get_plugins()
    table = Table(title="tp plugins")
    for col in ("plugin", "distribution", "version", "hooks", "registered"):
        table.add_column(col, overflow="fold")
    for info in ps.infos.values():
        registered = ", ".join(info.registered) or ("-" if not info.error else "")
        if info.error:
            registered = f"FAILED: {info.error}"
        hooks = ", ".join(h.removeprefix("tp_") for h in info.hooks)
        table.add_row(info.name, info.distribution, info.version, hooks, registered)
    Console().print(table)


def _option_table(title: str, cls: Any) -> Any:
    from rich.table import Table

    from tpcli.module import options_of

    table = Table(title=title)
    for col in ("option", "type", "default", "description"):
        table.add_column(col, overflow="fold")
    for o in options_of(type("_", (), {"Config": cls})):
        table.add_row(o["name"], o["type"], repr(o["default"]), o["description"])
    return table


def modules(
    kind: Optional[str] = typer.Argument(None, help="embedding, encoder, decoder, target, "
                                         "pooling, tokenizer, processor, model or pretrain"),
    name: Optional[str] = typer.Argument(None, help="a module name: show its options"),
) -> None:
    """List registered modules by component with their options, or one module's options."""
    from rich.console import Console
    from rich.table import Table

    from tpcli.config import FinetuneOptions, ModelOptions, PretrainOptions
    from tpcli.errors import RegistryError, TpError
    from tpcli.plugins import get_plugins
    from tpcli.registry import KINDS, closest

    console = Console()
    if kind in SECTION_KINDS:
        cls = {"model": ModelOptions, "pretrain": PretrainOptions,
               "finetune": FinetuneOptions}[kind]
        console.print(_option_table(f"{kind} options", cls))
        return
    reg = get_plugins().registry
    valid = [k for k in KINDS if k != "converter"]
    if kind is not None and kind not in valid:
        guess = closest(kind, valid + list(SECTION_KINDS))
        raise TpError(f"unknown kind {kind!r}" + (f"; did you mean {guess!r}?" if guess else ""),
                      hint=f"kinds: {', '.join(valid + list(SECTION_KINDS))}")
    if kind and name:
        entry = reg.entry(kind, name)
        console.print(f"[bold]{kind} {name}[/] from plugin {entry.plugin} ({entry.distribution}):"
                      f" {entry.summary}", highlight=False)
        if entry.config_cls is not None:
            console.print(_option_table(f"{kind} {name} options", entry.config_cls))
        return
    table = Table(title="tp modules")
    for col in ("kind", "name", "plugin", "options", "description"):
        table.add_column(col, overflow="fold")
    for entry in reg.entries(kind):
        if entry.kind == "converter":
            continue
        try:
            cfg = entry.config_cls
            summary = entry.summary
        except RegistryError as e:  # one broken module must not hide the others
            table.add_row(entry.kind, entry.name, entry.plugin, "", f"CANNOT IMPORT: {e.message}")
            continue
        opts = ", ".join(n if f.is_required() else f"{n}={f.default!r}"
                         for n, f in (cfg.model_fields.items() if cfg else []))
        table.add_row(entry.kind, entry.name, entry.plugin, opts, summary)
    if table.row_count:
        console.print(table)
    else:
        console.print(f"no {kind or 'module'} is installed (plugins: `tp plugins`)")


def recipes() -> None:
    """List the built-in recipes (usable by name: `tp pretrain NAME`)."""
    from rich.console import Console
    from rich.table import Table

    from tpcli.config import read_recipe_file
    from tpcli.recipes import RECIPE_FILE, builtin_recipes

    table = Table(title="tp recipes")
    for col in ("name", "embedding", "encoder", "decoder", "target", "folder"):
        table.add_column(col, overflow="fold")
    for name, folder in builtin_recipes().items():
        model = read_recipe_file(folder / RECIPE_FILE).get("model") or {}
        table.add_row(name, _names(model.get("embedding") or _streams(model)),
                      _names(model.get("encoder")), _names(model.get("decoder")),
                      _names(model.get("target")), str(folder))
    Console().print(table)


def _streams(model: dict[str, Any]) -> str:
    parts = [f"{s}: {_names((model.get(s) or {}).get('embedding'))}"
             for s in ("stream_0", "stream_1") if s in model]
    return "; ".join(parts)


def _names(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return str(value.get("name", ", ".join(value)))
    if isinstance(value, list):
        return ", ".join(v if isinstance(v, str) else str(v.get("name", v)) for v in value)
    return str(value)


def register(app: typer.Typer) -> None:
    app.command()(plugins)
    app.command()(modules)
    app.command()(recipes)
