"""Registers this distribution's modules, processors, tasks and converters. Lazy strings:
nothing heavy (torch, Pillow) is imported here."""

from __future__ import annotations

from typing import Any, Callable

from tpcli import hookimpl


@hookimpl
def tp_register_tasks(register: Callable[[str, Any], None]) -> None:
    # CLIP's downstream use, run by `tp infer CHECKPOINT --task NAME` on a pre-trained CLIP
    register("zero_shot", "tp_multimodal.zero_shot:ZeroShotTask")
    register("retrieval", "tp_multimodal.retrieval:RetrievalTask")
    register("embed", "tp_multimodal.embed:EmbedTask")
