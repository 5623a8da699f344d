"""`make demo`'s parts: the held-out split (scripts/pydoc_corpus.py), the vocabulary trained on
the corpus (recipes/bert-tiny/tokenizer.json), the scoring against a unigram guess
(scripts/demo_eval.py), and the whole chain end to end on a shrunk model."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TP = [sys.executable, "-m", "tpcli.cli.main"]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _run(*args: str | Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def demo_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("demo")
    _run(sys.executable, "scripts/pydoc_corpus.py", d / "corpus.txt", "--heldout", d / "heldout.txt")
    return d / "corpus.txt", d / "heldout.txt"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from tpcli.api import load_recipe, load_tokenizer

    return load_tokenizer(load_recipe("bert-tiny"))


def test_heldout_sentences_never_reach_the_corpus(demo_corpus: tuple[Path, Path]) -> None:
    from pydoc_data.topics import topics

    pc = _script("pydoc_corpus")
    corpus, held = _lines(demo_corpus[0]), _lines(demo_corpus[1])
    every = {s for text in topics.values() for s in pc.sentences(text)}
    assert len(held) == len(set(held)) >= 150
    assert not set(corpus) & set(held)  # not one held-out sentence is trained on
    assert set(corpus) | set(held) == every  # and nothing else is left out
    assert 0.07 < len(held) / len(every) < 0.13  # one distinct sentence in ten


def test_shipped_vocabulary_fits_the_corpus(tokenizer: Any,
                                            demo_corpus: tuple[Path, Path]) -> None:
    sp = tokenizer.special_ids
    assert tokenizer.vocab_size == 4096  # vs 30,522 in bert-base-uncased's
    assert [sp[k] for k in ("pad", "unk", "cls", "sep", "mask")] == [0, 1, 2, 3, 4]
    ids = [i for row in tokenizer.encode_batch(_lines(demo_corpus[1])) for i in row]
    assert sp["unk"] not in ids  # held-out text too: every character is in the vocabulary
    pieces = [tokenizer.id_to_token(i) for i in ids]
    assert sum(p.startswith("##") for p in pieces) / len(pieces) < 0.1  # mostly whole words


@dataclass
class _Features:
    hidden: torch.Tensor


class _Unigram:
    """A 'model' whose MLM head always predicts one token, whatever the hidden states."""

    def __init__(self, token: int, vocab: int) -> None:
        self.token, self.vocab = token, vocab
        self.targets = {"mlm": self}

    def features(self, batch: dict[str, torch.Tensor]) -> _Features:
        return _Features(torch.zeros(*batch["input_ids"].shape, 8))  # (B, T, H)

    def predict(self, features: _Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = torch.zeros(*features.hidden.shape[:-1], self.vocab)  # (B, T', V)
        logits[..., self.token] = 1.0
        return logits


def test_scoring_masks_every_token_and_finds_the_unigram_guesses(tokenizer: Any,
                                                                  tmp_path: Path) -> None:
    ev = _script("demo_eval")
    items = ev.make_items(["The function returns the value of x.", "An int"], tokenizer, 64)
    tokens = [tokenizer.decode([it.answer]) for it in items]
    assert tokens == ["the", "function", "returns", "the", "value", "of", "x", ".", "an", "int"]
    assert [it.word for it in items] == [True] * 7 + [False] + [True] * 2
    assert [it.sentence for it in items] == [0] * 8 + [1] * 2
    assert all(it.ids[0] == tokenizer.special_ids["cls"] for it in items)
    assert len(ev.make_items(["The function returns the value of x."], tokenizer, 5)) == 3
    corpus = tmp_path / "corpus.txt"
    corpus.write_text('the "value" of\nthe "list"\n\n"x"', encoding="utf-8")
    quote, the = ev.most_frequent(corpus, tokenizer)
    assert (tokenizer.decode([quote]), tokenizer.decode([the])) == ('"', "the")
    top = ev.top_guesses(_Unigram(quote, tokenizer.vocab_size), tokenizer, items, k=3, chunk=4)
    assert top.shape == (10, 3) and top[:, 0].tolist() == [quote] * 10


@pytest.mark.slow
def test_demo_chain_learns_context_in_400_steps(tmp_path: Path,
                                               demo_corpus: tuple[Path, Path]) -> None:
    """The Makefile's commands, with 400 of the demo's 1,000 steps (~40 s on 2 cores)."""
    corpus, held = demo_corpus
    _run(*TP, "preprocess", "bert-tiny", "--corpus", corpus, "--out", tmp_path / "data")
    _run(*TP, "pretrain", "bert-tiny", "--data", tmp_path / "data", "--out", tmp_path / "run",
         "--no-progress", "model.encoder.position=rotary", "pretrain.steps=400",
         "pretrain.save_every=400", timeout=1200)  # ~30 s alone; minutes on a shared machine
    out = _run(sys.executable, "scripts/demo_eval.py", tmp_path / "run", held, corpus).stdout
    assert f"{len(_lines(held))} held-out sentences" in out
    tokens = re.search(r"every token \(([\d,]+)\): model ([\d.]+)%, always '\"' ([\d.]+)%", out)
    words = re.search(r"whole words \(([\d,]+)\): model ([\d.]+)%, always 'the' ([\d.]+)%", out)
    assert tokens and words, out
    assert int(tokens[1].replace(",", "")) > int(words[1].replace(",", "")) > 2000
    assert 5.0 < float(tokens[3]) < 10.0 and 5.0 < float(words[3]) < 10.0  # the baselines
    # it uses context already: 16.4% of held-out tokens right at 400 steps against the unigram
    # guess's 7.4% (the demo's 1,000 steps: 37.3%); stuck at the unigram plateau, as the demo of
    # earlier versions was, a model scores the unigram guess or less
    assert float(tokens[2]) > 1.5 * float(tokens[3]), out
    assert "whose masked word it gets right" in out and "[MASK]" in out
