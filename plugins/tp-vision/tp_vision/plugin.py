"""Registers this distribution's modules, tokenizers, processors, tasks and converters. Lazy
strings: nothing heavy (torch, Pillow) is imported here."""

from __future__ import annotations

from typing import Any, Callable

from tpcli import hookimpl


@hookimpl
def tp_register_modules(register: Callable[[str, str, Any], None]) -> None:
    register("target", "mim", "tp_vision.mim:MimTarget")
    register("embedding", "patch", "tp_vision.patch:PatchEmbedding")
    register("embedding", "masked_patch", "tp_vision.masked_patch:MaskedPatchEmbedding")


@hookimpl
def tp_register_tokenizers(register: Callable[[str, Any], None]) -> None:
    register("kmeans", "tp_vision.kmeans:KmeansImageTokenizer")


@hookimpl
def tp_register_processors(register: Callable[[str, Any], None]) -> None:
    register("image", "tp_vision.image_processor:ImageProcessor")
    register("beit", "tp_vision.beit_processor:BeitProcessor")


@hookimpl
def tp_register_tasks(register: Callable[[str, Any], None]) -> None:
    register("image_classification", "tp_vision.image_classification:ImageClassificationTask")


@hookimpl
def tp_register_converters(register: Callable[[str, Any], None]) -> None:
    register("vit", "tp_vision.convert_vit:CONVERTER")
    register("beit", "tp_vision.convert_beit:CONVERTER")
