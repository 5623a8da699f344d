"""The core's default plugin: the verb implementations and the built-in recipe folder.

Registered like any plugin (see `tpcli.plugins.CORE_PLUGINS`); the verb hooks run `trylast`, so
a third-party plugin that implements them takes precedence.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Callable

from tpcli.plugins.hookspecs import hookimpl
from tpcli.plugins.requests import (ConvertRequest, FinetuneRequest, InferRequest, PreprocessRequest,
                            PretrainRequest, ZooRequest)


@hookimpl(trylast=True)
def tp_preprocess(request: PreprocessRequest) -> Any:
    from tpcli.data.preprocess import run_preprocess

    return run_preprocess(request)


@hookimpl(trylast=True)
def tp_pretrain(request: PretrainRequest) -> Any:
    from tpcli.train.loop import run_pretrain

    return run_pretrain(request)


@hookimpl(trylast=True)
def tp_finetune(request: FinetuneRequest) -> Any:
    from tpcli.downstream.finetune import run_finetune

    return run_finetune(request)


@hookimpl(trylast=True)
def tp_infer(request: InferRequest) -> Any:
    from tpcli.downstream.finetune import run_infer

    return run_infer(request)


@hookimpl(trylast=True)
def tp_convert(request: ConvertRequest) -> Any:
    from tpcli.convert.hf import from_hf, to_hf

    assert request.plugins is not None  # set by tpcli.verbs.dispatch
    if request.direction.endswith("tencentpretrain"):
        from tpcli.convert import tencentpretrain as tpre

        if request.direction == "to_tencentpretrain":
            return tpre.to_tencentpretrain(Path(request.source), request.out,
                                           request.plugins).as_dict()
        return tpre.from_tencentpretrain(Path(request.source), request.config, request.out,
                                         request.plugins, vocab=request.vocab).as_dict()
    if request.direction == "to_hf":
        result = to_hf(Path(request.source), request.out, request.plugins, arch=request.arch, check=request.check,
                       tolerance=request.tolerance)
    else:
        result = from_hf(request.source, request.out, request.plugins, check=request.check,
                         tolerance=request.tolerance)
    return result.as_dict()


@hookimpl(trylast=True)
def tp_zoo(request: ZooRequest) -> Any:
    from tpcli.zoo.ops import run_zoo

    return run_zoo(request)


@hookimpl
def tp_register_zoo_cards(register: Callable[[str], None]) -> None:
    register(str(resources.files("tpcli.builtin_zoo")))


@hookimpl
def tp_register_zoo_sources(register: Callable[[str, Any], None]) -> None:
    register("hf", "tpcli.zoo.hf:HfSource")
    for scheme in ("https", "http", "s3", "gs", "file"):
        register(scheme, "tpcli.zoo.sources:FsspecSource")


@hookimpl
def tp_register_recipe_dirs(register: Callable[[str], None]) -> None:
    register(str(resources.files("tpcli.builtin_recipes")))
