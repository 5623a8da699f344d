"""Registers this distribution's modules. Lazy strings: nothing heavy is imported here."""

from __future__ import annotations

from typing import Any, Callable

from tpcli import hookimpl


@hookimpl
def tp_register_modules(register: Callable[[str, str, Any], None]) -> None:
    register("encoder", "transformer", "tp_encoders.transformer:TransformerEncoder")
    register("decoder", "transformer", "tp_encoders.transformer_decoder:TransformerDecoder")
    register("encoder", "lstm", "tp_encoders.lstm:LstmEncoder")
    register("encoder", "gru", "tp_encoders.gru:GruEncoder")
    register("encoder", "bilstm", "tp_encoders.bilstm:BilstmEncoder")
    register("encoder", "birnn", "tp_encoders.birnn:BirnnEncoder")
    register("decoder", "lstm", "tp_encoders.lstm_decoder:LstmDecoder")
    for name in ("first", "last", "mean", "max"):
        register("pooling", name, f"tp_encoders.pooling:{name.capitalize()}Pooling")
