"""`tp plugins`' listing, `tp modules` (and `tp recipes`' listing): what is installed, read
from the registry.

Each prints a rich table on a terminal, plain aligned lines when piped, and JSON with `--json`
(`tpcli.cli.render`). `tp modules` reads each module's summary and options from its source
(`tpcli.plugins.static_read`) rather than importing it, so listing them all imports no torch.
"""

from __future__ import annotations

from typing import Any, Optional

import typer

SECTION_KINDS = ("model", "pretrain", "finetune")  # option tables that are not modules
JSON_HELP = "print JSON on one line instead of a table"


def plugins(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List loaded plugins: name, distribution, version, hooks, what each registered, and any
    name two of them register (a clash: that name cannot be used until one goes)."""
    from tpcli.cli.render import print_json, print_line, print_table
    from tpcli.plugins import get_plugins

    ps = get_plugins()
    clashed = ps.registry.clashed()
    rows = []
    for info in ps.infos.values():
        mine = [f"{k}:{n}" for (k, n), es in clashed.items() if any(e.plugin == info.name for e in es)]
        rows.append({"plugin": info.name, "distribution": info.distribution,
                     "version": info.version, "module": info.module,
                     "hooks": [h.removeprefix("tp_") for h in info.hooks],
                     "registered": list(info.registered), "clashes": mine, "error": info.error})
    if as_json:
        print_json(rows)
        return
    print_table("tp plugins", ("plugin", "distribution", "version", "hooks", "registered"),
                [(r["plugin"], r["distribution"], r["version"], ", ".join(r["hooks"]),
                  _registered(r)) for r in rows])
    for clash in ps.registry.clashes():  # the diagnosis this command exists for
        print_line(f"clash: {clash.message}", f"[bold red]clash[/]: {_escape(clash.message)}")
        print_line(f"  hint: {clash.hint}")


def _registered(row: dict[str, Any]) -> str:
    if row["error"]:
        return f"FAILED: {row['error']}"
    names = [f"{n} (CLASH)" if n in row["clashes"] else n for n in row["registered"]]
    return ", ".join(names) or "-"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _option_rows(cls: Any) -> list[dict[str, Any]]:
    from tpcli.model.module import options_of

    rows = []
    for o in options_of(type("_", (), {"Config": cls})):
        required = isinstance(o["default"], str) and o["default"] == "(required)"
        rows.append({"name": o["name"], "type": o["type"], "required": required,
                     "default": None if required else o["default"],
                     "description": o["description"]})
    return rows


def _print_options(title: str, rows: list[dict[str, Any]]) -> None:
    from tpcli.cli.render import print_table

    print_table(title, ("option", "type", "default", "description"),
                [(o["name"], o["type"], "(required)" if o["required"] else repr(o["default"]),
                  o["description"]) for o in rows])


def modules(
    kind: Optional[str] = typer.Argument(None, help="embedding, encoder, decoder, target, "
                                         "pooling, tokenizer, processor, model or pretrain"),
    name: Optional[str] = typer.Argument(None, help="a module name: show its options"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List registered modules by component with their options, or one module's options."""
    from tpcli.cli.render import print_json, print_line
    from tpcli.recipes.config import FinetuneOptions, ModelOptions, PretrainOptions
    from tpcli.plugins import get_plugins

    if kind in SECTION_KINDS:
        cls = {"model": ModelOptions, "pretrain": PretrainOptions,
               "finetune": FinetuneOptions}[kind]
        rows = _option_rows(cls)
        print_json({"kind": kind, "options": rows}) if as_json else \
            _print_options(f"{kind} options", rows)
        return
    reg = get_plugins().registry
    _check_kind(kind)
    if kind and name:
        entry = reg.entry(kind, name)
        cfg = entry.config_cls
        rows = _option_rows(cfg) if cfg is not None else []
        if as_json:
            print_json({"kind": kind, "name": name, "plugin": entry.plugin,
                        "distribution": entry.distribution, "summary": entry.summary,
                        "options": rows})
            return
        head = f"{kind} {name} from plugin {entry.plugin} ({entry.distribution}): {entry.summary}"
        print_line(head, f"[bold]{kind} {name}[/] {_escape(head.split(' ', 2)[2])}")
        if cfg is not None:
            _print_options(f"{kind} {name} options", rows)
        return
    _list_modules(reg, kind, as_json)


def _check_kind(kind: str | None) -> None:
    from tpcli.errors import TpError
    from tpcli.plugins.registry import KINDS, closest

    valid = [k for k in KINDS if k not in ("converter", "command")]
    if kind is not None and kind not in valid:
        guess = closest(kind, valid + list(SECTION_KINDS))
        raise TpError(f"unknown kind {kind!r}" + (f"; did you mean {guess!r}?" if guess else ""),
                      hint=f"kinds: {', '.join(valid + list(SECTION_KINDS))}")


def _list_modules(reg: Any, kind: str | None, as_json: bool) -> None:
    """One row per module: kind, name, plugin, summary, options (`name=default`)."""
    from tpcli.cli.render import print_json, print_line, print_table
    from tpcli.errors import RegistryError

    rows: list[dict[str, Any]] = []
    for entry in reg.entries(kind):
        if entry.kind == "converter":
            continue
        row = {"kind": entry.kind, "name": entry.name, "plugin": entry.plugin,
               "distribution": entry.distribution, "summary": "", "options": [], "error": None}
        try:
            facts = entry.facts()
        except RegistryError as e:  # one broken module must not hide the others
            row["error"] = f"CANNOT IMPORT: {e.message}"
        else:
            row["summary"] = facts.summary
            row["options"] = [{"name": o.name, "required": o.required, "default": o.default}
                              for o in facts.options or []]
        rows.append(row)
    for (k, n), contenders in reg.clashed().items():
        if k != "converter" and kind in (None, k):
            rows.append({"kind": k, "name": n, "plugin": ", ".join(e.plugin for e in contenders),
                         "distribution": ", ".join(e.distribution for e in contenders),
                         "summary": "", "options": [],
                         "error": "CLASH: registered by more than one plugin (`tp plugins`)"})
    if as_json:
        print_json(rows)
    elif rows:
        # options last: the longest cell, so piped lines are not padded to its width
        print_table("tp modules", ("kind", "name", "plugin", "description", "options"),
                    [(r["kind"], r["name"], r["plugin"], r["error"] or r["summary"],
                      _options_text(r["options"])) for r in rows])
    else:
        print_line(f"no {kind or 'module'} is installed (plugins: `tp plugins`)")


def _options_text(options: list[dict[str, Any]]) -> str:
    return ", ".join(o["name"] if o["required"] else f"{o['name']}={o['default']!r}"
                     for o in options)


def recipe_rows() -> list[dict[str, str]]:
    """One row per built-in recipe: its modules by component (what `tp recipes` lists)."""
    from tpcli.recipes.config import read_recipe_file
    from tpcli.recipes import RECIPE_FILE, builtin_recipes

    rows = []
    for name, folder in builtin_recipes().items():
        model = read_recipe_file(folder / RECIPE_FILE).get("model") or {}
        rows.append({"name": name, "embedding": _names(model.get("embedding") or _streams(model)),
                     "encoder": _names(model.get("encoder")),
                     "decoder": _names(model.get("decoder")),
                     "target": _names(model.get("target")), "folder": str(folder)})
    return rows


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
    if isinstance(value, list):  # items are names or {name: options} / {name: ..., ...}
        return ", ".join(_names(v) if not isinstance(v, dict) or "name" in v
                         else ", ".join(map(str, v)) for v in value)
    return str(value)


def register(app: typer.Typer) -> None:
    app.command()(modules)  # `tp plugins` is a group of its own: tpcli.cli.plugins
