"""benchmarks/table2_lines.py: the line counter on known code, and the paper's zero-line models."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]

SNIPPET = '''"""Module docstring,
over two lines."""
# a comment

import os  # code with a trailing comment: 1


def f(x: int) -> int:
    """Function docstring."""
    s = """a multi-line
string that is a value"""
    return (x +
            1)


class A:
    \'\'\'Class docstring.\'\'\'

    y = "not a docstring"
    "a bare string statement, also dropped"
'''
# import, def, s = (2 lines), return (2 lines), class, y = : 8 lines
SNIPPET_LINES = 8


@pytest.fixture(scope="module")
def table2() -> ModuleType:
    spec = importlib.util.spec_from_file_location("table2_lines",
                                                  ROOT / "benchmarks" / "table2_lines.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["table2_lines"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def test_counts_code_lines_only(table2: ModuleType) -> None:
    assert table2.count_code_lines(SNIPPET) == SNIPPET_LINES
    assert table2.count_code_lines("") == 0
    assert table2.count_code_lines("# only a comment\n\n") == 0
    assert table2.count_code_lines("x = 1\ny = 2\n") == 2
    assert table2.count_code_lines('"""just a docstring"""\n') == 0
    assert table2.count_code_lines('print("a")\n"b".upper()\n') == 2


def test_roberta_and_gpt2_add_no_lines(table2: ModuleType) -> None:
    rows = {r.recipe: r for r in table2.measure()}
    for name in ("roberta-base", "gpt2"):
        assert rows[name].status == "", rows[name].status
        assert rows[name].added == 0, rows[name].specific
    assert rows["bert-base"].added == 0
    # GPT-2's lm target is generic (shared) code the table shows apart, measured in lines
    assert any(Path(p).name == "lm.py" and n > 0 for p, n in rows["gpt2"].shared.items())


def test_table_lists_every_paper_row(table2: ModuleType) -> None:
    text = table2.render(table2.measure())
    lines = text.splitlines()
    assert lines[0].startswith("| model (recipe) | HF Transformers (paper)")
    by_name = {ln.split("|")[1].strip(): ln for ln in lines[2:]}
    for name in table2.ROWS:
        assert name in by_name
    assert "| +696 | +0 | +0 |" in by_name["roberta-base"]
    assert "| +688 | +0 | +0 |" in by_name["gpt2"]
    assert "| +1008 | +0 |" in by_name["t5-small"]


def test_vilt_and_clip_rows_count_their_own_modules(table2: ModuleType) -> None:
    """ViLT's row counts word_patch (the paper's +15) and its itm target, CLIP's the clr target,
    each from the registered module's real file; both reuse patch / transformer / mlm."""
    rows = {r.recipe: r for r in table2.measure()}
    vilt, clip = rows["vilt-b32"], rows["clip-vit-b16"]
    assert {Path(p).name for p in vilt.specific} == {"word_patch.py", "itm.py"}
    assert {Path(p).name for p in clip.specific} == {"clr.py"}
    for row in (vilt, clip):
        for path, n in row.specific.items():
            assert n == table2.file_code_lines(path) > 0
    assert "| +618 | +15 |" in table2.render([vilt])
