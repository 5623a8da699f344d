"""Fixtures the top-level tests share."""

from __future__ import annotations

from typing import Callable

import pytest


def _table_rows(out: str) -> list[list[str]]:
    """The rows of the table a `tp` command printed, as lists of cells: a rich table's (on a
    terminal; continuation lines of a row are skipped) or, piped, the plain lines under the
    upper-case header, cut where the header's columns start."""
    lines = out.splitlines()
    if any(line.startswith("│") for line in lines):
        rows = []
        for line in lines:
            if line.startswith("│"):
                cells = [c.strip() for c in line.strip("│").split("│")]
                if cells[0]:
                    rows.append(cells)
        return rows
    at = next((i for i, line in enumerate(lines)
               if len(line.split()) > 1 and line == line.upper()), None)
    if at is None:
        return []
    header = lines[at]
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    bounds = list(zip(starts, starts[1:] + [None]))
    return [[line[a:b].strip() for a, b in bounds] for line in lines[at + 1:] if line.strip()]


@pytest.fixture
def table_rows() -> Callable[[str], list[list[str]]]:
    """`table_rows(stdout)`: the rows of the rich table a `tp` command printed."""
    return _table_rows
