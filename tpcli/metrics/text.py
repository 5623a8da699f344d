"""Metrics over generated or extracted text: SQuAD EM/F1, exact match, BLEU and ROUGE-L.

Each reproduces the tool papers report with, so a number from `tp` can sit in the same table:
the SQuAD v1.1 evaluation script, sacrebleu's default corpus BLEU and Google's rouge_score.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Mapping, Sequence

from tpcli.errors import DataError
from tpcli.metrics._common import check_lengths, f_score

Refs = Sequence[str] | Sequence[Sequence[str]]  # one reference per example, or several

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _ref_lists(refs: Refs, n: int, name: str) -> list[list[str]]:
    """Every example's references as a list, whichever form was given."""
    check_lengths(n, len(refs), name)
    out = [[r] if isinstance(r, str) else list(r) for r in refs]
    if any(not r for r in out):
        raise DataError(
            f"{name}: an example has no reference",
            hint="give every example at least one reference string.",
        )
    return out


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lowercase, drop punctuation, drop a/an/the, collapse spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0  # v1.1 semantics: an empty prediction or gold scores 0, even if both are
    return f_score(same / len(pred), same / len(ref))


def squad_exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer, else 0.0."""
    p = normalize_answer(prediction)
    golds = [golds] if isinstance(golds, str) else golds  # one answer given bare, not a list
    return float(any(p == normalize_answer(g) for g in golds))


def squad_f1(prediction: str, golds: Sequence[str]) -> float:
    """Best bag-of-tokens F1 of the normalised prediction against any gold answer."""
    golds = [golds] if isinstance(golds, str) else golds
    return max((_token_f1(prediction, g) for g in golds), default=0.0)


def squad_scores(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """{"exact_match", "f1"} in 0-100 over every question in `references`, like the SQuAD v1.1
    script: a question with no prediction scores 0; predictions for unknown ids are ignored."""
    if not references:
        raise DataError("squad_scores: no references", hint="pass at least one question id.")
    answered = [(predictions[q], g) for q, g in references.items() if q in predictions]
    em = sum(squad_exact_match(p, g) for p, g in answered)
    f = sum(squad_f1(p, g) for p, g in answered)
    n = len(references)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f / n}


def exact_match(preds: Sequence[str], refs: Refs) -> float:
    """Fraction (0-1) of predictions string-equal to one of their references; no normalisation,
    so 'Paris' and 'paris' differ (use squad_* for the forgiving version)."""
    lists = _ref_lists(refs, len(preds), "exact_match")
    if not preds:
        raise DataError("exact_match: no predictions", hint="the evaluation set is empty.")
    return sum(p in r for p, r in zip(preds, lists)) / len(preds)


# mteval-v13a tokenisation, as sacrebleu applies it by default.
_13A_RULES = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # symbols become tokens
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period/comma, unless after a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # period/comma, unless before a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # a dash after a digit
]


def tokenize_13a(line: str) -> list[str]:
    """Split one segment the way sacrebleu's default '13a' tokenizer does."""
    line = line.rstrip().replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for ent, ch in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        line = line.replace(ent, ch)
    line = f" {line} "
    for rule, repl in _13A_RULES:
        line = rule.sub(repl, line)
    return line.split()


def _ngrams(tokens: list[str], max_n: int) -> Counter:
    """Counts of every 1..max_n-gram."""
    spans = ((i, n) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))
    return Counter(tuple(tokens[i : i + n]) for i, n in spans)


def _bleu_stats(hyp: str, refs: list[str], max_n: int) -> list[int]:
    """[hyp_len, closest_ref_len, correct_1..N, total_1..N] for one segment."""
    h = tokenize_13a(hyp)
    ref_toks = [tokenize_13a(r) for r in refs]
    ref_counts: Counter = Counter()
    for r in ref_toks:
        ref_counts |= _ngrams(r, max_n)  # clip by the max count over references
    # closest reference length; on a tie the shorter one
    ref_len = min((len(r) for r in ref_toks), key=lambda n: (abs(len(h) - n), n))
    correct, total = [0] * max_n, [0] * max_n
    for g, c in _ngrams(h, max_n).items():
        total[len(g) - 1] += c
        correct[len(g) - 1] += min(c, ref_counts[g])
    return [len(h), ref_len, *correct, *total]


def corpus_bleu(hyps: Sequence[str], refs: Refs, max_n: int = 4) -> float:
    """Corpus BLEU in 0-100, as sacrebleu.corpus_bleu(hyps, refs).score with its defaults:
    13a tokenisation, case-sensitive, 4-grams, brevity penalty against the closest reference,
    and 'exp' smoothing (an n-gram order with no match counts as 1 / (2^k * total)).

    `refs` holds one reference string per hypothesis, or a list of references per hypothesis
    (sacrebleu takes the transpose: a list of reference streams).
    """
    lists = _ref_lists(refs, len(hyps), "corpus_bleu")
    stats = [0] * (2 + 2 * max_n)
    for h, r in zip(hyps, lists):
        stats = [a + b for a, b in zip(stats, _bleu_stats(h, r, max_n))]
    sys_len, ref_len = stats[0], stats[1]
    correct, total = stats[2 : 2 + max_n], stats[2 + max_n :]
    if sys_len == 0 or not any(correct):
        return 0.0
    bp = 1.0 if sys_len >= ref_len else math.exp(1 - ref_len / sys_len)
    log_sum, smooth = 0.0, 1.0
    for c, t in zip(correct, total):
        if t == 0:
            return 0.0  # too short for this order: no precision, BLEU is 0 (sacrebleu floors log)
        if c == 0:
            smooth *= 2
            log_sum += math.log(100.0 / (smooth * t))
        else:
            log_sum += math.log(100.0 * c / t)
    return bp * math.exp(log_sum / max_n)


_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def _rouge_tokens(text: str) -> list[str]:
    """rouge_score's default tokenizer: lowercase, keep runs of [a-z0-9], no stemming."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def _lcs_len(a: list[str], b: list[str]) -> int:
    """Longest common subsequence length, O(len(a) * len(b)) with one row of memory."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, start=1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def _rouge_l_pair(pred: str, ref: str) -> float:
    p, r = _rouge_tokens(pred), _rouge_tokens(ref)
    if not p or not r:
        return 0.0
    lcs = _lcs_len(r, p)
    return f_score(lcs / len(p), lcs / len(r))


def rouge_l(preds: Sequence[str], refs: Refs) -> float:
    """Mean ROUGE-L F-measure in 0-1 (not 0-100), as rouge_score's RougeScorer(["rougeL"])
    .score(ref, pred)["rougeL"].fmeasure averaged over pairs; with several references per
    example, the best one counts (RougeScorer.score_multi)."""
    lists = _ref_lists(refs, len(preds), "rouge_l")
    if not preds:
        raise DataError("rouge_l: no predictions", hint="the evaluation set is empty.")
    return sum(max(_rouge_l_pair(p, r) for r in rs) for p, rs in zip(preds, lists)) / len(preds)
