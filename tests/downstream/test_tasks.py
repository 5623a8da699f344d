"""tpcli.downstream.tasks' file reading: Splits.read names a data file that holds no examples and says why
(an empty file, a device such as /dev/null, a header alone), and data_file tells a missing file
from a folder."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tpcli.errors import DataError
from tpcli.downstream.tasks import Example, Splits, TaskData, data_file

HINT = "pass a file with at least one example in the task's format"


def lines_reader(path: str, labelled: bool) -> list[Example]:
    """A reader that makes one example of each non-blank line after a header."""
    with open(path, encoding="utf-8") as f:
        rows = [line for line in f.read().splitlines()[1:] if line.strip()]
    return [Example(str(n), {"text": r}, None, f"{path}:{n}") for n, r in enumerate(rows, 2)]


@pytest.mark.parametrize("case", ["empty", "dev-null", "header-only", "fifo"])
def test_no_examples_says_why(case: str, tmp_path: Path) -> None:
    good = tmp_path / "good.tsv"
    good.write_text("text\nan example\n")
    path = tmp_path / "train.tsv"
    why = {"empty": "the file is empty",
           "dev-null": "it is a character device, not a regular file, and reading it gave nothing",
           "header-only": "nothing in it is an example (a header alone, or blank lines)",
           "fifo": "it is a pipe, not a regular file, and reading it gave nothing"}[case]
    feeder = None
    if case == "empty":
        path.write_text("")
    elif case == "header-only":
        path.write_text("text\n\n\n")
    elif case == "dev-null":
        path = Path(os.devnull)
    else:  # `--train <(true)`: a pipe whose writer ends without a line
        os.mkfifo(path)
        feeder = threading.Thread(target=lambda: open(path, "w").close())
        feeder.start()
    with pytest.raises(DataError) as info:
        Splits.read(TaskData(train=str(path), dev=[str(good)]), lines_reader)
    if feeder is not None:
        feeder.join(timeout=10)
    assert info.value.message == f"training file {path} holds no examples: {why}"
    assert info.value.hint == HINT


def test_empty_dev_and_test_are_named(tmp_path: Path) -> None:
    good, empty = tmp_path / "good.tsv", tmp_path / "empty.tsv"
    good.write_text("text\nan example\n")
    empty.write_text("")
    with pytest.raises(DataError, match=f"dev file {empty} holds no examples: the file is empty"):
        Splits.read(TaskData(train=str(good), dev=[str(empty)]), lines_reader)
    with pytest.raises(DataError, match=f"test file {empty} holds no examples"):
        Splits.read(TaskData(test=str(empty)), lines_reader)
    splits = Splits.read(TaskData(train=str(good), dev=[str(good)]), lines_reader)
    assert [e.fields["text"] for e in splits.train] == ["an example"]


def test_data_file_missing_or_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"data file {tmp_path} is a folder, not a file") as info:
        data_file(str(tmp_path), "TSV file")
    assert info.value.hint == "pass a TSV file (a file, not the folder that holds it)"
    with pytest.raises(DataError, match="data file nope.tsv does not exist"):
        data_file("nope.tsv", "TSV file")
    assert data_file(os.devnull, "TSV file") == Path(os.devnull)  # read, then judged by content


def test_finetune_on_dev_null_cli(tmp_path: Path) -> None:
    """`tp finetune --train /dev/null` said "does not exist"."""
    tp = Path(sys.executable).parent / "tp"
    good = tmp_path / "dev.tsv"
    good.write_text("label\ttext_a\npos\tgood\nneg\tbad\n")
    r = subprocess.run([str(tp), "finetune", "bert-tiny", "--task", "classification", "--train",
                        os.devnull, "--dev", str(good), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    err = " ".join(r.stderr.split())
    assert r.returncode == 1, r.stderr
    assert err.startswith("error: training file /dev/null holds no examples: it is a character "
                          "device, not a regular file")
    assert "does not exist" not in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
