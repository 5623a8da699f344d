"""The small public Python API: load a recipe, build a model, load a checkpoint.

    from tpcli import load_recipe, load_tokenizer, build_model, load_checkpoint

    recipe = load_recipe("recipes/bert-base", ["model.encoder.layers=2"])
    tokenizer = load_tokenizer(recipe)
    model = build_model(recipe, tokenizer)            # randomly initialised TpModel
    loaded = load_checkpoint("runs/bert")             # its `last` checkpoint, or a step-* folder
    loaded.model.predict(batch)                       # {"mlm": (B, T, V) logits, ...}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


from tpcli.recipes.config import Recipe, build_recipe
from tpcli.plugins import Plugins, get_plugins
from tpcli.recipes import load_recipe as _load_recipe


def load_recipe(ref: str, overrides: list[str] | None = None) -> Recipe:
    """A validated recipe from a folder, a recipe file or a built-in name, with overrides."""
    return _load_recipe(ref, overrides)


def load_tokenizer(recipe: Recipe, plugins: Plugins | None = None) -> Any:
    """The recipe's tokenizer (its files resolve against the recipe folder)."""
    plugins = plugins or get_plugins()
    cls = plugins.registry.get("tokenizer", recipe.tokenizer.name)
    return cls(recipe.tokenizer.options, recipe.base_dir)


def build_model(recipe: Recipe, tokenizer: Any | None = None, plugins: Plugins | None = None):
    """A randomly initialised `tpcli.model.TpModel` for the recipe's model section."""
    from tpcli.model import build_model as _build

    plugins = plugins or get_plugins()
    tokenizer = tokenizer or load_tokenizer(recipe, plugins)
    return _build(recipe.model, plugins.registry, tokenizer.vocab_size, tokenizer.special_ids)


@dataclass
class Loaded:
    model: Any  # TpModel in eval mode
    recipe: Recipe
    tokenizer: Any
    step: int
    path: Path


def load_checkpoint(path: str | Path, plugins: Plugins | None = None) -> Loaded:
    """Model, recipe and tokenizer of a checkpoint (a run folder means its `last`)."""
    import json

    from tpcli.model import build_model as _build
    from tpcli.train import checkpoint as ckpt_io
    from tpcli.train import run_folder

    plugins = plugins or get_plugins()
    ckpt = ckpt_io.find_checkpoint(Path(path))
    raw = run_folder.read_recipe(ckpt)
    recipe = build_recipe(raw, plugins.registry, name=str(ckpt), path=ckpt)
    tok_cls = plugins.registry.get("tokenizer", recipe.tokenizer.name)
    tokenizer = tok_cls.from_saved(str(ckpt / "tokenizer"))
    model = _build(recipe.model, plugins.registry, tokenizer.vocab_size, tokenizer.special_ids)
    ckpt_io.load_weights(model, ckpt_io.read_weights(ckpt), str(ckpt))
    info = json.loads((ckpt / ckpt_io.INFO).read_text())
    return Loaded(model.eval(), recipe, tokenizer, int(info.get("step", 0)), ckpt)
