"""The plugin object tp loads through the `tp` entry point.

Keep this file cheap to import: register lazy "package.module:Attr" strings, so torch and the
module code are imported only when a recipe names `scaled_word`, and the verb's code only when
tp builds its command line.
"""

from __future__ import annotations

from typing import Any, Callable

from tpcli import hookimpl


@hookimpl
def tp_register_modules(register: Callable[[str, str, Any], None]) -> None:
    register("embedding", "scaled_word", "tp_example.scaled_word:ScaledWordEmbedding")


@hookimpl
def tp_register_commands(register: Callable[[str, Any], None]) -> None:
    register("count-tokens", "tp_example.count_tokens:count_tokens")  # `tp count-tokens`
