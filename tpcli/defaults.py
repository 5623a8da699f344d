"""The core's default plugin: the verb implementations and the built-in recipe folder.

Registered like any plugin (see `tpcli.plugins.CORE_PLUGINS`); the verb hooks run `trylast`, so
a third-party plugin that implements them takes precedence.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Callable

from tpcli.hookspecs import hookimpl
from tpcli.verbs import PreprocessRequest, PretrainRequest


@hookimpl(trylast=True)
def tp_preprocess(request: PreprocessRequest) -> Any:
    from tpcli.data.preprocess import run_preprocess

    return run_preprocess(request)


@hookimpl(trylast=True)
def tp_pretrain(request: PretrainRequest) -> Any:
    from tpcli.train.loop import run_pretrain

    return run_pretrain(request)


@hookimpl
def tp_register_recipe_dirs(register: Callable[[str], None]) -> None:
    register(str(resources.files("tpcli.builtin_recipes")))
