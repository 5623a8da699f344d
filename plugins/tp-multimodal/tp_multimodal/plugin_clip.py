"""Registers this distribution's modules, processors, tasks and converters. Lazy strings:
nothing heavy (torch, Pillow) is imported here."""

from __future__ import annotations

from typing import Any, Callable

from tpcli import hookimpl


@hookimpl
def tp_register_modules(register: Callable[[str, str, Any], None]) -> None:
    register("target", "clr", "tp_multimodal.clr:ClrTarget")


@hookimpl
def tp_register_converters(register: Callable[[str, Any], None]) -> None:
    register("clip", "tp_multimodal.convert_clip:CONVERTER")  # HF's model_type
