"""The memory-mapped dataset format: writer/reader round trip, shards, atomicity, bad datasets."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from tpcli.data import format as fmt
from tpcli.data.format import Reader, Writer
from tpcli.errors import DataError


def random_docs(n_docs: int, vocab: int, seed: int = 0) -> list[list[list[int]]]:
    rng = np.random.default_rng(seed)
    return [
        [rng.integers(0, vocab, rng.integers(1, 30)).tolist() for _ in range(rng.integers(1, 8))]
        for _ in range(n_docs)
    ]


def write(out: Path, docs: list[list[list[int]]], vocab: int = 1000, **kw) -> dict:
    with Writer(out, vocab, {"corpus": "test"}, **kw) as w:
        for d in docs:
            w.append_document(d)
        return w.finish()


@pytest.mark.parametrize("vocab,dtype", [(1000, "uint16"), (65536, "uint16"), (70000, "uint32")])
def test_round_trip_and_dtype(tmp_path, vocab, dtype):
    docs = random_docs(50, vocab)
    meta = write(tmp_path / "ds", docs, vocab)
    reader = Reader(tmp_path / "ds")
    assert meta["dtype"] == dtype == reader.dtype.name
    flat = [s for d in docs for s in d]
    assert reader.n_documents == len(docs) and reader.n_sequences == len(flat)
    assert reader.n_tokens == sum(map(len, flat))
    assert [reader.sequence(i).tolist() for i in range(len(flat))] == flat
    assert [[s.tolist() for s in reader.document(j)] for j in range(len(docs))] == docs
    assert reader.sequence_lengths().tolist() == [len(s) for s in flat]
    assert reader.document_bounds().tolist() == np.cumsum([0] + [len(d) for d in docs]).tolist()
    assert reader.sequences(3, 6).tolist() == sum(flat[3:6], [])
    assert (tmp_path / "ds" / "shard-00000.tokens.bin").stat().st_size == (
        reader.n_tokens * np.dtype(dtype).itemsize)


def test_sharding_keeps_documents_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(fmt, "FLUSH_TOKENS", 64)  # many flushes per shard too
    docs = random_docs(300, 500, seed=1)
    meta = write(tmp_path / "ds", docs, shard_tokens=400)
    reader = Reader(tmp_path / "ds")
    assert len(meta["shards"]) > 5
    for shard in meta["shards"]:  # a shard closes at the first document past its size
        assert shard["tokens"] < 400 + 8 * 30
    assert [[s.tolist() for s in reader.document(j)] for j in range(len(docs))] == docs
    flat = [s for d in docs for s in d]
    assert reader.sequences(0, len(flat)).tolist() == sum(flat, [])  # across shards
    first, end = reader.document_range(len(docs) - 1)
    assert end == len(flat) and first == len(flat) - len(docs[-1])


def test_empty_sequences_and_documents_are_skipped(tmp_path):
    with Writer(tmp_path / "ds", 100, {}) as w:
        assert w.append_document([[1, 2], [], [3]])
        assert not w.append_document([[], []])
        assert not w.append_document([])
        w.finish()
    reader = Reader(tmp_path / "ds")
    assert reader.n_documents == 1 and [s.tolist() for s in reader.document(0)] == [[1, 2], [3]]


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with Writer(tmp_path / "ds", 100, {}) as w:
            w.append_document([[1, 2, 3]])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(DataError, match="already exists"):
        Writer(tmp_path / "ds", 100, {})


def test_reader_pickles_without_the_data(tmp_path):
    write(tmp_path / "ds", random_docs(200, 1000))
    reader = Reader(tmp_path / "ds")
    before = reader.sequence(5).tolist()
    blob = pickle.dumps(reader)
    assert len(blob) < 4000 < reader.n_tokens * 2  # the maps reopen, they are not copied
    assert pickle.loads(blob).sequence(5).tolist() == before


@pytest.mark.parametrize("damage,words", [
    ("no-meta", "no meta.json"),
    ("newer", "format version 3"),
    ("not-ours", "not a tp dataset"),
    ("missing-file", "missing shard-00000.seqs.idx"),
    ("truncated", "truncated or corrupt"),
    ("no-folder", "does not exist"),
])
def test_bad_datasets(tmp_path, damage, words):
    out = tmp_path / "ds"
    write(out, random_docs(10, 1000))
    meta = json.loads((out / "meta.json").read_text())
    if damage == "no-meta":
        (out / "meta.json").unlink()
    elif damage in ("newer", "not-ours"):
        key, value = ("format_version", 3) if damage == "newer" else ("format", "other")
        (out / "meta.json").write_text(json.dumps({**meta, key: value}))
    elif damage == "missing-file":
        (out / "shard-00000.seqs.idx").unlink()
    elif damage == "truncated":
        tokens = out / "shard-00000.tokens.bin"
        tokens.write_bytes(tokens.read_bytes()[:-2])
    else:
        out = tmp_path / "elsewhere"
    with pytest.raises(DataError, match=words) as info:
        Reader(out)
    assert info.value.hint
