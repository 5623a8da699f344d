"""The model zoo: cards (`card.py`), sources (`sources.py`, `hf.py`), the cache under `TP_HOME`
(`cache.py`), pulls with verification (`pull.py`), conversion on the way in (`formats.py`), and
the `tp zoo` actions (`ops.py`, `lock.py`).

`tp zoo pull NAME` and `init: zoo:NAME` (a recipe's finetune section, or `--init zoo:NAME`) end in
the same place: a verified tp checkpoint folder in the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Action = Literal["list", "info", "pull", "verify", "rm", "path", "lock"]
PREFIX = "zoo:"


@dataclass
class ZooRequest:
    action: Action
    name: str | None = None  # the card (list: unused; verify: None means every cached model)
    revision: str | None = None  # pull: another revision than the card's
    format: str | None = None  # pull / path: tp or hf (default: tp when convertible)
    modality: str | None = None  # list: filter
    task: str | None = None  # list: filter
    progress: bool = True
    workers: int = 8
    hf_cache: bool = False  # rm: also delete the revisions from the Hugging Face cache
    plugins: Any = None


def zoo(request: ZooRequest) -> Any:
    """Run a `tp zoo` action through its `firstresult` hook."""
    from tpcli.plugins import get_plugins

    plugins = request.plugins or get_plugins()
    request.plugins = plugins
    return plugins.hook.tp_zoo(request=request)


def resolve_init(ref: str, plugins: Any, progress: bool = True) -> str:
    """`zoo:NAME` -> the tp checkpoint folder of NAME, pulled (and converted) when not cached;
    any other reference is returned as it is."""
    if not ref.startswith(PREFIX):
        return ref
    result = zoo(ZooRequest("pull", name=ref[len(PREFIX):], format="tp", progress=progress,
                            plugins=plugins))
    return str(result["path"])
