"""Fixtures for training tests: a tiny BERT recipe and a real corpus (Python's own docs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tpcli.testing.recipes import TINY_BERT

ROOT = Path(__file__).resolve().parents[2]
TP = [sys.executable, "-m", "tpcli.cli.main"]

TINY_RECIPE = TINY_BERT


def run_tp(*args: str, env: dict | None = None, cwd: Path | None = None,
           timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([*TP, *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real corpus: the first 20 pydoc topics, one sentence per line."""
    out = tmp_path_factory.mktemp("corpus") / "pydoc.txt"
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from pydoc_corpus import sentences
    finally:
        sys.path.pop(0)
    from pydoc_data.topics import topics

    with open(out, "w", encoding="utf-8") as f:
        for name in sorted(topics)[:20]:
            f.write("\n".join(sentences(topics[name])) + "\n\n")
    return out


@pytest.fixture(scope="session")
def tiny_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("recipe") / "tiny"
    d.mkdir()
    (d / "recipe.yaml").write_text(TINY_RECIPE)
    (d / "README.md").write_text("A tiny BERT for tests.\n")
    return d


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, tiny_recipe: Path, corpus: Path) -> Path:
    out = tmp_path_factory.mktemp("data") / "tiny"
    r = run_tp("preprocess", str(tiny_recipe), "--corpus", str(corpus), "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def losses(run: Path) -> dict[int, float]:
    """step -> loss; on resume the later line for a step wins (it is the one that counts)."""
    out: dict[int, float] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "event" not in rec:  # a resume marker carries no metrics
            out[rec["step"]] = rec["loss"]
    return out
