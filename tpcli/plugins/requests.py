"""What each verb is asked to do: one typed request per `firstresult` verb hook.

The CLI parses its arguments into one of these and hands it to `tpcli.verbs`; a plugin that
replaces or wraps a verb hook receives the same object. `plugins` is the plugin set the verb runs
with (set by `tpcli.verbs.dispatch` when the caller left it None); everything the verb does
(building modules, reading data, nested verbs such as a zoo pull for `--init zoo:NAME`) uses that
set, so plugins registered in-process (`make_plugins(extra=...)`) are seen everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tpcli.plugins import Plugins


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
    resume: Path | None = None  # a run folder, RUN/last or RUN/checkpoints/step-N
    progress: bool = True
    plugins: Plugins | None = None
    nproc: int = 1  # > 1: re-launch under torchrun with this many local processes
    loggers: list[str] = field(default_factory=list)  # --logger: added to pretrain.loggers


@dataclass
class ConvertRequest:
    source: str  # to_*: tp run or checkpoint folder; from_hf: HF folder or Hub id;
    # from_tencentpretrain: a TencentPretrain checkpoint file (.bin / .safetensors)
    out: Path
    direction: Literal["to_hf", "from_hf", "to_tencentpretrain", "from_tencentpretrain"]
    arch: str | None = None  # to_hf: the converter to use (default: the one accepting the model)
    check: bool = False  # run both models on one padded batch and compare logits
    tolerance: float = 1e-4  # --check fails above this max abs difference
    plugins: Plugins | None = None
    config: Path | None = None  # from_tencentpretrain: the model config JSON (required)
    vocab: Path | None = None  # from_tencentpretrain: TencentPretrain's --vocab_path file


@dataclass
class TaskData:
    """Where a task's data is: files named on the command line and/or a dataset folder or source
    (e.g. a GLUE folder, or `hub`)."""

    train: str | None = None
    dev: list[str] = field(default_factory=list)
    test: str | None = None
    source: str | None = None


@dataclass
class FinetuneRequest:
    recipe: str | None  # None: the recipe saved with --init
    task: str | dict[str, Any] | None  # `classification`, `glue/sst2`, or {name, options};
    # None: the recipe's finetune.task
    out: Path
    data: TaskData = field(default_factory=TaskData)
    init: str | None = None  # a tp checkpoint or run folder, or zoo:NAME
    overrides: list[str] = field(default_factory=list)
    seeds: int = 1
    progress: bool = True
    plugins: Plugins | None = None
    loggers: list[str] = field(default_factory=list)  # --logger: added to finetune.loggers


@dataclass
class InferRequest:
    checkpoint: str
    input: str
    out: Path
    batch_size: int = 64
    plugins: Plugins | None = None
    task: str | None = None  # another registered task than the checkpoint's finetune.task
    overrides: list[str] = field(default_factory=list)  # finetune.task.OPTION=VALUE


ZooAction = Literal["list", "info", "pull", "verify", "rm", "path", "lock"]


@dataclass
class ZooRequest:
    action: ZooAction
    name: str | None = None  # the card (list: unused; verify: None means every cached model)
    revision: str | None = None  # pull: another revision than the card's
    format: str | None = None  # pull / path: tp or hf (default: tp when convertible)
    modality: str | None = None  # list: filter
    task: str | None = None  # list: filter
    progress: bool = True
    workers: int = 8
    hf_cache: bool = False  # rm: also delete the revisions from the Hugging Face cache
    plugins: Plugins | None = None


Request = (PreprocessRequest | PretrainRequest | ConvertRequest | FinetuneRequest | InferRequest
           | ZooRequest)
