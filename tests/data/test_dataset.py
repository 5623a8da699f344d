"""The shared dataset machinery: collate of prefixed keys, token gathering, span masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tpcli.data.batch import BatchKey, count_units
from tpcli.data.dataset import DocumentStream, ExampleDataset, TokenStore, special_id
from tpcli.data.format import Reader, Writer
from tpcli.data.masking import (
    IGNORE,
    MaskingConfig,
    choose_positions,
    example_generator,
    place_spans,
    span_lengths,
)
from tpcli.errors import DataError, PluginError


class Tok:
    vocab_size = 1000
    special_ids = {"pad": 7, "cls": 1, "sep": 2, "mask": 3}


def write(folder, docs, shard_tokens=10**9) -> Reader:
    with Writer(folder, 1000, {}, shard_tokens=shard_tokens) as w:
        for d in docs:
            w.append_document(d)
        w.finish()
    return Reader(folder)


KEYS = (BatchKey("input_ids", "int64", ("T",), pad=7, mask="attention_mask", unit="tokens"),
        BatchKey("tgt_input_ids", "int64", ("T",), pad=7, mask="tgt_attention_mask"),
        BatchKey("lm_labels", "int64", ("T",), pad=IGNORE),
        BatchKey("position_ids", "int64", ("T",), pad=0),
        BatchKey("labels", "int64", ()),
        BatchKey("pixel_values", "float32", (3, 2, 2), unit="images"))


class Declared(ExampleDataset):
    def batch_keys(self):
        return KEYS


def test_collate_pads_and_masks_as_declared(tmp_path):
    ds = Declared(write(tmp_path / "d", [[[10]]]), Tok(), 0)
    examples = [
        {"input_ids": torch.tensor([10, 11, 12]), "tgt_input_ids": torch.tensor([5]),
         "lm_labels": torch.tensor([20]), "position_ids": torch.tensor([0, 1, 0]),
         "labels": torch.tensor(1), "pixel_values": torch.zeros(3, 2, 2)},
        {"input_ids": torch.tensor([13]), "tgt_input_ids": torch.tensor([5, 21]),
         "lm_labels": torch.tensor([21, 22]), "position_ids": torch.tensor([4]),
         "labels": torch.tensor(0), "pixel_values": torch.ones(3, 2, 2)},
    ]
    b = ds.collate(examples)
    assert b["input_ids"].tolist() == [[10, 11, 12], [13, 7, 7]]
    assert b["attention_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert b["tgt_input_ids"].tolist() == [[5, 7], [5, 21]]
    assert b["tgt_attention_mask"].tolist() == [[True, False], [True, True]]
    assert b["lm_labels"].tolist() == [[20, IGNORE], [21, 22]]
    assert b["position_ids"].tolist() == [[0, 1, 0], [4, 0, 0]]
    assert b["labels"].tolist() == [1, 0]
    assert b["pixel_values"].shape == (2, 3, 2, 2) and b["pixel_values"][1].eq(1).all()
    assert b["attention_mask"].dtype == torch.bool
    assert count_units(b, KEYS) == ("tokens", 4)  # the first counted key's real positions
    assert count_units(b, KEYS[-1:]) == ("images", 2)


def test_collate_refuses_what_is_not_declared(tmp_path):
    store = write(tmp_path / "d", [[[10]]])
    ex = {"input_ids": torch.tensor([1]), "extra": torch.tensor(0)}
    with pytest.raises(PluginError, match="produced the batch key 'extra' but does not declare"):
        Declared(store, Tok(), 0).collate([ex])
    with pytest.raises(PluginError, match="ExampleDataset declares no batch_keys"):
        ExampleDataset(store, Tok(), 0).collate([ex])
    odd = {"input_ids": torch.tensor([1]), "pixel_values": torch.zeros(3, 2, 3)}
    with pytest.raises(PluginError, match="declared fixed-size"):
        Declared(store, Tok(), 0).collate([odd | {"pixel_values": torch.zeros(3, 2, 2)}, odd])


def test_token_store_and_stream_cross_shards(tmp_path):
    docs = [[[10, 11], [12]], [[13, 14, 15]], [[16]], [[17, 18], [19, 20]]]
    reader = write(tmp_path / "d", docs, shard_tokens=3)
    assert len(reader.meta["shards"]) > 1
    assert TokenStore(reader).gather(np.array([[0, 9], [3, 5]])).tolist() == [[10, 19], [13, 15]]
    stream = DocumentStream(reader, 2)
    flat = [10, 11, 12, 2, 13, 14, 15, 2, 16, 2, 17, 18, 19, 20, 2]
    assert stream.total == len(flat)
    ids, doc, sep = stream.window(2, 12)
    assert ids.tolist() == flat[2:12]
    assert doc.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 3, 3]
    assert sep.tolist() == [t == 2 for t in flat[2:12]]


def test_special_id_names_the_missing_token():
    assert special_id({"sep": 4}, ("eos", "sep"), "lm", "x") == 4
    with pytest.raises(DataError, match=r"'eos' or 'sep'.*\['pad'\]"):
        special_id({"pad": 0}, ("eos", "sep"), "lm", "the separator")


def test_place_spans_never_overlap_and_are_placed_at_random():
    counts = torch.zeros(20)
    for i in range(600):
        g = example_generator(0, 0, i)
        lengths = torch.tensor([3, 1, 4, 0])
        starts = place_spans(20, lengths, g)
        cover = torch.zeros(20, dtype=torch.long)
        for s, n in zip(starts.tolist(), lengths.tolist()):
            cover[s:s + n] += 1
        assert cover.max() <= 1 and int(cover.sum()) == 8 and (starts + lengths <= 20).all()
        counts += cover
    share = counts / 600  # 8 of 20 units covered; edges less often (a span cannot straddle them)
    assert torch.allclose(share, share.flip(0), atol=0.08)  # no side is favoured
    inner = share[4:16]
    assert float(inner.max() - inner.min()) < 0.12 and float(share[0]) > 0.1


def test_span_length_distributions():
    g = torch.Generator().manual_seed(0)
    geo = span_lengths("geometric", 200_000, g).double()
    assert geo.min() == 1 and geo.max() == 10
    assert geo.mean() == pytest.approx(3.797, abs=0.02)  # SpanBERT: mean 3.8 for p=0.2, max 10
    ngram = span_lengths("ngram", 200_000, g, max_span=3)
    share = torch.bincount(ngram, minlength=4)[1:].double() / ngram.numel()
    assert torch.allclose(share, torch.tensor([6 / 11, 3 / 11, 2 / 11], dtype=torch.float64),
                          atol=0.005)  # odds 1 : 1/2 : 1/3


def test_geometric_span_masking_budget_and_contiguity():
    maskable = torch.ones(128, dtype=torch.bool)
    maskable[[0, 60, 127]] = False
    runs = []
    for i in range(300):
        chosen = choose_positions(maskable, 0.15, example_generator(3, 0, i), span="geometric")
        assert chosen.unique().numel() == chosen.numel() == round(125 * 0.15)
        assert maskable[chosen].all()
        marked = torch.zeros(130, dtype=torch.bool)
        marked[chosen + 1] = True
        runs.append(int((marked[1:] & ~marked[:-1]).sum()))
    # Spans average 3.8 tokens; adjacent spans merge into one run, so runs are a bit longer.
    mean_run = 19 / np.mean(runs)
    assert 3.5 < mean_run < 5.0


def test_span_masking_with_whole_words_takes_whole_words():
    starts = torch.ones(64, dtype=torch.bool)
    starts[list(range(1, 64, 2))] = False  # every word is two pieces
    maskable = torch.ones(64, dtype=torch.bool)
    for i in range(100):
        chosen = choose_positions(maskable, 0.15, example_generator(0, 1, i), starts,
                                  span="geometric")
        picked = torch.zeros(64, dtype=torch.bool)
        picked[chosen] = True
        assert torch.equal(picked[0::2], picked[1::2])  # both pieces of a word, or neither
        assert 2 <= int(picked.sum()) <= round(64 * 0.15)


def test_masking_config_span_options():
    assert MaskingConfig().span == "none"
    assert MaskingConfig(span="geometric").max_span is None
    with pytest.raises(ValueError):
        MaskingConfig(span="poisson")


def test_tsv_documents_are_their_fields():
    from tpcli.data.preprocess import documents

    lines = ["pos\tA good film ", "", "neg\tbad\tworse", "  "]
    assert list(documents(lines, "tsv")) == [["pos", "A good film"], ["neg", "bad", "worse"]]
    with pytest.raises(DataError, match="corpus line 3 .* 1 tab-separated field"):
        list(documents(["a\tb", "", "no tab here"], "tsv"))
