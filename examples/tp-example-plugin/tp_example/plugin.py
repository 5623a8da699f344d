"""The plugin object tp loads through the `tp` entry point.

Keep this file cheap to import: register a lazy "package.module:Class" string so torch and the
module code are imported only when a recipe names `scaled_word`.
"""

from __future__ import annotations

from typing import Any, Callable

from tpcli import hookimpl


@hookimpl
def tp_register_modules(register: Callable[[str, str, Any], None]) -> None:
    register("embedding", "scaled_word", "tp_example.scaled_word:ScaledWordEmbedding")
