"""The model zoo: cards (`card.py`), sources (`sources.py`, `hf.py`), the cache under `TP_HOME`
(`cache.py`), pulls with verification (`pull.py`), conversion on the way in (`formats.py`), and
the `tp zoo` actions (`ops.py`, `lock.py`).

`tp zoo pull NAME` and `init: zoo:NAME` (a recipe's finetune section, or `--init zoo:NAME`) end in
the same place: a verified tp checkpoint folder in the cache.
"""

from __future__ import annotations

from typing import Any

from tpcli.plugins.requests import ZooRequest

PREFIX = "zoo:"


def zoo(request: ZooRequest) -> Any:
    """Run a `tp zoo` action through its `firstresult` hook."""
    from tpcli.verbs import zoo as run

    return run(request)


def resolve_init(ref: str, plugins: Any, progress: bool = True) -> str:
    """`zoo:NAME` -> the tp checkpoint folder of NAME, pulled (and converted) when not cached;
    any other reference is returned as it is."""
    if not ref.startswith(PREFIX):
        return ref
    result = zoo(ZooRequest("pull", name=ref[len(PREFIX):], format="tp", progress=progress,
                            plugins=plugins))
    return str(result["path"])
