"""The speech recipes train reproducibly: golden losses of s2t-tiny (joint CTC/attention) on a
fixed set of synthesised utterances, and an exact resume with SpecAugment on and batches by
frames (length-bucketed), as tests/train does for text.

The utterances: 24 sentences of Debian's fortunes spoken by espeak-ng (`scripts/synth_speech.py`:
deterministic bytes), preprocessed by the recipe's `speech` processor. Runs are in-process
(`tpcli.verbs`), single-threaded, fp32 on the CPU. Regenerate a golden list only when a change is
meant to alter training, and say why.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tpcli.plugins import make_plugins
from tpcli.testing.runs import assert_same_losses, quiet_machine, stop_and_resume
from tpcli.testing.runs import logged_losses as losses
from tpcli.verbs import PreprocessRequest, PretrainRequest, preprocess, pretrain

ROOT = Path(__file__).resolve().parents[3]
SHORT = ["pretrain.batch_units=2400", "pretrain.log_every=1", "pretrain.device=cpu",
         "pretrain.precision=fp32", "pretrain.seed=3", "pretrain.warmup_steps=4"]

# First 10 losses (0.5 lm + 0.5 ctc), 20 steps of up to 2,400 frames, seed 3, torch 2.13 CPU
# fp32, one thread. From 10.28 (lm near ln(256) = 5.5, ctc far above: an untrained alignment) to
# 4.84 by step 20.
S2T_GOLDEN = [10.27752, 9.33834, 8.65742, 7.98564, 7.22345, 7.24845, 6.09353, 5.78576, 5.88045,
              5.3344]


@pytest.fixture(scope="module", autouse=True)
def quiet() -> Iterator[None]:
    with quiet_machine():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox synthesise the corpus (apt-get install espeak-ng sox)")
    root = tmp_path_factory.mktemp("speech")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "synth_speech.py"), str(root / "c"),
                    "--utterances", "24", "--speakers", "2"], check=True, capture_output=True)
    out = root / "data"
    preprocess(PreprocessRequest("s2t-tiny", str(root / "c"), out, []))
    return out


def run(data: Path, out: Path, *overrides: str, plugins: object = None) -> dict[int, float]:
    pretrain(PretrainRequest("s2t-tiny", data, out, [*SHORT, *overrides], progress=False,
                             plugins=plugins or make_plugins()))
    return losses(out)


def test_golden_losses_learning_and_transcripts(data: Path, tmp_path: Path) -> None:
    """Files -> features -> training -> decoding -> WER: the whole path, with a 20-step model."""
    got = run(data, tmp_path / "run", "pretrain.steps=20", "pretrain.save_every=20")
    assert sorted(got) == list(range(1, 21))
    first = [round(got[s], 5) for s in range(1, 11)]
    assert first == pytest.approx(S2T_GOLDEN, abs=2e-4), first
    early = sum(got[s] for s in range(1, 6)) / 5
    late = sum(got[s] for s in range(16, 21)) / 5
    assert late < early - 0.5, got
    assert got[1] > 0.5 * math.log(256)  # no better than uniform over the vocabulary at first

    # `tp infer` on the transcribed corpus: a transcript per file, and WER / CER as jiwer's
    import jiwer

    from tp_speech.corpus import read_corpus
    from tpcli.verbs import InferRequest, infer

    corpus = data.parent / "c"
    result = infer(InferRequest(str(tmp_path / "run" / "last"), str(corpus),
                                tmp_path / "out.jsonl", plugins=make_plugins()))
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    truth = {str(u.path): u.text.lower() for u in read_corpus(corpus).utterances}
    assert len(rows) == 24 and {r["path"] for r in rows} == set(truth)
    refs, hyps = [truth[r["path"]] for r in rows], [r["text"] for r in rows]
    metrics = result["metrics"]
    assert metrics["wer"] == pytest.approx(jiwer.wer(refs, hyps), abs=1e-9)
    assert metrics["cer"] == pytest.approx(jiwer.cer(refs, hyps), abs=1e-9)


RESUME = ["pretrain.steps=12", "pretrain.save_every=4", "pretrain.keep_last=5"]


def test_s2t_tiny_with_spec_augment_resumes_exactly(data: Path, tmp_path: Path) -> None:
    expected = run(data, tmp_path / "ref", *RESUME)
    assert sorted(expected) == list(range(1, 13))
    # stopped after step 10: steps 9 and 10 ran after the last checkpoint (step 8)
    got = stop_and_resume(lambda out, plugins: run(data, out, *RESUME, plugins=plugins),
                          tmp_path / "stopped", 10)
    assert_same_losses(got, expected)

    # SpecAugment was on, and the batches were made by frames: the dataset masks, and an epoch's
    # batches hold different numbers of utterances
    from tpcli.data.arrays import open_store
    from tpcli.data import build_tokenizer
    from tpcli.recipes import load_recipe
    from tpcli.train.batches import BucketSampler, DataPosition
    from tp_speech.speech_processor import SpeechProcessor

    recipe = load_recipe("s2t-tiny", SHORT)
    dataset = SpeechProcessor(recipe.processor.options).dataset(
        open_store(data), build_tokenizer(recipe, make_plugins()), 3)
    feats = dataset[0]["input_features"]  # (T, 80)
    assert ((feats == 0).all(dim=0).sum() >= 1) or ((feats == 0).all(dim=1).sum() >= 1)
    plan = BucketSampler(dataset, 3, DataPosition(), units=2400, cap=64).plan(0)
    assert len({len(b) for b in plan}) > 1
