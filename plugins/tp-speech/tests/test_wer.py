"""WER and CER against jiwer: real recogniser output (pocketsphinx's hypotheses for its LibriVox
test recordings, with their reference transcripts), plus crafted insertions, deletions,
substitutions and empty hypotheses; the edit distance against hand counts."""

from __future__ import annotations

import random
import re
from pathlib import Path

import jiwer
import pytest

from tp_speech.wer import cer, distance, wer
from tpcli.errors import DataError

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def _by_uttid(path: Path, strip_tags: bool) -> dict[str, str]:
    """`text (uttid[ score])` lines -> {uttid: text}."""
    out = {}
    for line in path.read_text().splitlines():
        text, _, tail = line.rpartition("(")
        if strip_tags:
            text = text.replace("<s>", "").replace("</s>", "")
        out[tail.split()[0].rstrip(")")] = text.strip()
    return out


@pytest.fixture(scope="module")
def sphinx() -> tuple[list[str], list[str]]:
    """(references, pocketsphinx's hypotheses) of the five LibriVox utterances."""
    if not LIBRIVOX.is_dir():
        pytest.skip("apt package pocketsphinx-testdata is not installed")
    refs = _by_uttid(LIBRIVOX / "transcription", strip_tags=True)
    hyps = _by_uttid(LIBRIVOX / "test-lm.match", strip_tags=False)
    ids = sorted(refs)
    return [refs[i] for i in ids], [hyps[i] for i in ids]


def test_distance_counts_each_kind_of_edit() -> None:
    ref = "he was not an ill disposed young man".split()
    assert distance(ref, ref) == 0
    assert distance(ref, "he was not ill disposed young man".split()) == 1  # deletion
    assert distance(ref, "he was not an ill disposed young young man".split()) == 1  # insertion
    assert distance(ref, "he is not an ill disposed young man".split()) == 1  # substitution
    # "illness those" for "ill disposed": two substitutions (pocketsphinx's error)
    assert distance(ref, "he was not an illness those young man".split()) == 2
    assert distance(ref, []) == len(ref) and distance([], ref) == len(ref)
    assert distance("kitten", "sitting") == 3  # the textbook case: k->s, e->i, +g


def test_real_recogniser_output_equals_jiwer(sphinx: tuple[list[str], list[str]]) -> None:
    refs, hyps = sphinx
    # lower-cased as the references are, so only recognition errors count
    hyps = [h.lower() for h in hyps]
    assert wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert cer(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    # hand count of the first utterance: "and mister" -> "but mr" 2 substitutions,
    # "dashwood had then" -> "guess would have been at" 3 substitutions + 2 insertions,
    # "prudently" -> "prickly" 1 substitution, "them" deleted: 9 edits over 22 words
    assert wer(refs[:1], hyps[:1]) == pytest.approx(9 / 22)
    assert 0.2 < wer(refs, hyps) < 0.4  # what pocketsphinx's small LM gets on these


def _perturbed(words: list[str], rng: random.Random, vocab: list[str]) -> str:
    """A hypothesis with random substitutions, deletions and insertions."""
    out = []
    for w in words:
        r = rng.random()
        if r < 0.1:
            continue  # deletion
        out.append(rng.choice(vocab) if r < 0.2 else w)  # substitution
        if rng.random() < 0.1:
            out.append(rng.choice(vocab))  # insertion
    return " ".join(out)


def test_perturbed_corpus_with_empty_hypotheses_equals_jiwer(
        sphinx: tuple[list[str], list[str]]) -> None:
    refs, _ = sphinx
    vocab = sorted({w for r in refs for w in r.split()})
    rng = random.Random(0)
    refs = refs * 8
    hyps = [_perturbed(r.split(), rng, vocab) for r in refs]
    hyps[3] = ""  # nothing recognised
    hyps[7] = "   "  # only whitespace
    hyps[11] = refs[11] + " " + refs[12]  # twice as long: insertions only
    hyps[13] = "  ".join(refs[13].split())  # doubled spaces: no word error, CER sees them
    assert wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert cer(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    assert wer(refs[3:4], hyps[3:4]) == 1.0 and cer(refs[7:8], hyps[7:8]) == 1.0
    assert wer(refs[13:14], hyps[13:14]) == 0.0 and cer(refs[13:14], hyps[13:14]) > 0.0


def test_corpus_level_not_mean_of_utterances() -> None:
    refs = ["a b c d e f g h i j", "k"]
    hyps = ["a b c d e f g h i j", "x"]
    assert wer(refs, hyps) == pytest.approx(1 / 11)  # a mean of rates would say 0.5
    assert wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps))


def test_empty_reference_inside_a_corpus_equals_jiwer() -> None:
    refs, hyps = ["", "one two three"], ["uh", "one two three"]
    assert wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps)) == pytest.approx(1 / 3)


def test_refusals() -> None:
    with pytest.raises(DataError, match="2 hypotheses for 1 references"):
        wer(["a"], ["a", "b"])
    with pytest.raises(DataError, match="no reference words"):
        wer(["", " "], ["a", ""])


def test_long_utterance_characters_are_fast() -> None:
    """CER over a 3,000-character utterance: the vectorised DP, well under a second."""
    import time

    rng = random.Random(1)
    ref = " ".join(rng.choice(["the", "speech", "model", "transcribes", "audio"])
                   for _ in range(500))
    hyp = re.sub("e", "a", ref, count=40)
    t = time.perf_counter()
    got = cer([ref], [hyp])
    assert time.perf_counter() - t < 1.0
    assert got == pytest.approx(40 / len(ref)) == pytest.approx(jiwer.cer([ref], [hyp]))
