"""The bart processor: sentence permutation, Poisson text infilling, HF decoder inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tp_text.bart_processor import (
    BartProcessor,
    BartProcessorConfig,
    infill,
    poisson_spans,
    sentence_blocks,
)
from tpcli.data.format import Reader, Writer
from tpcli.data.masking import example_generator
from tpcli.errors import DataError

PAD, BOS, EOS, MASK = 1, 0, 2, 4  # BART's ids: <s>=0, <pad>=1, </s>=2, <mask> (here 4)
FIRST = 10  # every token of sentence k is FIRST + k


class Tok:
    vocab_size = 5000
    special_ids = {"bos": BOS, "pad": PAD, "eos": EOS, "mask": MASK, "unk": 3}


def corpus(n_docs: int, seed: int = 0) -> list[list[list[int]]]:
    rng = np.random.default_rng(seed)
    docs, k = [], 0
    for _ in range(n_docs):
        doc = []
        for _ in range(int(rng.integers(1, 9))):
            doc.append([FIRST + k] * int(rng.integers(1, 20)))
            k += 1
        docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Reader, list[list[list[int]]]]:
    docs = corpus(60)
    out = tmp_path_factory.mktemp("bart") / "ds"
    with Writer(out, 5000, {}, shard_tokens=500) as w:
        for d in docs:
            w.append_document(d)
        w.finish()
    return Reader(out), docs


def test_poisson_spans_cover_the_budget_exactly():
    lengths_all = []
    for i in range(400):
        spans = poisson_spans(30, 3.0, example_generator(0, 0, i))
        assert int(spans.sum()) == 30 and (spans >= 0).all()
        lengths_all += spans[:-1].tolist()  # the last one is cut to fit
    assert np.mean(lengths_all) == pytest.approx(3.0, abs=0.1)  # Poisson(3)
    assert np.mean(np.array(lengths_all) == 0) == pytest.approx(math.exp(-3), abs=0.015)
    assert poisson_spans(0, 3.0, example_generator(0, 0, 0)).numel() == 0


def test_infill_replaces_each_span_with_one_mask():
    body = torch.arange(100, 140)
    for i in range(200):
        g = example_generator(1, 0, i)
        spans = poisson_spans(12, 3.0, g)
        out = infill(body, spans, MASK, g)
        kept = out[out != MASK]
        assert int((out == MASK).sum()) == spans.numel()  # one mask per span, 0-length too
        assert kept.numel() == 40 - 12
        assert (torch.diff(kept) > 0).all()  # the rest, in order
    exact = infill(torch.tensor([5, 6, 7]), torch.tensor([0]), MASK, example_generator(0, 0, 0))
    assert sorted(exact.tolist()) == [MASK, 5, 6, 7] and exact[exact != MASK].tolist() == [5, 6, 7]


def test_sentence_blocks_fit(store):
    reader, _ = store
    lengths, bounds = reader.sequence_lengths(), reader.document_bounds()
    start, end, skip = sentence_blocks(lengths, bounds, 30)
    assert (skip == 0).all()  # no sentence is longer than 30 tokens here
    assert start[0] == 0 and end[-1] == len(lengths) and (start[1:] == end[:-1]).all()
    cum = np.concatenate([[0], np.cumsum(lengths)])
    assert (cum[end] - cum[start] <= 30).all()
    doc = np.searchsorted(bounds, start, side="right") - 1
    assert (end <= bounds[doc + 1]).all()  # never across documents


def test_a_long_sentence_is_split_not_cut():
    lengths = np.array([3, 25, 4, 4])  # one document; sentence 1 is longer than 10
    start, end, skip = sentence_blocks(lengths, np.array([0, 4]), 10)
    assert list(zip(start, end, skip)) == [(0, 1, 0), (1, 2, 0), (1, 2, 10), (1, 2, 20),
                                           (2, 4, 0)]


def test_examples(store):
    reader, docs = store
    sentences = [s for d in docs for s in d]
    ds = BartProcessor(BartProcessorConfig(seq_length=32)).dataset(reader, Tok(), 7)
    permuted = 0
    for i in range(len(ds)):
        ex = ds[i]
        src, tgt = ex["input_ids"].tolist(), ex["lm_labels"].tolist()
        s0, s1, skip = int(ds.start[i]), int(ds.end[i]), int(ds.skip[i])
        body = [t for s in sentences[s0:s1] for t in s][skip:skip + 30]
        assert tgt == [BOS] + body + [EOS]  # the original text, in order
        # HF shift_tokens_right(labels, pad, decoder_start_token_id=eos): [eos, bos, ...]
        assert ex["tgt_input_ids"].tolist() == [EOS] + tgt[:-1]
        assert src[0] == BOS and src[-1] == EOS and len(src) <= 32
        noised = [t for t in src[1:-1] if t != MASK]
        assert len(noised) == len(body) - math.ceil(0.3 * len(body))
        # kept tokens keep each sentence together, sentences in some order
        order = [t for k, t in enumerate(noised) if k == 0 or noised[k - 1] != t]
        assert len(order) == len(set(order))
        if order != sorted(order):
            permuted += 1
    assert permuted > len(ds) // 4


def test_no_permutation_keeps_order(store):
    reader, _ = store
    ds = BartProcessor(BartProcessorConfig(seq_length=32, permute_sentences=False)).dataset(
        reader, Tok(), 7)
    for i in range(len(ds)):
        noised = [t for t in ds[i]["input_ids"].tolist()[1:-1] if t != MASK]
        assert noised == sorted(noised)


def test_mask_ratio_over_the_dataset(store):
    reader, _ = store
    ds = BartProcessor(BartProcessorConfig(seq_length=64, mask_ratio=0.5)).dataset(
        reader, Tok(), 1)
    masked = total = 0
    for i in range(len(ds)):
        n = len(ds[i]["lm_labels"]) - 2
        kept = int((ds[i]["input_ids"][1:-1] != MASK).sum())
        masked += n - kept
        total += n
    assert masked / total == pytest.approx(0.5, abs=0.02)  # ceil per example


def test_deterministic_and_errors(store):
    reader, _ = store
    a = BartProcessor().dataset(reader, Tok(), 3)
    b = BartProcessor().dataset(reader, Tok(), 3)
    assert all(torch.equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(20))
    b.set_epoch(2)
    assert sum(not torch.equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(20)) > 10

    class NoMask:
        vocab_size = 100
        special_ids = {"bos": 0, "eos": 2}

    with pytest.raises(DataError, match="bart processor needs a 'mask'"):
        BartProcessor().dataset(reader, NoMask(), 0)
