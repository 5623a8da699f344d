"""The verbs as typed functions that work without Typer: the CLI only parses and calls these.

Each verb dispatches through its `firstresult` hook (`dispatch`), so a plugin can replace or wrap
it. The request types live in `tpcli.plugins.requests` and are re-exported here.
"""

from __future__ import annotations

from typing import Any, TypeVar

from tpcli.plugins import Plugins, get_plugins
from tpcli.plugins.requests import (ConvertRequest, FinetuneRequest, InferRequest, PreprocessRequest,
                            PretrainRequest, Request, TaskData, ZooRequest)

__all__ = ["ConvertRequest", "FinetuneRequest", "InferRequest", "PreprocessRequest",
           "PretrainRequest", "TaskData", "ZooRequest", "dispatch", "preprocess", "pretrain",
           "finetune", "infer", "convert", "zoo"]

R = TypeVar("R", bound=Request)


def dispatch(hook: str, request: Request) -> Any:
    """Call the `firstresult` verb hook `hook` with `request`, on the request's plugin set (the
    process-wide one when it names none, recorded on the request for everything downstream)."""
    if request.plugins is None:
        request.plugins = get_plugins()
    plugins: Plugins = request.plugins
    return getattr(plugins.hook, hook)(request=request)


def preprocess(request: PreprocessRequest) -> dict[str, Any]:
    return dispatch("tp_preprocess", request)


def pretrain(request: PretrainRequest) -> dict[str, Any]:
    if request.nproc > 1:
        from tpcli.train.launch import launch, under_torchrun

        if not under_torchrun():  # the children run this again, without nproc
            return launch(request)
    return dispatch("tp_pretrain", request)


def finetune(request: FinetuneRequest) -> dict[str, Any]:
    return dispatch("tp_finetune", request)


def infer(request: InferRequest) -> dict[str, Any]:
    return dispatch("tp_infer", request)


def convert(request: ConvertRequest) -> dict[str, Any]:
    return dispatch("tp_convert", request)


def zoo(request: ZooRequest) -> Any:
    return dispatch("tp_zoo", request)
