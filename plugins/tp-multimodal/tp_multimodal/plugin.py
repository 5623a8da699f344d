"""Registers this distribution's modules, processors, tasks and converters. Lazy strings:
nothing heavy (torch, Pillow) is imported here."""

from __future__ import annotations

from typing import Any, Callable

from tpcli import hookimpl


@hookimpl
def tp_register_processors(register: Callable[[str, Any], None]) -> None:
    register("image_text", "tp_multimodal.image_text_processor:ImageTextProcessor")
