"""Tasks `regression` and `multilabel` end to end on real text (sentences of Python's docs),
their metrics recomputed from the saved predictions with scipy / scikit-learn, and their
bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score

from tpcli.errors import DataError
from tpcli.downstream.finetune import FinetuneRequest, InferRequest
from tpcli.downstream.tasks import TaskData
from tpcli.verbs import finetune, infer



def _sentences() -> list[str]:
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics)[:40]:
        out += [" ".join(s.split()) for s in topics[name].split(". ") if 4 < len(s.split()) < 30]
    return [s.replace("\t", " ") for s in out[:120]]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Any) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("recipe"), '{batch_size: 8, lr: 2.0e-3, epochs: 2, max_length: 40, seed: 1, log_every: 50}', layers=1, targets='[mlm, sp]')


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("label\ttext_a\n" + "".join(f"{a}\t{b}\n" for a, b in rows))
    return path


def test_regression_scores_sentence_length(recipe: Path, tmp_path: Path) -> None:
    # a real, learnable score: the sentence's length in words, scaled
    rows = [(f"{len(s.split()) / 10:.2f}", s) for s in _sentences()]
    train, dev = _write(tmp_path / "train.tsv", rows[:96]), _write(tmp_path / "dev.tsv", rows[96:])
    out = tmp_path / "run"
    result = finetune(FinetuneRequest(str(recipe), "regression", out,
                                      TaskData(str(train), [str(dev)]), progress=False))
    preds = [json.loads(x)["score"] for x in
             (out / "predictions" / "dev.jsonl").read_text().splitlines()]
    gold = [float(r[0]) for r in rows[96:]]
    dev_scores = result["dev"]["dev"]
    assert dev_scores["pearson"]["mean"] == pytest.approx(pearsonr(preds, gold)[0], abs=1e-9)
    assert dev_scores["spearman"]["mean"] == pytest.approx(spearmanr(preds, gold)[0], abs=1e-9)
    mse = sum((a - b) ** 2 for a, b in zip(preds, gold)) / len(gold)
    assert dev_scores["neg_mse"]["mean"] == pytest.approx(-mse)
    assert (out / "recipe.yaml").read_text().count("regression") >= 2  # head and task
    bad = _write(tmp_path / "bad.tsv", [("1.5", "fine"), ("high", "not a number")])
    with pytest.raises(DataError, match=r"bad.tsv:3: label 'high' is not a number"):
        finetune(FinetuneRequest(str(recipe), "regression", tmp_path / "r2",
                                 TaskData(str(bad), [str(dev)]), progress=False))


def test_multilabel_tags_words(recipe: Path, tmp_path: Path) -> None:
    # labels: which of three words the sentence contains (none, one or several)
    words = ("the", "is", "of")
    rows = [(",".join(w for w in words if w in s.lower().split()), s) for s in _sentences()]
    train, dev = _write(tmp_path / "train.tsv", rows[:96]), _write(tmp_path / "dev.tsv", rows[96:])
    out = tmp_path / "run"
    result = finetune(FinetuneRequest(str(recipe), "multilabel", out,
                                      TaskData(str(train), [str(dev)]), progress=False))
    preds = [json.loads(x) for x in (out / "predictions" / "dev.jsonl").read_text().splitlines()]
    labels = sorted(words)

    def hot(xs: list[str]) -> list[int]:
        return [int(w in xs) for w in labels]

    pred = [hot(p["labels"]) for p in preds]
    gold = [hot([x for x in r[0].split(",") if x]) for r in rows[96:]]
    dev_scores = result["dev"]["dev"]
    assert dev_scores["micro_f1"]["mean"] == pytest.approx(
        f1_score(gold, pred, average="micro", zero_division=0))
    assert dev_scores["macro_f1"]["mean"] == pytest.approx(
        f1_score(gold, pred, average="macro", zero_division=0))
    assert all(set(p["probabilities"]) == set(labels) for p in preds)
    # tp infer rebuilds the label list from the checkpoint
    got = infer(InferRequest(str(out / "best"), str(dev), tmp_path / "p.jsonl"))
    assert got["metrics"]["micro_f1"] == pytest.approx(dev_scores["micro_f1"]["mean"])
    unseen = _write(tmp_path / "dev2.tsv", [("the,was", "it was the end")])
    with pytest.raises(DataError, match=r"dev2.tsv:2: label 'was' is not one of the 3"):
        finetune(FinetuneRequest(str(recipe), "multilabel", tmp_path / "r2",
                                 TaskData(str(train), [str(unseen)]), progress=False))
