"""The house rules of the core, read from its source: no import circles (lazy imports inside
functions included), no plugin imported, the test helpers and the public facade never used by the
code they serve."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "tpcli"
PLUGIN_PACKAGES = ("tp_text", "tp_encoders", "tp_example", "tp_vision", "tp_speech",
                   "tp_multimodal")


def _modules() -> dict[str, Path]:
    found = {}
    for f in CORE.rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = f
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at module level or inside a function; imports under
    `if TYPE_CHECKING:` are left out (they never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def _owner(name: str) -> str | None:
    """The tpcli module `name` (a module or a name inside one) belongs to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph = {}
    for mod, path in MODULES.items():
        targets = {_owner(n) for n in _imports(path) if n.startswith("tpcli")}
        # a package's submodule importing the package itself is how Python loads it, not a circle
        graph[mod] = {t for t in targets if t and t != mod and not mod.startswith(t + ".")}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_core_has_no_import_circles() -> None:
    assert _circles(_graph()) == []


def test_the_core_imports_no_plugin_and_no_test_helper() -> None:
    bad = []
    for mod, path in MODULES.items():
        for name in _imports(path):
            top = name.split(".")[0]
            if top in PLUGIN_PACKAGES:
                bad.append(f"{mod} imports plugin {name}")
            if name.startswith("tpcli.testing") and not mod.startswith("tpcli.testing"):
                bad.append(f"{mod} imports the test helpers ({name})")
    assert bad == []


def test_only_the_package_front_uses_the_public_facade() -> None:
    """tpcli.api delegates to the core function that owns each job; the core calls those, with
    its run's plugins, never the facade (which falls back to the installed plugins)."""
    users = sorted(mod for mod, path in MODULES.items()
                   if any(n == "tpcli.api" or n.startswith("tpcli.api.") for n in _imports(path))
                   and not mod.startswith("tpcli.testing") and mod not in ("tpcli", "tpcli.api"))
    assert users == []


def test_the_checker_sees_a_circle_and_a_facade_call(tmp_path: Path) -> None:
    """The rules above can fail: a lazy import back is a circle."""
    graph = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert _circles(graph) == [["a", "b"]]
    f = tmp_path / "m.py"
    f.write_text("import typing\nif typing.TYPE_CHECKING:\n    import tpcli.x\n"
                 "def f():\n    from tpcli.api import load_checkpoint\n")
    assert _imports(f) == {"typing", "tpcli.api", "tpcli.api.load_checkpoint"}
