"""What the distributions ship, read from their packaging config (no build: scripts/check_wheels.py
builds, installs and runs the real wheels in CI). The editable install the tests use reads every
file from the checkout, so a module or data file the config forgets passes every other test."""

from __future__ import annotations

import glob
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import setuptools  # noqa: F401 - before distutils: its copy replaces the stdlib's
from setuptools.config.expand import find_packages
from setuptools.dist import Distribution

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = sorted(p.parent for p in [*ROOT.glob("plugins/*/pyproject.toml"),
                                    *ROOT.glob("examples/*/pyproject.toml")])


def setup_kwargs(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """packages, package_dir and package_data of tpcli, as setuptools resolves them from
    pyproject.toml and setup.py together (run from the root, as a build does)."""
    from distutils.core import run_setup  # setuptools' own copy (setuptools is imported)

    monkeypatch.chdir(ROOT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if (ROOT / "setup.py").is_file():
            dist = run_setup("setup.py", stop_after="config")
        else:  # pyproject.toml alone
            dist = Distribution()
            dist.parse_config_files()
    return {"packages": dist.packages or [], "package_dir": dist.package_dir or {},
            "package_data": dist.package_data or {}}


def package_dirs(project: Path, top: str) -> dict[str, Path]:
    """dotted name -> folder, for every folder of `top` that holds Python files."""
    return {".".join(d.relative_to(project).parts): d
            for d in [project / top, *(project / top).rglob("*")]
            if d.is_dir() and "__pycache__" not in d.parts and any(d.glob("*.py"))}


def data_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
            and p.suffix not in (".py", ".pyc")}


def test_every_tpcli_package_ships(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = set(setup_kwargs(monkeypatch)["packages"])
    for name, folder in package_dirs(ROOT, "tpcli").items():
        assert (folder / "__init__.py").is_file(), f"{folder} has modules but no __init__.py"
        assert name in shipped, f"{name} is not shipped in the tpcli wheel"


def test_recipes_and_zoo_ship_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    kw = setup_kwargs(monkeypatch)
    assert kw["package_dir"] == {"tpcli.builtin_recipes": "recipes", "tpcli.builtin_zoo": "zoo"}
    for package, folder in kw["package_dir"].items():
        assert package in kw["packages"]
        matched = {Path(f).relative_to(ROOT / folder).as_posix()
                   for pattern in kw["package_data"][package]
                   for f in glob.glob(os.path.join(ROOT, folder, pattern), recursive=True)}
        missing = data_files(ROOT / folder) - matched
        assert not missing, f"no package_data glob in setup.py ships {folder}/{sorted(missing)}"


def test_no_symlinks_in_the_packages() -> None:
    """A Windows checkout has no symlinks, and a wheel cannot hold one."""
    links = [p for p in [*ROOT.glob("tpcli/**/*"), *ROOT.glob("plugins/*/*/**/*")]
             if p.is_symlink()]
    assert not links


@pytest.mark.parametrize("project", PLUGINS, ids=[p.name for p in PLUGINS])
def test_plugins_find_their_packages(project: Path) -> None:
    config = tomllib.loads((project / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "find" in config["packages"], "packages are found, not listed by hand"
    found = set(find_packages(root_dir=str(project), **config["packages"]["find"]))
    tops = {p.split(".")[0] for p in found}
    assert tops and not any(t.startswith("test") for t in tops)
    for top in tops:
        for name in package_dirs(project, top):
            assert name in found, f"{project.name}: {name} is not shipped"


def test_builtin_recipes_are_resources() -> None:
    """importlib.resources, as tpcli.plugins.defaults reads them, lists every recipe and card."""
    recipes = {p.name for p in resources.files("tpcli.builtin_recipes").iterdir()
               if p.is_dir() and (p / "recipe.yaml").is_file()}
    assert recipes == {p.parent.name for p in ROOT.glob("recipes/*/recipe.yaml")}
    cards = {p.name for p in resources.files("tpcli.builtin_zoo").iterdir()
             if p.name.endswith(".yaml")}
    assert cards == {p.name for p in ROOT.glob("zoo/*.yaml")}
