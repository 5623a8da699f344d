"""Registers this distribution's modules, processors, tasks and converters. Lazy strings:
nothing heavy (torch, Pillow) is imported here."""

from __future__ import annotations

from typing import Any, Callable

from tpcli import hookimpl
