"""Registers this distribution's modules, processors, tasks and converters. Lazy strings:
nothing heavy (torch, Pillow) is imported here."""

from __future__ import annotations

from typing import Any, Callable

from tpcli import hookimpl


@hookimpl
def tp_register_modules(register: Callable[[str, str, Any], None]) -> None:
    register("embedding", "word_patch", "tp_multimodal.word_patch:WordPatchEmbedding")
    register("target", "itm", "tp_multimodal.itm:ItmTarget")
    register("target", "rank", "tp_multimodal.rank:RankTarget")
    register("target", "vqa", "tp_multimodal.vqa:VqaTarget")


@hookimpl
def tp_register_converters(register: Callable[[str, Any], None]) -> None:
    register("vilt", "tp_multimodal.convert_vilt:CONVERTER")  # HF's model_type
