"""Fixtures the top-level tests share."""

from __future__ import annotations

from typing import Callable

import pytest


def _table_rows(out: str) -> list[list[str]]:
    """The rows of a rich table as lists of cells (continuation lines of a row are skipped)."""
    rows = []
    for line in out.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            if cells[0]:
                rows.append(cells)
    return rows


@pytest.fixture
def table_rows() -> Callable[[str], list[list[str]]]:
    """`table_rows(stdout)`: the rows of the rich table a `tp` command printed."""
    return _table_rows
