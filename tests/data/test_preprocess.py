"""tp preprocess: corpus -> memory-mapped dataset, every corpus source, every bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec
import pytest

from tpcli.data.format import Reader
from tpcli.errors import DataError, TpError
from tpcli.verbs import PreprocessRequest, preprocess

TP = Path(sys.executable).parent / "tp"


def run(recipe: Path, corpus: str | Path, out: Path, **kw: Any) -> dict[str, Any]:
    return preprocess(PreprocessRequest(str(recipe), str(corpus), out, **kw))


def leftovers(folder: Path) -> list[str]:
    """Temporary dataset folders a failed run might have left behind."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_sentences_round_trip(recipe_dir, sentences_corpus, docs, tokenizer, tmp_path):
    out = tmp_path / "ds"
    summary = run(recipe_dir(), sentences_corpus, out)
    flat = [s for d in docs for s in d]
    expected = tokenizer.encode_batch(flat)
    n_tokens = sum(map(len, expected))
    assert (summary["documents"], summary["sequences"], summary["tokens"]) == (
        len(docs), len(flat), n_tokens)
    assert summary["shards"] == 1 and summary["tokens_per_s"] > 0
    reader = Reader(out)
    assert (reader.n_documents, reader.n_sequences, reader.n_tokens) == (
        len(docs), len(flat), n_tokens)
    k = 0
    for j, doc in enumerate(docs):
        stored = reader.document(j)
        assert len(stored) == len(doc)
        for seq in stored:
            assert seq.tolist() == expected[k]
            k += 1
    for i in range(0, len(flat), 37):  # decoding the stored ids gives the tokenized text back
        text = tokenizer.decode(reader.sequence(i).tolist())
        assert text == tokenizer.decode(expected[i])
        assert text.split()[0].replace("##", "") in flat[i].lower()
    meta = reader.meta
    assert meta["tokenizer"]["fingerprint"] == tokenizer.fingerprint()
    assert meta["processor"] == {**meta["processor"], "name": "bert", "corpus_format": "sentences"}
    assert meta["dtype"] == "uint16" and meta["format_version"] == 1
    assert leftovers(tmp_path) == []


def test_documents_format(recipe_dir, documents_corpus, docs, tokenizer, tmp_path):
    out = tmp_path / "ds"
    summary = run(recipe_dir(processor="mlm"), documents_corpus, out)
    expected = tokenizer.encode_batch([" ".join(d) for d in docs])
    reader = Reader(out)
    assert summary["documents"] == summary["sequences"] == len(docs)
    assert [reader.document(j)[0].tolist() for j in range(len(docs))] == expected
    assert reader.meta["processor"]["corpus_format"] == "documents"


@pytest.mark.parametrize("how", ["memory", "file-url", "gzip"])
def test_corpus_sources(how, recipe_dir, sentences_corpus, tokenizer, tmp_path):
    data = sentences_corpus.read_bytes()
    if how == "memory":
        fs = fsspec.filesystem("memory")
        with fs.open("/tp-test/pydoc.txt", "wb") as f:
            f.write(data)
        corpus = "memory://tp-test/pydoc.txt"
    elif how == "file-url":
        corpus = sentences_corpus.as_uri()
    else:
        corpus = str(tmp_path / "pydoc.txt.gz")
        Path(corpus).write_bytes(gzip.compress(data))
    try:
        run(recipe_dir(), corpus, tmp_path / "ds")
    finally:
        if how == "memory":
            fs.rm("/tp-test", recursive=True)
    reader = Reader(tmp_path / "ds")
    lines = [s for s in data.decode().splitlines() if s.strip()]
    stored = [reader.sequence(i).tolist() for i in range(reader.n_sequences)]
    assert stored == tokenizer.encode_batch(lines)


def test_shards_and_workers(recipe_dir, sentences_corpus, tmp_path):
    summary = run(recipe_dir(), sentences_corpus, tmp_path / "ds", shard_tokens=20_000, workers=1)
    reader = Reader(tmp_path / "ds")
    assert summary["shards"] == len(reader.meta["shards"]) > 3
    assert sum(s["tokens"] for s in reader.meta["shards"]) == reader.n_tokens


# ------------------------------------------------------------------ bad inputs


BAD_PREFIX = b"A first good line.\nAnd a second one.\n\nA new document, "


def bad_input(case: str, tmp_path: Path, recipe_dir) -> tuple[Path, str, Path, list[str]]:
    """(recipe, corpus, out, words the message must contain) for one bad input."""
    recipe = recipe_dir()
    out = tmp_path / "ds"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Some text.\n", encoding="utf-8")
    if case == "missing-corpus":
        return recipe, str(tmp_path / "nope.txt"), out, ["nope.txt", "not found"]
    if case == "empty-corpus":
        corpus.write_text("\n   \n\n", encoding="utf-8")
        return recipe, str(corpus), out, ["empty", "no tokens"]
    if case == "not-utf8":
        corpus.write_bytes(BAD_PREFIX + b"caf\xe9 au lait\n")
        where = f"byte offset {len(BAD_PREFIX) + 3}"
        return recipe, str(corpus), out, ["not valid UTF-8", "line 4", where, "re-encode"]
    if case == "out-exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        return recipe, str(corpus), out, ["already exists", "choose another --out or delete it"]
    if case == "missing-vocab":
        recipe = recipe_dir("r2", vocab="vocabs/none.txt")
        return recipe, str(corpus), out, ["not found", str(recipe / "vocabs" / "none.txt")]
    raise AssertionError(case)


CASES = ["missing-corpus", "empty-corpus", "not-utf8", "out-exists", "missing-vocab"]


def check_nothing_left(case: str, out: Path) -> None:
    if case == "out-exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]  # untouched
    else:
        assert not out.exists()
    assert leftovers(out.parent) == []


@pytest.mark.parametrize("case", CASES)
def test_bad_input_api(case, tmp_path, recipe_dir):
    recipe, corpus, out, words = bad_input(case, tmp_path, recipe_dir)
    with pytest.raises(TpError) as info:
        run(recipe, corpus, out)
    for word in words:
        assert word in str(info.value)
    assert info.value.hint
    check_nothing_left(case, out)


def test_bad_bytes_after_written_batches(recipe_dir, sentences_corpus, tmp_path, monkeypatch):
    """A decoding error deep in the corpus, after several batches were written: the line number
    counts every line and the half-written dataset is removed."""
    import tpcli.data.preprocess as pp

    monkeypatch.setattr(pp, "BATCH_LINES", 200)
    good = sentences_corpus.read_bytes()
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(good + b"\n\xff\xfe\n")
    with pytest.raises(DataError) as info:
        run(recipe_dir(), corpus, tmp_path / "ds")
    line = good.count(b"\n") + 2  # the blank line, then the bad one
    assert f"line {line}, byte offset {len(good) + 1}" in str(info.value)
    check_nothing_left("not-utf8", tmp_path / "ds")


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory, recipe_factory) -> dict[str, tuple[Any, Path]]:
    """Every bad input through the real `tp` command, run side by side (start-up is the cost)."""
    procs = {}
    for case in CASES:
        base = tmp_path_factory.mktemp(case)
        recipe, corpus, out, words = bad_input(
            case, base, lambda name="recipe", **kw: recipe_factory(base / name, **kw))
        cmd = [str(TP), "preprocess", str(recipe), "--corpus", corpus, "--out", str(out)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs[case] = (proc, out, words)
    results = {}
    for case, (proc, out, words) in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        results[case] = (proc.returncode, stdout, stderr, out, words)
    return results


@pytest.mark.parametrize("case", CASES)
def test_bad_input_cli(case, cli_results):
    rc, stdout, stderr, out, words = cli_results[case]
    assert rc == 1, stderr
    assert "Traceback" not in stderr and stderr.startswith("error: ")
    for word in words:
        assert word in " ".join(stderr.split()), stderr
    assert "hint:" in stderr
    check_nothing_left(case, out)


MEMORY_SCRIPT = """
import contextlib, json, pathlib, sys, tracemalloc
import tpcli.data.format as fmt
import tpcli.data.preprocess as pp
from tpcli.verbs import PreprocessRequest, preprocess

# Many batches and flushes even in the small corpus: we compare steady states.
pp.BATCH_LINES, fmt.FLUSH_TOKENS = 128, 4096
opened = pp.open_corpus
base = []

@contextlib.contextmanager
def traced(corpus):  # measure the pass over the corpus, not the recipe and tokenizer set-up
    with opened(corpus) as f:
        tracemalloc.reset_peak()
        base.append(tracemalloc.get_traced_memory()[0])
        yield f

pp.open_corpus = traced
recipe, out = sys.argv[1], pathlib.Path(sys.argv[2])
preprocess(PreprocessRequest(recipe, sys.argv[3], out / "warm"))  # imports and caches
extra = []
for i, corpus in enumerate(sys.argv[3:]):
    tracemalloc.start()
    preprocess(PreprocessRequest(recipe, corpus, out / f"ds{i}"))
    extra.append(tracemalloc.get_traced_memory()[1] - base[-1])
    tracemalloc.stop()
print(json.dumps(extra))
"""


def test_memory_flat_as_corpus_grows(recipe_dir, sentences_corpus, tmp_path):
    """Peak Python memory of preprocessing a 10x larger corpus stays about the same."""
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    text = sentences_corpus.read_text(encoding="utf-8")
    text = text[: text.index("\n\n", len(text) // 4)]  # a quarter: ~32k tokens
    small.write_text(text, encoding="utf-8")
    big.write_text("\n\n".join([text] * 10), encoding="utf-8")
    cmd = [sys.executable, "-c", MEMORY_SCRIPT, str(recipe_dir()), str(tmp_path), str(small),
           str(big)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    small_peak, big_peak = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Reader(tmp_path / "ds1").n_tokens == 10 * Reader(tmp_path / "ds0").n_tokens
    # Holding the corpus would cost ~10x more: 320k tokens as Python ints alone are ~11 MB.
    print(small_peak, big_peak)
    assert big_peak < 1.5 * small_peak + 500_000, (small_peak, big_peak)
