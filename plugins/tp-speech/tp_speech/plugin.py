"""Registers this distribution's modules, processors, tasks and converters. Lazy strings:
nothing heavy (torch, soundfile) is imported here."""

from __future__ import annotations

from typing import Any, Callable

from tpcli import hookimpl


@hookimpl
def tp_register_modules(register: Callable[[str, str, Any], None]) -> None:
    register("embedding", "speech", "tp_speech.speech:SpeechEmbedding")
    register("target", "ctc", "tp_speech.ctc:CtcTarget")


@hookimpl
def tp_register_processors(register: Callable[[str, Any], None]) -> None:
    register("speech", "tp_speech.speech_processor:SpeechProcessor")


@hookimpl
def tp_register_converters(register: Callable[[str, Any], None]) -> None:
    register("speech_to_text", "tp_speech.convert_s2t:CONVERTER")  # HF's model_type


@hookimpl
def tp_register_tasks(register: Callable[[str, Any], None]) -> None:
    register("asr", "tp_speech.asr:AsrTask")
