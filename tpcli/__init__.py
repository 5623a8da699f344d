"""tp: a modular pre-training toolkit (embedding, encoder, target embedding, decoder, target).

Public API (imports are lazy, so `import tpcli` stays cheap)::

    from tpcli import load_recipe, build_model, load_checkpoint
    recipe = load_recipe("recipes/bert-base", ["model.encoder.layers=2"])
    model = build_model(recipe)                 # a torch.nn.Module, randomly initialised
    loaded = load_checkpoint("runs/bert")       # .model (eval mode), .recipe, .tokenizer, .step
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tpcli.plugins.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "load_recipe", "build_model", "load_checkpoint", "load_tokenizer",
           "__version__"]

if TYPE_CHECKING:
    from tpcli.api import build_model, load_checkpoint, load_recipe, load_tokenizer


def __getattr__(name: str) -> Any:
    if name in ("load_recipe", "build_model", "load_checkpoint", "load_tokenizer"):
        from tpcli import api

        return getattr(api, name)
    raise AttributeError(name)
