"""The example plugin's zoo part (entry point `example-zoo`): the `pkg://` source and its card.

A second entry point of the same distribution, so `TP_LOAD_PLUGINS` can load the module and the
zoo part separately. Cheap to import: the source is registered as a lazy "module:Class" string.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tpcli import hookimpl

CARDS = Path(__file__).with_name("cards")  # shipped as package data (pyproject.toml)


@hookimpl
def tp_register_zoo_sources(register: Callable[[str, Any], None]) -> None:
    register("pkg", "tp_example.pkg_source:PackageSource")


@hookimpl
def tp_register_zoo_cards(register: Callable[[str], None]) -> None:
    register(str(CARDS))
