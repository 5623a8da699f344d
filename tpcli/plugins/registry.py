"""name -> (kind, class, Config, plugin): the one source of names in tp.

The registry is filled by the plugins' registration hooks (see `tpcli.plugins.hookspecs`) and never by
tp's own code, so built-in and third-party modules are found the same way.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any

from tpcli.errors import RegistryError, TpError

MODULE_KINDS = ("embedding", "encoder", "decoder", "target", "pooling")
KINDS = MODULE_KINDS + ("tokenizer", "processor", "converter", "task", "zoo_source", "command",
                       "logger")

# What a user runs to see the valid names of each kind.
LIST_COMMAND = {k: f"tp modules {k}" for k in MODULE_KINDS} | {
    "tokenizer": "tp modules tokenizer",
    "processor": "tp modules processor",
    "converter": "tp plugins",
    "task": "tp modules task",
    "zoo_source": "tp plugins",
    "command": "tp --help",
    "logger": "tp modules logger",
}


@dataclass
class Entry:
    kind: str
    name: str
    target: Any  # a class/object, or a lazy "pkg.mod:Attr" string
    plugin: str
    distribution: str
    _resolved: Any = field(default=None, repr=False)

    def load(self) -> Any:
        """The registered object, importing it if it was registered lazily."""
        if self._resolved is None:
            if isinstance(self.target, str):
                mod_name, _, attr = self.target.partition(":")
                try:
                    obj: Any = importlib.import_module(mod_name)
                    for part in attr.split(".") if attr else []:
                        obj = getattr(obj, part)
                except (ImportError, AttributeError) as e:
                    raise RegistryError(
                        f"{self.kind} '{self.name}' from plugin '{self.plugin}' "
                        f"({self.distribution}) cannot be imported from '{self.target}': {e}",
                        hint=f"reinstall {self.distribution}, or leave the plugin out with "
                        "TP_LOAD_PLUGINS",
                    ) from e
                self._resolved = obj
            else:
                self._resolved = self.target
        return self._resolved

    @property
    def config_cls(self) -> Any:
        return getattr(self.load(), "Config", None)

    @property
    def summary(self) -> str:
        doc = (self.load().__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""

    def facts(self) -> Any:
        """Summary and options (`tpcli.plugins.static_read.ClassFacts`) for a listing: read from the
        source of a lazily registered class without importing it (a listing of every module
        must not import torch), from the class itself otherwise."""
        from tpcli.plugins.static_read import facts_of, read_class

        if isinstance(self.target, str) and self._resolved is None:
            found = read_class(self.target)
            if found is not None:
                return found
        return facts_of(self.load())


class Registry:
    """All registered names, by kind.

    A name registered by two plugins is a clash: it is kept out of `entries()` and `entry()`
    raises an error naming both plugins, but the registry still loads, so `tp plugins` can show
    the clash and every command that does not use that name still runs."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        # (kind, name) -> every entry that claims it, in registration order
        self._clashes: dict[tuple[str, str], list[Entry]] = {}

    def add(self, kind: str, name: str, target: Any, plugin: str, distribution: str) -> None:
        if kind not in self._entries:
            raise RegistryError(
                f"plugin '{plugin}' ({distribution}) registered {name!r} under unknown kind "
                f"{kind!r}; kinds are: {', '.join(KINDS)}"
            )
        if not isinstance(name, str) or not name or name != name.strip():
            raise RegistryError(f"plugin '{plugin}' ({distribution}) registered a bad name {name!r}")
        entry = Entry(kind, name, target, plugin, distribution)
        old = self._entries[kind].get(name)
        if old is not None:
            self._clashes.setdefault((kind, name), [old]).append(entry)
            return
        self._entries[kind][name] = entry

    def clashed(self) -> dict[tuple[str, str], list[Entry]]:
        """(kind, name) -> the entries of every plugin that registered it, for names registered
        more than once."""
        return {key: list(self._clashes[key]) for key in sorted(self._clashes)}

    def clashes(self) -> list[RegistryError]:
        """One error per name registered more than once, each naming every plugin involved."""
        return [self._clash_error(kind, name) for kind, name in sorted(self._clashes)]

    def _clash_error(self, kind: str, name: str) -> RegistryError:
        who = [f"plugin '{e.plugin}' ({e.distribution})" for e in self._clashes[(kind, name)]]
        times = "twice" if len(who) == 2 else f"{len(who)} times"
        return RegistryError(
            f"{kind} '{name}' is registered {times}: by {', by '.join(who[:-1])} and by {who[-1]}",
            hint="uninstall one of the distributions, or choose which plugins load with "
            "TP_LOAD_PLUGINS=name1,name2",
        )

    def names(self, kind: str) -> list[str]:
        """Every name of `kind`, clashed ones included (so using one says why it cannot be used
        rather than that it is unknown)."""
        return sorted(self._entries[kind])

    def entries(self, kind: str | None = None) -> list[Entry]:
        """The usable entries: a clashed name has no entry until one of its plugins goes."""
        kinds = [kind] if kind else list(KINDS)
        return [e for k in kinds for n, e in sorted(self._entries[k].items())
                if (k, n) not in self._clashes]

    def has(self, kind: str, name: str) -> bool:
        return name in self._entries[kind]

    def entry(self, kind: str, name: str) -> Entry:
        if (kind, name) in self._clashes:
            raise self._clash_error(kind, name)
        try:
            return self._entries[kind][name]
        except KeyError:
            raise TpError(unknown_name_message(kind, name, self.names(kind))) from None

    def get(self, kind: str, name: str) -> Any:
        return self.entry(kind, name).load()


def closest(name: str, choices: list[str]) -> str | None:
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_name_message(kind: str, name: Any, choices: list[str]) -> str:
    """`unknown embedding 'wrod'; did you mean 'word'? (installed: ...; list them: tp modules ...)`"""
    msg = f"unknown {kind} {name!r}"
    guess = closest(str(name), choices)
    if guess:
        msg += f"; did you mean {guess!r}?"
    installed = f"installed: {', '.join(choices)}" if choices else f"no {kind} is installed"
    return f"{msg} ({installed}; list them with `{LIST_COMMAND[kind]}`)"
