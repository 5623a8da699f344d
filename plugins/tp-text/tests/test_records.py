"""The text tasks' file readers: a UTF-8 byte-order mark (Excel, Notepad) is not part of the
first column's name or the first token; a file that is not UTF-8 is named; /dev/null and pipes
are read, not called missing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tpcli.errors import DataError
from tpcli.downstream.tasks import Splits, TaskData
from tp_text import classification, multiple_choice, qa, tagging, text2text
from tp_text.records import jsonl_records, records, tsv_records

BOM = "\ufeff"


def write(path: Path, text: str) -> str:
    path.write_bytes((BOM + text).encode("utf-8"))
    return str(path)


def test_tsv_header_keeps_its_first_column(tmp_path: Path) -> None:
    path = write(tmp_path / "train.tsv", "label\ttext_a\npos\tA fine film.\nneg\tA dull one.\n")
    assert tsv_records(path) == [(2, {"label": "pos", "text_a": "A fine film."}),
                                 (3, {"label": "neg", "text_a": "A dull one."})]
    # what the user met: "train.tsv:2: no label" from classification
    examples = Splits.read(TaskData(train=path), lambda p, labelled:
                           classification.read_examples(p, need_label=labelled)).train
    assert [(e.label, e.fields["text_a"]) for e in examples] == [("pos", "A fine film."),
                                                                 ("neg", "A dull one.")]
    pairs = write(tmp_path / "pairs.tsv", "source\ttarget\nHello.\tBonjour.\n")
    assert text2text.read_pairs(pairs, need_target=True)[0].label == "Bonjour."


def test_jsonl_conll_and_squad_start_clean(tmp_path: Path) -> None:
    row = {"question": "Which?", "choices": ["a", "b"], "label": 1}
    path = write(tmp_path / "mc.jsonl", json.dumps(row) + "\n")
    assert jsonl_records(path) == [(1, row)]
    assert multiple_choice.read_examples(path, need_label=True)[0].label == 1
    conll = write(tmp_path / "ner.conll", "John B-PER\nsmiles O\n")
    [sentence] = tagging.read_examples(conll, need_tags=True)
    assert sentence.fields["tokens"] == ["John", "smiles"]
    squad = {"data": [{"paragraphs": [{"context": "tp is a toolkit.", "qas": [
        {"id": "q1", "question": "What is tp?",
         "answers": [{"text": "a toolkit", "answer_start": 6}]}]}]}]}
    squad_path = write(tmp_path / "squad.json", json.dumps(squad))
    [example] = qa.read_examples(squad_path, need_answers=True)
    assert example.fields["question"] == "What is tp?"


def test_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.tsv"
    path.write_bytes("label\ttext_a\npos\tcaf\u00e9 cr\u00e8me\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.tsv: not valid UTF-8 near line \d") as info:
        records(str(path), "TSV file")
    assert "iconv" in str(info.value.hint)
    jsonl = tmp_path / "latin1.jsonl"
    jsonl.write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="latin1.jsonl: not valid UTF-8"):
        jsonl_records(str(jsonl))


def test_dev_null_is_read_not_missing() -> None:
    with pytest.raises(DataError) as info:
        Splits.read(TaskData(train=os.devnull), lambda p, labelled:
                    classification.read_examples(p, need_label=labelled))
    assert "does not exist" not in str(info.value)
    assert info.value.message.startswith("training file /dev/null holds no examples")
