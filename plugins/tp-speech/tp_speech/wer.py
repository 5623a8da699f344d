"""Word and character error rates, corpus-level, as speech recognition papers report them (and
as `jiwer` computes them): the Levenshtein distance (substitutions + deletions + insertions)
between each hypothesis and its reference, summed over the corpus and divided by the total
length of the references. A mean of per-utterance rates would weigh a two-word utterance like a
forty-word one.

Words are the whitespace-separated tokens of a text (runs of whitespace are one separator,
leading and trailing whitespace ignored); characters are those of the text with leading and
trailing whitespace stripped, spaces inside included (jiwer's defaults for WER and CER). No
other normalisation is done here: casing and punctuation are the caller's choice (the `asr`
task compares texts as the tokenizer writes them back).

An empty reference against a non-empty hypothesis adds insertions only. A corpus whose
references are all empty has no rate: a DataError here (jiwer returns the insertion count
then, which is not a rate).
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from tpcli.errors import DataError


def distance(reference: Sequence[Hashable], hypothesis: Sequence[Hashable]) -> int:
    """The Levenshtein distance: the fewest substitutions, deletions and insertions that turn
    `reference` into `hypothesis`. One DP row per reference item, vectorised over the
    hypothesis (characters of long utterances stay fast), O(len(hypothesis)) memory."""
    vocab: dict[Hashable, int] = {}
    ref = np.array([vocab.setdefault(x, len(vocab)) for x in reference], dtype=np.int64)
    hyp = np.array([vocab.setdefault(x, len(vocab)) for x in hypothesis], dtype=np.int64)
    steps = np.arange(len(hyp) + 1)  # (M + 1,)
    row = steps.copy()  # distances of reference[:0] to every hypothesis prefix
    for i, r in enumerate(ref, start=1):
        # hit / substitution from the row above, or deletion of reference[i - 1]
        best = np.empty_like(row)
        best[0] = i
        best[1:] = np.minimum(row[:-1] + (hyp != r), row[1:] + 1)
        # then insertions: row[j] = min over k <= j of best[k] + (j - k)
        row = steps + np.minimum.accumulate(best - steps)
    return int(row[-1])


def words(text: str) -> list[str]:
    return text.split()


def characters(text: str) -> list[str]:
    return list(text.strip())


def _rate(references: Sequence[str], hypotheses: Sequence[str], unit: str) -> float:
    if len(references) != len(hypotheses):
        raise DataError(f"{len(hypotheses)} hypotheses for {len(references)} references",
                        hint="give one hypothesis per reference, in the same order")
    split = words if unit == "word" else characters
    errors = length = 0
    for ref, hyp in zip(references, hypotheses):
        r = split(ref)
        errors, length = errors + distance(r, split(hyp)), length + len(r)
    if length == 0:
        raise DataError(f"no reference {unit}s: the error rate is undefined",
                        hint="score against at least one non-empty reference transcript")
    return errors / length


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate: total word edits / total reference words (may exceed 1)."""
    return _rate(references, hypotheses, "word")


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus character error rate: total character edits / total reference characters."""
    return _rate(references, hypotheses, "character")
