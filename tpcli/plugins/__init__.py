"""The plugin manager: entry-point group ``tp``, the core's default plugins, TP_LOAD_PLUGINS.

``TP_LOAD_PLUGINS=a,b`` loads exactly the entry points named ``a`` and ``b``;
``TP_LOAD_PLUGINS=`` (set but empty) loads none. The core's default plugins (the verb
implementations and loggers) always load. A plugin that fails to import is reported on stderr by
name and skipped; it never stops tp from running. Nor does a name that two plugins register:
each command warns about it in one line, and only using that name is an error (naming both).
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from tpcli.plugins import hookspecs
from tpcli.plugins.registry import Registry

GROUP = "tp"
CORE_PLUGINS = ("tpcli.plugins.defaults", "tpcli.train.loggers")
REGISTER_HOOKS = {
    "tp_register_modules": None,  # register(kind, name, cls)
    "tp_register_tokenizers": "tokenizer",  # register(name, cls)
    "tp_register_processors": "processor",
    "tp_register_tasks": "task",
    "tp_register_converters": "converter",
    "tp_register_zoo_sources": "zoo_source",
    "tp_register_commands": "command",
    "tp_register_loggers": "logger",
}


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    module: str
    hooks: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)  # "kind:name"
    error: str | None = None


@dataclass
class Plugins:
    pm: pluggy.PluginManager
    registry: Registry
    infos: dict[str, PluginInfo]
    recipe_dirs: list[str]
    zoo_dirs: list[str] = field(default_factory=list)

    @property
    def hook(self) -> Any:
        return self.pm.hook


def _selected(names: list[str]) -> set[str] | None:
    raw = os.environ.get("TP_LOAD_PLUGINS")
    if raw is None:
        return None
    chosen = {n.strip() for n in raw.split(",") if n.strip()}
    for unknown in sorted(chosen - set(names)):  # a typo would otherwise silently load nothing
        print(f"tp: warning: TP_LOAD_PLUGINS names {unknown!r}, which is not installed "
              f"(installed: {', '.join(sorted(names)) or 'none'})", file=sys.stderr)
    return chosen


def _load_entry_points(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> None:
    eps = list(entry_points(group=GROUP))
    chosen = _selected([ep.name for ep in eps])
    for ep in sorted(eps, key=lambda e: e.name):
        if chosen is not None and ep.name not in chosen:
            continue
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        info = PluginInfo(ep.name, dist, version, ep.value)
        infos[ep.name] = info
        try:
            obj = ep.load()
            pm.register(obj, name=ep.name)
        except Exception as e:  # a broken plugin must never brick tp
            info.error = f"{type(e).__name__}: {e}"
            print(
                f"tp: warning: plugin '{ep.name}' ({dist} {version}) failed to load and was "
                f"skipped: {info.error}",
                file=sys.stderr,
            )


def _fill_registry(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> Registry:
    registry = Registry()
    for hook_name, kind in REGISTER_HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            info = infos[impl.plugin_name]

            def register(*args: Any, _kind: str | None = kind, _info: PluginInfo = info) -> None:
                k, name, target = (_kind, *args) if _kind else args
                registry.add(k, name, target, _info.name, _info.distribution)
                _info.registered.append(f"{k}:{name}")

            try:
                impl.function(register=register)
            except Exception as e:  # a buggy hook or a malformed name must not brick tp either
                info.error = f"{hook_name}: {type(e).__name__}: {e}"
                print(f"tp: warning: plugin '{info.name}' ({info.distribution}) failed in "
                      f"{info.error}; what it registered before that is kept", file=sys.stderr)
    for clash in registry.clashes():
        # not fatal: `tp plugins` must run to show it, and commands that do not use the name
        # are unaffected; using it raises this same error
        print(f"tp: warning: {clash.message}; it cannot be used until one of them is removed "
              "(`tp plugins` shows the clash)", file=sys.stderr)
    return registry


def make_plugins(extra: list[Any] | None = None) -> Plugins:
    """Build a fresh plugin manager: core defaults, entry points, then `extra` plugin objects
    (tests register in-process plugins this way)."""
    import importlib

    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    for mod_name in CORE_PLUGINS:
        mod = importlib.import_module(mod_name)
        pm.register(mod, name=mod_name)
        infos[mod_name] = PluginInfo(mod_name, "tpcli", _core_version(), mod_name)
    _load_entry_points(pm, infos)
    for i, obj in enumerate(extra or []):
        name = getattr(obj, "__name__", f"extra-{i}")
        pm.register(obj, name=name)
        infos[name] = PluginInfo(name, "(in-process)", "", name)
    for name, info in infos.items():
        plugin = pm.get_plugin(name)
        if plugin is not None:
            info.hooks = sorted(
                h.name for h in pm.get_hookcallers(plugin) or [] if h.name.startswith("tp_")
            )
    registry = _fill_registry(pm, infos)
    recipe_dirs: list[str] = []
    pm.hook.tp_register_recipe_dirs(register=recipe_dirs.append)
    zoo_dirs: list[str] = []
    pm.hook.tp_register_zoo_cards(register=lambda path: zoo_dirs.append(str(path)))
    return Plugins(pm, registry, infos, recipe_dirs, zoo_dirs)


@functools.lru_cache(maxsize=1)
def get_plugins() -> Plugins:
    """The process-wide plugin set, loaded once."""
    return make_plugins()


def _core_version() -> str:
    from tpcli import __version__

    return __version__
