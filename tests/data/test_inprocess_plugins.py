"""Plugins registered in-process (`make_plugins(extra=[...])`) are the ones every step of a verb
uses: the recipe's validation, preprocess, the training data path and the model."""

from __future__ import annotations

import json
import types
from pathlib import Path

from tp_text.bert_processor import BertProcessor

from tpcli import hookimpl
from tpcli.plugins import get_plugins, make_plugins
from tpcli.testing.recipes import TINY_BERT
from tpcli.verbs import PreprocessRequest, PretrainRequest, preprocess, pretrain

RECIPE = TINY_BERT.replace("name: bert,", "name: bert_inproc,")


class CountingProcessor(BertProcessor):
    """BERT's processor, counting the datasets it makes (the training path must build one)."""

    made = 0

    def dataset(self, store, tokenizer, seed):  # type: ignore[no-untyped-def]
        CountingProcessor.made += 1
        return super().dataset(store, tokenizer, seed)


def _plugin() -> types.ModuleType:
    mod = types.ModuleType("inproc_plugin")

    @hookimpl
    def tp_register_processors(register) -> None:  # type: ignore[no-untyped-def]
        register("bert_inproc", CountingProcessor)

    mod.tp_register_processors = tp_register_processors  # type: ignore[attr-defined]
    return mod


def test_an_inprocess_processor_reaches_preprocess_and_training(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "recipe.yaml").write_text(RECIPE)
    corpus = tmp_path / "corpus.txt"
    from pydoc_data.topics import topics

    corpus.write_text("\n\n".join(topics[k].replace(". ", ".\n") for k in sorted(topics)[:5]))
    plugins = make_plugins(extra=[_plugin()])
    assert "bert_inproc" not in get_plugins().registry.names("processor")  # only in `plugins`
    preprocess(PreprocessRequest(str(recipe), str(corpus), tmp_path / "data", plugins=plugins))
    out = tmp_path / "run"
    summary = pretrain(PretrainRequest(str(recipe), tmp_path / "data", out, ["pretrain.steps=3"],
                                       progress=False, plugins=plugins))
    assert summary["steps"] == 3
    assert CountingProcessor.made >= 1
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
