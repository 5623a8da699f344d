"""tpcli.metrics against the reference implementations papers report with.

Random inputs over several seeds, compared to sklearn, scipy, seqeval, sacrebleu and rouge_score
(test-only dependencies; tp itself needs none of them), plus hand-checked examples and the
edge cases where each reference has a convention (zero division, constant input).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer
from scipy import stats
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from seqeval import metrics as seq_ref
from seqeval.metrics.sequence_labeling import get_entities as seq_get_entities
from sklearn import metrics as sk

from tpcli import metrics as M
from tpcli.errors import DataError

SEEDS = range(6)
REL = 1e-9


def close(a: float, b: float, rel: float = REL) -> bool:
    return a == pytest.approx(b, rel=rel, abs=1e-12)


@pytest.fixture(autouse=True)
def _quiet() -> None:
    """The references warn on zero division and constant input; the values are what we test."""
    warnings.simplefilter("ignore")


# ----------------------------------------------------------------------------- classification


@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_prf_mcc_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 60)), int(rng.integers(2, 6))
    y, p = rng.integers(0, k, n), rng.integers(0, k, n)
    assert close(M.accuracy(p, y), sk.accuracy_score(y, p))
    assert close(M.matthews_corrcoef(p, y), sk.matthews_corrcoef(y, p))
    for avg in ("macro", "micro"):
        ref = sk.precision_recall_fscore_support(y, p, average=avg, zero_division=0)[:3]
        assert all(close(a, b) for a, b in zip(M.precision_recall_f1(p, y, average=avg), ref))
    sub = [0, k - 1, k + 3]  # a class subset, one never seen
    ref = sk.precision_recall_fscore_support(y, p, average="macro", labels=sub, zero_division=0)
    ours = M.precision_recall_f1(p, y, average="macro", classes=sub)
    assert all(close(a, b) for a, b in zip(ours, ref[:3]))
    yb, pb = y % 2, p % 2
    ref = sk.precision_recall_fscore_support(yb, pb, average="binary", zero_division=0)[:3]
    assert all(close(a, b) for a, b in zip(M.precision_recall_f1(pb, yb), ref))
    assert close(M.f1(pb, yb), sk.f1_score(yb, pb, zero_division=0))
    assert close(M.matthews_corrcoef(pb, yb), sk.matthews_corrcoef(yb, pb))


def test_classification_hand_checked_and_inputs() -> None:
    p, y = [1, 1, 0, 0], [1, 0, 0, 1]  # tp=1 fp=1 fn=1
    assert M.precision_recall_f1(p, y) == (0.5, 0.5, 0.5)
    assert M.accuracy(torch.tensor(p), np.array(y)) == 0.5
    assert isinstance(M.accuracy(torch.tensor(p, dtype=torch.float, requires_grad=True), y), float)
    assert M.precision_recall_f1(["a", "b"], ["b", "b"], pos_label="b") == (1.0, 0.5, 2 / 3)
    assert M.matthews_corrcoef([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0
    assert M.matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == -1.0


def test_classification_edge_cases() -> None:
    assert M.matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # constant predictor
    assert M.matthews_corrcoef([1, 0, 1], [1, 1, 1]) == 0.0  # one gold class
    assert M.precision_recall_f1([0, 0], [0, 0]) == (0.0, 0.0, 0.0)  # no positive: zero division
    with pytest.raises(DataError):
        M.accuracy([], [])  # sklearn refuses empty input too
    with pytest.raises(DataError, match="3 predictions but 2"):
        M.accuracy([1, 0, 1], [1, 0])
    with pytest.raises(DataError, match="binary"):
        M.precision_recall_f1([0, 1, 2], [0, 1, 2])
    with pytest.raises(DataError):
        M.precision_recall_f1([0, 1], [0, 1], average="weighted")  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", SEEDS)
def test_correlations_match_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 80))
    x = rng.normal(size=n)
    y = 0.5 * x + rng.normal(size=n)
    assert close(M.pearson(x, y), stats.pearsonr(x, y).statistic)
    assert close(M.spearman(x, y), stats.spearmanr(x, y).statistic)
    xt, yt = rng.integers(0, 5, n), rng.integers(0, 4, n)  # many ties
    if len(set(xt)) > 1 and len(set(yt)) > 1:
        assert close(M.spearman(xt, yt), stats.spearmanr(xt, yt).statistic)
        assert close(M.pearson(xt, yt), stats.pearsonr(xt, yt).statistic)
    assert np.allclose(M.classification.rank_average(xt), stats.rankdata(xt), rtol=0, atol=0)


def test_correlation_edge_cases() -> None:
    assert M.spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == 1.0  # monotone, not linear
    assert close(M.pearson([1, 2, 3], [2, 4, 7]), stats.pearsonr([1, 2, 3], [2, 4, 7]).statistic)
    # constant input: r is undefined; scipy returns nan and so do we
    assert math.isnan(M.pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(stats.pearsonr([1, 1, 1], [1, 2, 3]).statistic)
    assert math.isnan(M.spearman([1, 2, 3], [5, 5, 5]))
    with pytest.raises(DataError):
        M.pearson([1.0], [2.0])


@pytest.mark.parametrize("seed", SEEDS)
def test_multilabel_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(1, 30)), int(rng.integers(2, 7))  # sklearn reads (N, 1) as binary
    g = rng.random((n, c)) < 0.3
    p = rng.random((n, c)) < 0.3
    p[: n // 2] = g[: n // 2]  # some exact rows
    out = M.multilabel_scores(p.astype(int), g)
    assert close(out["micro_f1"], sk.f1_score(g, p, average="micro", zero_division=0))
    assert close(out["macro_f1"], sk.f1_score(g, p, average="macro", zero_division=0))
    assert close(out["subset_accuracy"], sk.accuracy_score(g, p))
    assert close(out["hamming_loss"], sk.hamming_loss(g, p))


def test_multilabel_edge_cases() -> None:
    z = np.zeros((3, 2))
    assert M.multilabel_scores(z, z) == {
        "micro_f1": 0.0, "macro_f1": 0.0, "subset_accuracy": 1.0, "hamming_loss": 0.0
    }
    with pytest.raises(DataError):
        M.multilabel_scores(np.zeros((3, 2)), np.zeros((3, 3)))


def test_glue_metrics() -> None:
    p, y = [1, 0, 1, 1, 0], [1, 0, 0, 1, 1]
    assert M.glue_metrics("CoLA", p, y) == {"matthews_corr": sk.matthews_corrcoef(y, p)}
    assert M.glue_metrics("mrpc", p, y) == {"f1": sk.f1_score(y, p), "accuracy": 0.6}
    assert M.glue_metrics("QQP", p, y).keys() == {"f1", "accuracy"}
    for task in ("sst2", "SST-2", "qnli", "rte", "wnli", "mnli", "mnli-m", "mnli_mismatched"):
        assert M.glue_metrics(task, p, y) == {"accuracy": 0.6}
    logits = torch.tensor([[0.1, 2.0], [3.0, 0.0], [0.0, 1.0], [0.0, 5.0], [1.0, 0.0]])
    assert M.glue_metrics("rte", logits, y) == {"accuracy": 0.6}
    s, t = np.array([[0.5], [2.0], [3.5], [1.0]]), [0.8, 2.5, 4.0, 0.9]
    out = M.glue_metrics("sts-b", s, t)
    assert close(out["pearson"], stats.pearsonr(s[:, 0], t).statistic)
    assert out["spearman"] == 1.0
    with pytest.raises(DataError, match="did you mean 'mrpc'"):
        M.glue_metrics("mrcp", p, y)


# ----------------------------------------------------------------------------- sequence labels

_WELL = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG"]
_ILL = _WELL + ["I-ORG", "I-MISC", "E-PER", "S-LOC", "E-LOC", "S-PER", "B", "I"]


def _tags(
    rng: np.random.Generator, vocab: list[str], gold: list[list[str]] | None = None
) -> list[list[str]]:
    """Random sentences; given `gold`, a noisy copy of it (so that some entities match)."""
    if gold is not None:
        return [[t if rng.random() < 0.7 else str(rng.choice(vocab)) for t in s] for s in gold]
    lengths = rng.integers(0, 12, int(rng.integers(1, 8)))
    return [[str(t) for t in rng.choice(vocab, int(n))] for n in lengths]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("vocab", [_WELL, _ILL], ids=["iob2", "ill_formed_iobes"])
def test_entities_match_seqeval(seed: int, vocab: list[str]) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(5):
        gold = _tags(rng, vocab)
        pred = _tags(rng, vocab, gold)
        for s in gold + pred:
            assert M.get_entities(s) == seq_get_entities(s)
        assert M.get_entities(gold) == seq_get_entities(gold)
        out = M.entity_scores(pred, gold)
        assert close(out["precision"], seq_ref.precision_score(gold, pred))
        assert close(out["recall"], seq_ref.recall_score(gold, pred))
        assert close(out["f1"], seq_ref.f1_score(gold, pred))
        report = seq_ref.classification_report(gold, pred, output_dict=True)
        types = {k for k in report if not k.endswith(" avg")}
        assert set(out["per_type"]) == types
        for t, row in out["per_type"].items():
            ref = report[t]
            assert row["support"] == ref["support"]
            assert all(close(row[k], ref[k2]) for k, k2 in
                       (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")))


def test_entities_hand_checked() -> None:
    assert M.get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    # I- without B- opens an entity; a type change mid-span splits it
    assert M.get_entities(["I-PER", "I-PER", "I-LOC", "O"]) == [("PER", 0, 1), ("LOC", 2, 2)]
    assert M.get_entities(["B-PER", "E-PER", "S-LOC", "O"]) == [("PER", 0, 1), ("LOC", 2, 2)]
    # IOB1: B- only separates two adjacent entities of one type
    assert M.get_entities(["I-PER", "I-PER", "B-PER", "O"]) == [("PER", 0, 1), ("PER", 2, 2)]
    # a list of sentences: joined with an O between, offsets run on
    assert M.get_entities([["B-PER"], ["I-PER"]]) == [("PER", 0, 0), ("PER", 2, 2)]
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"]]
    out = M.entity_scores(pred, gold)
    assert (out["precision"], out["recall"], out["f1"]) == (0.5, 0.5, 0.5)
    assert out["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert out["per_type"]["ORG"]["support"] == 0
    empty = M.entity_scores([["O", "O"]], [["O", "O"]])
    assert empty == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "per_type": {}}
    with pytest.raises(DataError, match="sentence 0"):
        M.entity_scores([["O"]], [["O", "O"]])


# ----------------------------------------------------------------------------- QA and text


def test_squad_hand_checked() -> None:
    assert M.normalize_answer("The  Cat!") == "cat"
    assert M.normalize_answer("  An apple, a day; THE end.") == "apple day end"
    assert M.normalize_answer("theater") == "theater"  # only whole-word articles go
    assert M.squad_exact_match("the cat", ["A dog", "Cat."]) == 1.0
    assert M.squad_exact_match("cats", ["cat"]) == 0.0
    assert M.squad_exact_match("cat", "The cat") == 1.0  # a bare string is one answer
    # pred {black, cat}, gold {cat}: p = 1/2, r = 1 -> 2/3; best gold counts
    assert M.squad_f1("black cat", ["a dog", "the cat"]) == pytest.approx(2 / 3)
    assert M.squad_f1("cat cat", ["cat"]) == pytest.approx(2 / 3)  # bag counts: p = 1/2
    assert M.squad_f1("", ["cat"]) == 0.0
    assert M.squad_f1("the", ["a"]) == 0.0  # both empty after normalising: 0 under v1.1
    preds = {"q1": "Denver Broncos", "q2": "in 1990", "q9": "ignored"}
    refs = {"q1": ["Denver Broncos", "Broncos"], "q2": ["1990"], "q3": ["x"]}
    out = M.squad_scores(preds, refs)
    assert out["exact_match"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert M.squad_scores({}, {"q": ["the"]}) == {"exact_match": 0.0, "f1": 0.0}  # unanswered


def test_exact_match() -> None:
    assert M.exact_match(["a", "b", "c"], ["a", "B", "c "]) == pytest.approx(1 / 3)
    assert M.exact_match(["x", "y"], [["z", "x"], ["y"]]) == 1.0
    with pytest.raises(DataError):
        M.exact_match(["a"], ["a", "b"])


_WORDS = ["the", "The", "cat", "sat", "on", "mat", "a", "dog", ".", ",", "!", "?", "3.5", "1,000",
          "10-20", "well-known", "&amp;", "&quot;hi&quot;", "(x)", "$5", "don't", "U.S.", "é",
          "<skipped>", "e-mail", "x.y", "2.", "-", "Zürich", "##"]


def _sentence(rng: np.random.Generator) -> str:
    toks = rng.choice(_WORDS, int(rng.integers(0, 14)))
    return "".join(str(t) + str(rng.choice([" ", " ", " ", "", "  "])) for t in toks)


@pytest.mark.parametrize("seed", SEEDS)
def test_bleu_matches_sacrebleu(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    refs = [_sentence(rng) for _ in range(n)]
    hyps = [r if rng.random() < 0.3 else _sentence(rng) for r in refs]
    for h in hyps + refs:
        assert M.tokenize_13a(h) == Tokenizer13a()(h.rstrip()).split()
    ref = sacrebleu.corpus_bleu(hyps, [refs]).score
    assert M.corpus_bleu(hyps, refs) == pytest.approx(ref, rel=1e-6, abs=1e-9)
    refs2 = [_sentence(rng) for _ in range(n)]
    ref = sacrebleu.corpus_bleu(hyps, [refs, refs2]).score
    ours = M.corpus_bleu(hyps, [[a, b] for a, b in zip(refs, refs2)])
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-9)
    # a varying number of references per sentence (sacrebleu: None in a stream)
    sparse = [b if i % 2 else None for i, b in enumerate(refs2)]
    ref = sacrebleu.corpus_bleu(hyps, [refs, sparse]).score
    ours = M.corpus_bleu(hyps, [[a] + ([b] if b is not None else []) for a, b in zip(refs, sparse)])
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-9)


def test_bleu_hand_checked() -> None:
    text = "The cat sat on the mat today ."
    assert M.corpus_bleu([text], [text]) == pytest.approx(100.0)
    assert M.corpus_bleu(["completely different words here"], [text]) == 0.0
    assert M.corpus_bleu([""], [text]) == 0.0
    assert M.tokenize_13a("Hello, world. 3.5 10-20 &amp;") == ["Hello", ",", "world", ".", "3.5",
                                                               "10", "-", "20", "&"]
    # lower-case hypothesis loses matches: BLEU is case-sensitive by default
    assert M.corpus_bleu([text.lower()], [text]) < 100.0


@pytest.mark.parametrize("seed", SEEDS)
def test_rouge_l_matches_rouge_score(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    n = int(rng.integers(1, 10))
    refs = [_sentence(rng) for _ in range(n)]
    preds = [r if rng.random() < 0.2 else _sentence(rng) for r in refs]
    want = np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)])
    assert close(M.rouge_l(preds, refs), want)
    refs2 = [[r, _sentence(rng)] for r in refs]
    want = np.mean([scorer.score_multi(rs, p)["rougeL"].fmeasure for p, rs in zip(preds, refs2)])
    assert close(M.rouge_l(preds, refs2), want)


def test_rouge_l_hand_checked() -> None:
    # LCS("the cat sat", "the black cat sat") = 3: p = 3/3, r = 3/4
    assert M.rouge_l(["The cat, sat!"], ["the black cat sat"]) == pytest.approx(2 * 0.75 / 1.75)
    assert M.rouge_l(["", "a b"], ["a b", "a b"]) == 0.5  # an empty prediction scores 0
