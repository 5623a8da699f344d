"""The verbs as typed functions that work without Typer: the CLI only parses and calls these.

Each verb dispatches through its `firstresult` hook, so a plugin can replace or wrap it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tpcli.plugins import Plugins, get_plugins


@dataclass
class PreprocessRequest:
    recipe: str  # folder, file or built-in name
    corpus: str  # local path or any fsspec URL
    out: Path
    overrides: list[str] = field(default_factory=list)
    workers: int = 0  # tokenizer threads (0: all cores)
    shard_tokens: int = 100_000_000  # tokens per shard file
    plugins: Plugins | None = None


@dataclass
class PretrainRequest:
    recipe: str | None  # None with `resume`: the recipe saved in the run folder
    data: Path | None
    out: Path | None
    overrides: list[str] = field(default_factory=list)
    resume: Path | None = None
    progress: bool = True
    plugins: Plugins | None = None
    nproc: int = 1  # > 1: re-launch under torchrun with this many local processes


@dataclass
class ConvertRequest:
    source: str  # to_hf: tp run or checkpoint folder; from_hf: HF folder or Hub id
    out: Path
    direction: Literal["to_hf", "from_hf"]
    arch: str | None = None  # to_hf: the converter to use (default: the one accepting the model)
    check: bool = False  # run both models on one padded batch and compare logits
    tolerance: float = 1e-4  # --check fails above this max abs difference
    plugins: Plugins | None = None


def preprocess(request: PreprocessRequest) -> dict[str, Any]:
    plugins = request.plugins or get_plugins()
    request.plugins = plugins
    return plugins.hook.tp_preprocess(request=request)


def pretrain(request: PretrainRequest) -> dict[str, Any]:
    if request.nproc > 1:
        from tpcli.train.launch import launch, under_torchrun

        if not under_torchrun():  # the children run this again, without nproc
            return launch(request)
    plugins = request.plugins or get_plugins()
    request.plugins = plugins
    return plugins.hook.tp_pretrain(request=request)


def finetune(request: Any) -> dict[str, Any]:
    """`request` a `tpcli.finetune.FinetuneRequest`."""
    plugins = request.plugins or get_plugins()
    request.plugins = plugins
    return plugins.hook.tp_finetune(request=request)


def infer(request: Any) -> dict[str, Any]:
    """`request` a `tpcli.finetune.InferRequest`."""
    plugins = request.plugins or get_plugins()
    request.plugins = plugins
    return plugins.hook.tp_infer(request=request)


def convert(request: ConvertRequest) -> dict[str, Any]:
    plugins = request.plugins or get_plugins()
    request.plugins = plugins
    return plugins.hook.tp_convert(request=request)
