"""Registers this distribution's modules, processors, tasks and converters. Lazy strings:
nothing heavy (torch, Pillow, transformers) is imported here."""

from __future__ import annotations

from typing import Any, Callable

from tpcli import hookimpl


@hookimpl
def tp_register_modules(register: Callable[[str, str, Any], None]) -> None:
    # ViLT: text and patches joined in one stream; its heads
    register("embedding", "word_patch", "tp_multimodal.word_patch:WordPatchEmbedding")
    register("target", "itm", "tp_multimodal.itm:ItmTarget")
    register("target", "rank", "tp_multimodal.rank:RankTarget")
    register("target", "vqa", "tp_multimodal.vqa:VqaTarget")
    # CLIP: two streams contrasted
    register("target", "clr", "tp_multimodal.clr:ClrTarget")


@hookimpl
def tp_register_processors(register: Callable[[str, Any], None]) -> None:
    register("image_text", "tp_multimodal.image_text_processor:ImageTextProcessor")


@hookimpl
def tp_register_converters(register: Callable[[str, Any], None]) -> None:
    register("clip", "tp_multimodal.convert_clip:CONVERTER")  # HF's model_type
    register("vilt", "tp_multimodal.convert_vilt:CONVERTER")


@hookimpl
def tp_register_tasks(register: Callable[[str, Any], None]) -> None:
    # CLIP's downstream use, run by `tp infer CHECKPOINT --task NAME` on a pre-trained CLIP
    register("zero_shot", "tp_multimodal.zero_shot:ZeroShotTask")
    register("retrieval", "tp_multimodal.retrieval:RetrievalTask")
    register("embed", "tp_multimodal.embed:EmbedTask")
