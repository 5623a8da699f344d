"""Finding recipes: a folder, a recipe file, or a built-in recipe by name."""

from __future__ import annotations

from pathlib import Path

from tpcli.recipes.config import Recipe, build_recipe, read_recipe_file
from tpcli.recipes.tencentpretrain import from_tencentpretrain, is_tencentpretrain_config
from tpcli.errors import TpError
from tpcli.plugins import Plugins, get_plugins
from tpcli.plugins.registry import closest

RECIPE_FILE = "recipe.yaml"


def builtin_recipes(plugins: Plugins | None = None) -> dict[str, Path]:
    """name -> folder, over every registered recipe folder (first registration wins)."""
    plugins = plugins or get_plugins()
    found: dict[str, Path] = {}
    for root in plugins.recipe_dirs:
        root_path = Path(root)
        if not root_path.is_dir():
            continue
        for sub in sorted(root_path.iterdir()):
            if (sub / RECIPE_FILE).is_file():
                found.setdefault(sub.name, sub)
    return found


def resolve_recipe(ref: str, plugins: Plugins | None = None) -> tuple[str, Path, Path]:
    """(name, folder, file) for a folder, a .yaml/.json file, or a built-in name."""
    path = Path(ref)
    if path.is_dir():
        f = path / RECIPE_FILE
        if not f.is_file():
            raise TpError(
                f"recipe folder {path} has no {RECIPE_FILE}",
                hint=f"create {f} with model, data and pretrain sections, or name a built-in "
                "recipe (list them with `tp recipes`)",
            )
        return path.resolve().name, path.resolve(), f
    if path.is_file():
        return path.stem, path.resolve().parent, path
    builtins = builtin_recipes(plugins)
    if ref in builtins:
        return ref, builtins[ref], builtins[ref] / RECIPE_FILE
    guess = closest(path.name, list(builtins))  # `recipes/bert-bsae`: the name is the last part
    msg = f"no recipe folder, file or built-in recipe named {ref!r}"
    if guess:
        msg += f"; did you mean {guess!r}?"
    raise TpError(msg, hint=f"built-in recipes: {', '.join(builtins) or 'none'} (`tp recipes`)")


def load_recipe(ref: str, overrides: list[str] | None = None,
                plugins: Plugins | None = None) -> Recipe:
    """Load and validate a recipe (folder, file or built-in name) with `a.b.c=value` overrides."""
    plugins = plugins or get_plugins()
    name, folder, file = resolve_recipe(ref, plugins)
    raw = read_recipe_file(file)
    if file.suffix == ".json" and is_tencentpretrain_config(raw):
        raw = from_tencentpretrain(raw, str(file), shipped=lambda rel: _shipped(rel, plugins))
    return build_recipe(raw, plugins.registry, name=name, path=folder, overrides=overrides)


def _shipped(relative: str, plugins: Plugins) -> str:
    """The absolute path of a file beside the built-in recipes (`_tokenizers/unigram-8k.json`)."""
    for root in plugins.recipe_dirs:
        if (Path(root) / relative).is_file():
            return str((Path(root) / relative).resolve())
    return relative
