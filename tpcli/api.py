"""The small public Python API: load a recipe, build a model, load a checkpoint.

    from tpcli import load_recipe, load_tokenizer, build_model, load_checkpoint

    recipe = load_recipe("recipes/bert-base", ["model.encoder.layers=2"])
    tokenizer = load_tokenizer(recipe)
    model = build_model(recipe, tokenizer)            # randomly initialised TpModel
    loaded = load_checkpoint("runs/bert")             # its `last` checkpoint, or a step-* folder
    loaded.model.predict(batch)                       # {"mlm": (B, T, V) logits, ...}

Each function takes an optional `plugins` (default: the installed ones) and calls the core
function that owns the job; tp's own code calls those directly, with the plugins of its run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpcli.plugins import Plugins, get_plugins
from tpcli.recipes.config import Recipe

if TYPE_CHECKING:
    from tpcli.train.checkpoint import Loaded


def load_recipe(ref: str, overrides: list[str] | None = None,
                plugins: Plugins | None = None) -> Recipe:
    """A validated recipe from a folder, a recipe file or a built-in name, with overrides."""
    from tpcli.recipes import load_recipe as load

    return load(ref, overrides, plugins or get_plugins())


def load_tokenizer(recipe: Recipe, plugins: Plugins | None = None) -> Any:
    """The recipe's tokenizer (its files resolve against the recipe folder)."""
    from tpcli.data import build_tokenizer

    return build_tokenizer(recipe, plugins or get_plugins())


def build_model(recipe: Recipe, tokenizer: Any | None = None, plugins: Plugins | None = None):
    """A randomly initialised `tpcli.model.TpModel` for the recipe's model section."""
    from tpcli.model import build_model as build, vocabulary

    plugins = plugins or get_plugins()
    tokenizer = tokenizer or load_tokenizer(recipe, plugins)
    return build(recipe.model, plugins.registry, *vocabulary(tokenizer))


def load_checkpoint(path: str | Path, plugins: Plugins | None = None) -> Loaded:
    """Model (eval mode), recipe, tokenizer and step of a checkpoint (a run folder means its
    `last`)."""
    from tpcli.train.checkpoint import load_checkpoint as load

    return load(Path(path), plugins or get_plugins())
