"""Task `text2text` on a shrunk t5-small: teacher-forced training, generation for evaluation,
metrics recomputed with sacrebleu / rouge-score from the saved predictions, `tp infer`, and the
refusal of a model without a decoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tpcli.errors import TpError
from tpcli.downstream.finetune import FinetuneRequest, InferRequest
from tpcli.downstream.tasks import TaskData
from tpcli.verbs import finetune, infer

ROOT = Path(__file__).resolve().parents[3]
UNIGRAM = f'{{name: unigram, tokenizer_json: "{ROOT}/recipes/_tokenizers/unigram-8k.json"}}'
SHRINK = ["model.hidden_size=32", "model.dropout=0.0",
          *(f"model.{side}.{k}={v}" for side in ("encoder", "decoder")
            for k, v in {"layers": 1, "heads": 2, "ffn_size": 64}.items()),
          f"data.tokenizer={UNIGRAM}", "finetune.batch_size=8", "finetune.lr=3e-3",
          "finetune.steps=12", "finetune.eval_every=6", "finetune.max_length=40",
          "finetune.precision=fp32", "finetune.log_every=6"]


def _pairs() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    sents = [" ".join(s.split()) for name in sorted(topics)[:30]
             for s in topics[name].split(". ") if 5 < len(s.split()) < 25]
    return [(s.replace("\t", " "), " ".join(s.split()[:2])) for s in sents[:72]]


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("source\ttarget\n" + "".join(f"{a}\t{b}\n" for a, b in rows))
    return path


def test_text2text_generates_and_scores(tmp_path: Path) -> None:
    rows = _pairs()
    train, dev = _write(tmp_path / "train.tsv", rows[:56]), _write(tmp_path / "dev.tsv", rows[56:])
    out = tmp_path / "run"
    task = {"name": "text2text", "max_new_tokens": 8, "num_beams": 2}
    result = finetune(FinetuneRequest("t5-small", task, out, TaskData(str(train), [str(dev)]),
                                      overrides=SHRINK, progress=False))
    preds = [json.loads(x)["prediction"] for x in
             (out / "predictions" / "dev.jsonl").read_text().splitlines()]
    refs = [r[1] for r in rows[56:]]
    assert len(preds) == len(refs)
    got = result["dev"]["dev"]
    assert got["bleu"]["mean"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score / 100,
                                                abs=1e-9)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)) / len(refs)
    assert got["rouge_l"]["mean"] == pytest.approx(rouge, abs=1e-9)
    assert got["exact_match"]["mean"] == pytest.approx(
        sum(p == r for p, r in zip(preds, refs)) / len(refs))
    # the model keeps its lm target; the task (with its options) is saved for tp infer
    saved = (out / "recipe.yaml").read_text()
    assert "text2text" in saved and "num_beams: 2" in saved
    again = infer(InferRequest(str(out / "best"), str(dev), tmp_path / "p.jsonl"))
    assert [json.loads(x)["prediction"] for x in
            (tmp_path / "p.jsonl").read_text().splitlines()] == preds
    assert again["metrics"]["bleu"] == pytest.approx(got["bleu"]["mean"])


def test_text2text_needs_a_decoder(tmp_path: Path) -> None:
    rows = _pairs()[:8]
    train = _write(tmp_path / "train.tsv", rows)
    with pytest.raises(TpError, match="needs an encoder-decoder model"):
        finetune(FinetuneRequest("bert-tiny", "text2text", tmp_path / "run",
                                 TaskData(str(train), [str(train)]), progress=False))
