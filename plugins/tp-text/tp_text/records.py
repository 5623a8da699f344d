"""The file formats the text tasks read: TSV with a header row, and JSON lines.

Each reader returns (line number, record) pairs, so a task's own errors name `file:line`; the
readers' own errors (a missing file, a row whose column count differs from the header's, a line
that is not JSON) do too. TSV is split on tabs only (quotes are text: GLUE-style files carry
unbalanced ones). A UTF-8 byte-order mark (Excel and Notepad write one) is dropped, so the
header's first column keeps its name.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from tpcli.errors import DataError
from tpcli.downstream.tasks import data_file


def existing(path: str, formats: str) -> Path:
    """`path` as a Path when it can be read (a file, or a pipe); else a DataError naming what is
    wrong and what to pass."""
    return data_file(path, formats)


def _not_utf8(path: str, line: int, e: UnicodeDecodeError) -> DataError:
    return DataError(f"{path}: not valid UTF-8 near line {line} ({e.reason})",
                     hint="save the file as UTF-8, e.g. `iconv -f LATIN1 -t UTF-8 in > out`")


def jsonl_records(path: str) -> list[tuple[int, Any]]:
    """The JSON value on each non-empty line."""
    out: list[tuple[int, Any]] = []
    n = 0
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not JSON
        try:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        out.append((n, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n}: not valid JSON ({e.msg})",
                                        hint="one JSON object per line") from None
        except UnicodeDecodeError as e:
            raise _not_utf8(path, n + 1, e) from None
    return out


def tsv_records(path: str) -> list[tuple[int, dict[str, str]]]:
    """Rows as {header column: cell}; a row with another number of cells is an error."""
    out: list[tuple[int, dict[str, str]]] = []
    n = 0  # the last line read: decoding is by blocks, so an error is reported "near" n + 1
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: Excel writes a BOM
        try:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None) or []
            n = 1
            for n, cells in enumerate(reader, 2):
                if not any(cells):
                    continue
                if len(cells) != len(header):
                    raise DataError(f"{path}:{n}: {len(cells)} columns, the header has "
                                    f"{len(header)} ({', '.join(header)})",
                                    hint="one example per line, fields separated by tabs")
                out.append((n, dict(zip(header, cells))))
        except UnicodeDecodeError as e:
            raise _not_utf8(path, n + 1, e) from None
    return out


def records(path: str, formats: str) -> list[tuple[int, Any]]:
    """JSON lines for `.jsonl` / `.json`, else TSV with a header."""
    p = existing(path, formats)
    return jsonl_records(path) if p.suffix in (".jsonl", ".json") else tsv_records(path)
