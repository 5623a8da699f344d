"""The bert and mlm processors on a synthetic corpus whose every token names its sentence."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from tp_text.bert_processor import (
    BertProcessor,
    BertProcessorConfig,
    chunk_documents,
    trimmed_lengths,
)
from tp_text.mlm_processor import MlmProcessor, MlmProcessorConfig
from tpcli.data.format import Reader, Writer
from tpcli.errors import DataError

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
FIRST = 10  # sentence k (global) is made of the token FIRST + k, repeated


class FakeTokenizer:
    vocab_size = 5000
    special_ids = {"pad": PAD, "unk": UNK, "cls": CLS, "sep": SEP, "mask": MASK}

    def continuation_mask(self) -> np.ndarray:
        return np.zeros(self.vocab_size, dtype=bool)


def corpus(n_docs: int, seed: int = 0) -> list[list[list[int]]]:
    """Documents of 1-12 sentences of 1-40 tokens; every token of sentence k is FIRST + k."""
    rng = np.random.default_rng(seed)
    docs, k = [], 0
    for _ in range(n_docs):
        doc = []
        for _ in range(int(rng.integers(1, 13))):
            doc.append([FIRST + k] * int(rng.integers(1, 41)))
            k += 1
        docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Reader, list[list[list[int]]]]:
    docs = corpus(120)
    out = tmp_path_factory.mktemp("proc") / "ds"
    with Writer(out, FakeTokenizer.vocab_size, {}, shard_tokens=3000) as w:
        for d in docs:
            w.append_document(d)
        w.finish()
    return Reader(out), docs


def original(example: dict[str, torch.Tensor]) -> torch.Tensor:
    """The ids before masking: labels hold the original where a token was predicted."""
    ids = example["input_ids"].clone()
    picked = example["mlm_labels"] != -100
    ids[picked] = example["mlm_labels"][picked]
    return ids


def test_bert_pairs(store):
    reader, docs = store
    sent_doc = {}
    k = 0
    for j, d in enumerate(docs):
        for _ in d:
            sent_doc[FIRST + k] = j
            k += 1
    ds = BertProcessor(BertProcessorConfig(seq_length=48)).dataset(reader, FakeTokenizer(), 3)
    labels, untrimmed = [], 0
    for i in range(len(ds)):
        ex = ds[i]
        ids = original(ex).tolist()
        assert len(ids) <= 48 and ids[0] == CLS and ids[-1] == SEP
        seps = [p for p, t in enumerate(ids) if t == SEP]
        assert len(seps) == 2
        a, b = ids[1:seps[0]], ids[seps[0] + 1:-1]
        assert a and b
        seg = ex["segment_ids"].tolist()
        assert seg == [0] * (seps[0] + 1) + [1] * (len(ids) - seps[0] - 1)
        a_sents, b_sents = sorted(set(a)), sorted(set(b))
        assert a_sents == list(range(a_sents[0], a_sents[-1] + 1))  # A: consecutive sentences
        assert b_sents == list(range(b_sents[0], b_sents[-1] + 1))
        label = int(ex["sp_labels"])
        if label == 0:  # IsNext: B continues A in the same document
            assert sent_doc[b_sents[-1]] == sent_doc[a_sents[0]]
            if len(ids) < 48:  # untrimmed: B starts right after A's last sentence
                assert b_sents[0] == a_sents[-1] + 1
                untrimmed += 1
            else:  # trimming may drop whole sentences at A's back / B's front
                assert b_sents[0] > a_sents[-1]
        else:  # NotNext: B comes from another document
            assert sent_doc[b_sents[0]] != sent_doc[a_sents[0]]
        assert not (ex["mlm_labels"][torch.tensor(ids) == SEP] != -100).any()
        labels.append(label)
    assert len(ds) > 100 and 0.4 < np.mean(labels) < 0.6 and untrimmed > 20


def test_bert_deterministic_and_epoch_dependent(store):
    reader, _ = store
    ds = BertProcessor(BertProcessorConfig(seq_length=48)).dataset(reader, FakeTokenizer(), 3)
    first = [ds[i] for i in range(30)]
    again = BertProcessor(BertProcessorConfig(seq_length=48)).dataset(reader, FakeTokenizer(), 3)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(first, again))
    ds.set_epoch(1)
    second = [ds[i] for i in range(30)]
    differ = sum(not torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(first, second))
    assert differ > 20


def test_chunks_cover_every_sentence_once(store):
    reader, _ = store
    lengths, bounds = reader.sequence_lengths(), reader.document_bounds()
    start, end, target, doc = chunk_documents(lengths, bounds, 45, 0.1,
                                              np.random.default_rng(0))
    assert start[0] == 0 and end[-1] == len(lengths)
    assert (start[1:] == end[:-1]).all()  # contiguous, no gap, no overlap
    assert ((bounds[doc] <= start) & (end <= bounds[doc + 1])).all()  # within one document
    cum = np.concatenate([[0], np.cumsum(lengths)])
    tokens = cum[end] - cum[start]
    full = end < bounds[doc + 1]  # a chunk cut before its document's end reached its target
    assert (tokens[full] >= target[full]).all()
    assert (tokens[full] - lengths[end[full] - 1] < target[full]).all()  # ...and no earlier
    assert 0.03 < (target < 45).mean() < 0.2


def test_trimmed_lengths_match_bert_truncate_seq_pair():
    def loop(la: int, lb: int, m: int) -> tuple[int, int]:
        while la + lb > m:  # BERT's create_pretraining_data.truncate_seq_pair
            if la > lb:
                la -= 1
            else:
                lb -= 1
        return la, lb

    for la in range(1, 30):
        for lb in range(1, 30):
            for m in (2, 5, 17, 40):
                assert trimmed_lengths(la, lb, m) == loop(la, lb, m)


def test_bert_needs_two_documents(tmp_path):
    with Writer(tmp_path / "one", 5000, {}) as w:
        w.append_document([[20, 21], [22]])
        w.finish()
    with pytest.raises(DataError, match="at least 2"):
        BertProcessor().dataset(Reader(tmp_path / "one"), FakeTokenizer(), 0)


def test_mlm_blocks_are_the_document_stream(store):
    reader, docs = store
    ds = MlmProcessor(MlmProcessorConfig(seq_length=32)).dataset(reader, FakeTokenizer(), 5)
    stream = []
    for d in docs:
        stream += [t for s in d for t in s] + [SEP]
    stream = stream[:-1]  # no separator after the last document
    assert len(ds) == -(-len(stream) // 30)
    body = []
    for i in range(len(ds)):
        ex = ds[i]
        ids = original(ex).tolist()
        assert ids[0] == CLS and ids[-1] == SEP and len(ids) <= 32
        assert (ex["segment_ids"] == 0).all() and "sp_labels" not in ex
        assert (ex["mlm_labels"] != -100).sum() >= 1
        body += ids[1:-1]
    assert body == stream
