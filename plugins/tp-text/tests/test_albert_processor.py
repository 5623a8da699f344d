"""The albert processor: sentence-order pairs from one document, n-gram masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tp_text.albert_processor import AlbertProcessor, AlbertProcessorConfig
from tpcli.data.format import Reader, Writer
from tpcli.errors import DataError

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
FIRST = 10  # every token of sentence k is FIRST + k


class Tok:
    vocab_size = 5000
    special_ids = {"pad": PAD, "unk": UNK, "cls": CLS, "sep": SEP, "mask": MASK}


def corpus(n_docs: int, seed: int = 0) -> list[list[list[int]]]:
    rng = np.random.default_rng(seed)
    docs, k = [], 0
    for _ in range(n_docs):
        doc = []
        for _ in range(int(rng.integers(1, 10))):
            doc.append([FIRST + k] * int(rng.integers(1, 30)))
            k += 1
        docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Reader, dict[int, int]]:
    docs = corpus(100)
    out = tmp_path_factory.mktemp("albert") / "ds"
    with Writer(out, 5000, {}, shard_tokens=2000) as w:
        for d in docs:
            w.append_document(d)
        w.finish()
    sent_doc, k = {}, 0
    for j, d in enumerate(docs):
        for _ in d:
            sent_doc[FIRST + k] = j
            k += 1
    return Reader(out), sent_doc


def original(ex: dict[str, torch.Tensor]) -> list[int]:
    ids = ex["input_ids"].clone()
    picked = ex["mlm_labels"] != -100
    ids[picked] = ex["mlm_labels"][picked]
    return ids.tolist()


def test_sentence_order_pairs(store):
    reader, sent_doc = store
    ds = AlbertProcessor(AlbertProcessorConfig(seq_length=40)).dataset(reader, Tok(), 1)
    labels = []
    for i in range(len(ds)):
        ex = ds[i]
        ids = original(ex)
        assert ids[0] == CLS and ids[-1] == SEP and len(ids) <= 40
        seps = [p for p, t in enumerate(ids) if t == SEP]
        label = int(ex["sp_labels"])
        if len(seps) == 1:  # a lone one-token sentence: nothing to order
            assert label == 0 and len(ids) == 3
            continue
        first, second = ids[1:seps[0]], ids[seps[0] + 1:-1]
        assert ex["segment_ids"].tolist() == [0] * (seps[0] + 1) + [1] * len(second + [SEP])
        docs = {sent_doc[t] for t in first + second}
        assert len(docs) == 1  # never another document
        if label == 0:  # HF sentence_order_label 0: A then B, in the text's order
            assert max(first) <= min(second)
        else:  # 1: B then A
            assert min(first) >= max(second)
        labels.append(label)
    assert len(labels) > 150 and 0.4 < np.mean(labels) < 0.6


def test_ngram_masking_is_the_default(store):
    reader, _ = store
    cfg = AlbertProcessorConfig(seq_length=64)
    assert cfg.span == "ngram" and cfg.max_span is None
    ds = AlbertProcessor(cfg).dataset(reader, Tok(), 2)
    predicted = maskable = 0
    for i in range(len(ds)):
        ex = ds[i]
        picked = ex["mlm_labels"] != -100
        assert not picked[torch.tensor(original(ex)) == SEP].any()
        predicted += int(picked.sum())
        maskable += int((torch.tensor(original(ex)) > MASK).sum())
    assert predicted / maskable == pytest.approx(0.15, abs=0.01)


def test_deterministic_and_single_document(store, tmp_path):
    reader, _ = store
    a = AlbertProcessor().dataset(reader, Tok(), 5)
    b = AlbertProcessor().dataset(reader, Tok(), 5)
    assert all(torch.equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(30))
    b.set_epoch(1)
    assert sum(not torch.equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(30)) > 20
    with Writer(tmp_path / "one", 5000, {}) as w:  # SOP needs no second document
        w.append_document([[20] * 5])
        w.finish()
    ds = AlbertProcessor().dataset(Reader(tmp_path / "one"), Tok(), 0)
    ids = original(ds[0])
    assert ids.count(SEP) == 2 and ids.count(20) == 5  # the lone sentence split in two


def test_needs_cls_sep_and_mask(store):
    reader, _ = store

    class NoMask:
        vocab_size = 100
        special_ids = {"cls": 1, "sep": 2}

    with pytest.raises(DataError, match=r"\[MASK\]"):
        AlbertProcessor().dataset(reader, NoMask(), 0)
    with pytest.raises(ValueError):
        AlbertProcessorConfig(random_next_prob=0.5)
