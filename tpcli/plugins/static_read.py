"""What `tp modules` lists (a class's summary and its Config's options), read from the source.

Importing a module's file imports torch (~2 s) and whatever else it needs, so listing fifty
modules by importing them took seconds. A registered target is a lazy "pkg.mod:Class" string;
this reads the class's docstring and its `Config` (through its base classes, across files) with
`ast`, executing nothing. It follows only the plain form of a pydantic Config (annotated fields
with literal defaults, `Field(default, ...)`, single inheritance); anything else returns None and
the caller imports the class instead, so the listing is never wrong, only slower for it.
tests/cli/test_listing.py checks it against the imported classes for every registered module.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FACTORIES = {"list": list, "dict": dict, "tuple": tuple, "set": set}  # default_factory=list ...
ROOTS = {("pydantic", "BaseModel"), ("pydantic.main", "BaseModel")}  # a Config's root: no fields


class _Unsupported(Exception):
    """The source says something this reader does not follow: import the class instead."""


@dataclass(frozen=True)
class Option:
    name: str
    required: bool
    default: Any = None


@dataclass(frozen=True)
class Nested:
    """The default of an option that is a Config of its own (`default_factory=FbankConfig`):
    that class's defaults, named by the class."""

    name: str

    def __repr__(self) -> str:
        return f"{self.name}()"


@dataclass(frozen=True)
class ClassFacts:
    summary: str  # the first line of the class docstring
    options: list[Option] | None  # None: the class has no Config


def read_class(target: str) -> ClassFacts | None:
    """The facts of the class `target` ("pkg.mod:Class"), or None when they cannot be read
    without importing it."""
    mod_name, _, attr = target.partition(":")
    if not attr or "." in attr:
        return None
    try:
        module = _Module.load(mod_name)
        cls = module.classes.get(attr)
        if cls is None:
            return None
        doc = ast.get_docstring(cls, clean=False) or ""
        lines = doc.strip().splitlines()
        return ClassFacts(lines[0] if lines else "", _config_of(module, cls))
    except (_Unsupported, OSError, SyntaxError, ValueError, ImportError, RecursionError):
        return None


def _config_of(module: _Module, cls: ast.ClassDef) -> list[Option] | None:
    """The options of `cls.Config`: a nested class, or `Config = Name`; a class without either
    has no Config only when it has no base classes that could carry one."""
    for node in cls.body:
        if isinstance(node, ast.ClassDef) and node.name == "Config":
            return list(_fields(module, node).values())
        if isinstance(node, ast.Assign) and any(_is_name(t, "Config") for t in node.targets) \
                or isinstance(node, ast.AnnAssign) and _is_name(node.target, "Config") and node.value:
            owner, found = module.resolve(node.value)  # `Config = XConfig`
            return list(_fields(owner, found).values())
    if cls.bases or cls.keywords or cls.decorator_list:
        raise _Unsupported(f"{cls.name} may inherit or be given a Config")
    return None


def _fields(module: _Module, cls: ast.ClassDef) -> dict[str, Option]:
    """The pydantic fields of config class `cls`, its base's first (pydantic's order)."""
    if cls.keywords or cls.decorator_list or len(cls.bases) != 1:
        raise _Unsupported(f"config {cls.name}: not one plain base class")
    fields: dict[str, Option] = {}
    if module.root(cls.bases[0]) is None:
        owner, base = module.resolve(cls.bases[0])
        fields.update(_fields(owner, base))
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
            if name.startswith("_") or "ClassVar" in ast.unparse(node.annotation) \
                    or "Annotated" in ast.unparse(node.annotation):
                raise _Unsupported(f"config {cls.name}.{name}: not a plain field")
            if name in fields and node.value is None:
                raise _Unsupported(f"config {cls.name}.{name}: re-annotates an inherited field")
            fields[name] = _option(module, name, node.value)
        elif isinstance(node, ast.Assign) and all(_is_name(t, "model_config") for t in node.targets):
            continue  # validation settings, not fields
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            raise _Unsupported(f"config {cls.name}: an assignment that is not a field")
        # docstrings, `pass` and validator methods add no fields
    return fields


def _option(module: _Module, name: str, value: ast.expr | None) -> Option:
    if value is None:
        return Option(name, True)
    if isinstance(value, ast.Call) and _is_name(value.func, "Field"):
        kwargs = {k.arg: k.value for k in value.keywords}
        if None in kwargs or len(value.args) > 1:
            raise _Unsupported(f"field {name}: an unusual Field()")
        factory = kwargs.get("default_factory")
        if factory is not None:  # the empty containers, or a nested Config's class
            if (isinstance(factory, ast.Name) and factory.id not in module.constants
                    and (factory.id in module.classes or factory.id in module.imports)):
                return Option(name, False, Nested(factory.id))
            if not (isinstance(factory, ast.Name) and factory.id in FACTORIES
                    and factory.id not in module.constants):
                raise _Unsupported(f"field {name}: default_factory={ast.unparse(factory)}")
            return Option(name, False, FACTORIES[factory.id]())
        expr = value.args[0] if value.args else kwargs.get("default")
        if expr is None:
            return Option(name, True)
        value = expr
    default = module.literal(value)
    if default is Ellipsis:
        return Option(name, True)
    return Option(name, False, default)


def _is_name(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


@dataclass
class _Module:
    """One parsed source file: its classes, literal constants and imported names."""

    name: str
    package: str
    classes: dict[str, ast.ClassDef]
    constants: dict[str, ast.expr]
    imports: dict[str, tuple[str, str]]  # local name -> (module, attribute)

    @classmethod
    def load(cls, name: str) -> _Module:
        if name not in _PARSED:
            path, is_package = _source_of(name)
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            package = name if is_package else name.rpartition(".")[0]
            _PARSED[name] = cls(name, package, *_index(tree, package))
        return _PARSED[name]

    def root(self, node: ast.expr) -> tuple[str, str] | None:
        """(module, name) when `node` names pydantic's BaseModel, else None."""
        if isinstance(node, ast.Name) and node.id in self.imports:
            found = self.imports[node.id]
            return found if found in ROOTS else None
        if isinstance(node, ast.Attribute) and _is_name(node.value, "pydantic"):
            return ("pydantic", node.attr) if ("pydantic", node.attr) in ROOTS else None
        return None

    def resolve(self, node: ast.expr) -> tuple[_Module, ast.ClassDef]:
        """The class a bare name refers to: defined here or imported `from x import Name`."""
        if not isinstance(node, ast.Name):
            raise _Unsupported(f"{ast.unparse(node)}: not a plain name")
        if node.id in self.classes:
            return self, self.classes[node.id]
        if node.id in self.imports:
            mod_name, attr = self.imports[node.id]
            other = _Module.load(mod_name)
            if attr in other.classes:
                return other, other.classes[attr]
            if attr in other.imports:  # re-exported: follow it (as `from a import X` in a)
                return other.resolve(ast.Name(id=attr))
        raise _Unsupported(f"{node.id}: not found in {self.name}")

    def literal(self, node: ast.expr) -> Any:
        """The value of a literal, or of a module constant assigned a literal."""
        if isinstance(node, ast.Name) and node.id in self.constants:
            node = self.constants[node.id]
        try:
            return ast.literal_eval(node)
        except ValueError:
            raise _Unsupported(f"{ast.unparse(node)}: not a literal") from None


_PARSED: dict[str, _Module] = {}  # module name -> its parsed source, for this process


def _index(tree: ast.Module, package: str
           ) -> tuple[dict[str, ast.ClassDef], dict[str, ast.expr], dict[str, tuple[str, str]]]:
    classes: dict[str, ast.ClassDef] = {}
    constants: dict[str, ast.expr] = {}
    imports: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = node
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            constants[node.targets[0].id] = node.value
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from .x import Y` inside `package`
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                imports[alias.asname or alias.name] = (base, alias.name)
    return classes, constants, imports


def _source_of(name: str) -> tuple[Path, bool]:
    """The .py file of module `name` and whether it is a package, found without importing
    anything: the top-level package is located (find_spec of a top-level name runs no code),
    the rest is a walk through its folders."""
    top, *rest = name.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        raise ImportError(name)
    path = Path(spec.origin)
    if not rest:
        if path.suffix != ".py":
            raise ImportError(f"{name} has no Python source")
        return path, path.name == "__init__.py"
    folders = [Path(p) for p in spec.submodule_search_locations or []]
    for part in rest[:-1]:
        folders = [f / part for f in folders if (f / part).is_dir()]
    for folder in folders:
        if (folder / f"{rest[-1]}.py").is_file():
            return folder / f"{rest[-1]}.py", False
        if (folder / rest[-1] / "__init__.py").is_file():
            return folder / rest[-1] / "__init__.py", True
    raise ImportError(name)


def _plain(default: Any) -> Any:
    """A nested Config's default instance as `Nested` (what the source reading gives)."""
    from pydantic import BaseModel

    return Nested(type(default).__name__) if isinstance(default, BaseModel) else default


def facts_of(obj: Any) -> ClassFacts:
    """The same facts from an imported class (the reference `read_class` must agree with)."""
    lines = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    cfg = getattr(obj, "Config", None)
    options = None
    if cfg is not None:
        options = [Option(n, True) if f.is_required()
                   else Option(n, False, _plain(f.get_default(call_default_factory=True)))
                   for n, f in cfg.model_fields.items()]
    return ClassFacts(lines[0] if lines else "", options)
