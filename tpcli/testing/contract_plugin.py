"""A pytest plugin: the module contract tp's built-ins pass, run over a third party's modules.

One line in the distribution's tests/conftest.py::

    from tpcli.testing.contract_plugin import pytest_collect_file  # noqa: F401

(or `pytest_plugins = ["tpcli.testing.contract_plugin"]` in a conftest at pytest's root, where
pytest allows that form) and pytest collects, beside that conftest, one test per check and registered module of the
distribution the conftest belongs to (the `[project]` of the nearest pyproject.toml above it):
build tiny, forward and backward with finite outputs and gradients, state-dict round trip,
Config round trip with a description for every option and unknown options refused, declared
inputs (embeddings), weight tying without a copy (tied targets). The checks are
`tpcli.testing.contract`'s, the ones tp's own suite runs (tests/model/test_contract.py).

The distribution's plugins are read from its installed entry points when it is installed, or
else from its pyproject.toml's `[project.entry-points.tp]`, imported from the source tree (a
checkout being developed before `pip install`). A test's id is `contract[CHECK-KIND-NAME]`.
"""

from __future__ import annotations

import importlib
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import pytest

MARK = "tpcli.testing.contract_plugin"


def _project(start: Path) -> tuple[str, dict[str, str]] | None:
    """(distribution name, its `tp` entry points) of the nearest pyproject.toml above `start`."""
    for folder in [start, *start.parents]:
        f = folder / "pyproject.toml"
        if f.is_file():
            data = tomllib.loads(f.read_text(encoding="utf-8")).get("project", {})
            if "name" in data:
                return str(data["name"]), dict(data.get("entry-points", {}).get("tp", {}))
    return None


def modules_of(dist: str, entry_points: dict[str, str]) -> list[tuple[str, str, Any]]:
    """(kind, name, class) of every module the distribution registers."""
    from tpcli.plugins import get_plugins, make_plugins
    from tpcli.testing.contract import KINDS

    try:
        installed = metadata.distribution(dist) is not None
    except metadata.PackageNotFoundError:
        installed = False
    if installed:
        registry = get_plugins().registry

        def keep(e: Any) -> bool:
            return e.distribution == dist
    else:  # from the source tree: its plugin modules registered in-process
        mods = [importlib.import_module(v.split(":")[0]) for v in entry_points.values()]
        registry = make_plugins(extra=mods).registry
        names = {m.__name__ for m in mods}

        def keep(e: Any) -> bool:
            return e.plugin in names
    return [(e.kind, e.name, registry.get(e.kind, e.name))
            for kind in KINDS for e in registry.entries(kind) if keep(e)]


class ContractItem(pytest.Item):
    def __init__(self, *, check: str, kind: str, module: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check, self.kind, self.module = check, kind, module

    def runtest(self) -> None:
        from tpcli.testing.contract import CHECKS

        CHECKS[self.check](self.kind, self.module)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"tp module contract: {self.check} of {self.kind} {self.name}"

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, AssertionError):
            return f"{self.kind} {self.module.__name__} fails the contract ({self.check}): " \
                   f"{excinfo.value}"
        return super().repr_failure(excinfo)


class ContractFile(pytest.File):
    """Stands for the conftest that asked for the contract; its items are the checks."""

    def collect(self) -> Iterator[ContractItem]:
        from tpcli.testing.contract import CHECKS, applies

        project = _project(self.path.parent)
        if project is None:
            raise pytest.UsageError(f"{self.path}: no pyproject.toml with a [project] name above "
                                    "it, so the module contract does not know whose modules "
                                    "to check")
        dist, entry_points = project
        found = modules_of(dist, entry_points)
        for kind, name, cls in found:
            for check in CHECKS:
                if applies(check, kind, cls):
                    yield ContractItem.from_parent(self, name=f"contract[{check}-{kind}-{name}]",
                                                   check=check, kind=kind, module=cls)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> ContractFile | None:
    """The conftest.py that lists this plugin is collected as the contract's test file."""
    if file_path.name != "conftest.py":
        return None
    if MARK not in file_path.read_text(encoding="utf-8", errors="replace"):
        return None
    return ContractFile.from_parent(parent, path=file_path)
