"""The file formats the text tasks read: TSV with a header row, and JSON lines.

Each reader returns (line number, record) pairs, so a task's own errors name `file:line`; the
readers' own errors (a missing file, a row whose column count differs from the header's, a line
that is not JSON) do too. TSV is split on tabs only (quotes are text: GLUE-style files carry
unbalanced ones).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from tpcli.errors import DataError


def existing(path: str, formats: str) -> Path:
    """`path` as a Path when it is a file; else a DataError naming what to pass."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {path} does not exist", hint=f"pass an existing {formats}")
    return p


def jsonl_records(path: str) -> list[tuple[int, Any]]:
    """The JSON value on each non-empty line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not valid JSON ({e.msg})",
                                    hint="one JSON object per line") from None
    return out


def tsv_records(path: str) -> list[tuple[int, dict[str, str]]]:
    """Rows as {header column: cell}; a row with another number of cells is an error."""
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None) or []
        for n, cells in enumerate(reader, 2):
            if not any(cells):
                continue
            if len(cells) != len(header):
                raise DataError(f"{path}:{n}: {len(cells)} columns, the header has "
                                f"{len(header)} ({', '.join(header)})",
                                hint="one example per line, fields separated by tabs")
            out.append((n, dict(zip(header, cells))))
    return out


def records(path: str, formats: str) -> list[tuple[int, Any]]:
    """JSON lines for `.jsonl` / `.json`, else TSV with a header."""
    p = existing(path, formats)
    return jsonl_records(path) if p.suffix in (".jsonl", ".json") else tsv_records(path)
