"""`tp recipes show` (a recipe as it will run, its parameter count) and `tp recipes cp` (a
built-in recipe copied to edit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tpcli.plugins import get_plugins
from tpcli.recipes import builtin_recipes, load_recipe
from tpcli.recipes.config import build_recipe
from tpcli.recipes.resolved import resolved

from tpcli.testing.runs import run_tp as tp


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_the_resolved_recipe_is_itself_the_same_recipe(name: str) -> None:
    """Every default filled in, and read back: the same options, module by module."""
    plugins = get_plugins()
    recipe = load_recipe(name, [], plugins)
    full = resolved(recipe)
    again = build_recipe(full, plugins.registry, name=name, path=recipe.path)
    assert resolved(again) == full
    assert full["pretrain"]["lr"] == recipe.pretrain.lr  # a default is there, not just the YAML


def test_show_counts_hf_parameters_and_applies_overrides() -> None:
    import torch
    import transformers

    with torch.device("meta"):
        hf = transformers.BertForPreTraining(transformers.BertConfig())
    got = json.loads(tp("recipes", "show", "bert-base", "--json").stdout)
    assert got["parameters"] == sum(p.numel() for p in hf.parameters()) == 110_106_428
    assert got["recipe"]["model"]["encoder"]["layers"] == 12
    proc = tp("recipes", "show", "bert-base", "model.encoder.layers=2", "pretrain.lr=3e-4")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith("# bert-base: ") and "# parameters: 39,227,708" in text
    shown = yaml.safe_load(text)  # YAML, comments aside
    assert shown["model"]["encoder"]["layers"] == 2 and shown["pretrain"]["lr"] == 3e-4
    assert shown["pretrain"]["warmup_ratio"] == 0.01  # a default filled in


@pytest.mark.parametrize(("name", "key"), [("clip-tiny", "vocab"), ("s2t-tiny", "model")])
def test_the_shown_recipe_names_its_files_absolutely(name: str, key: str) -> None:
    """A tokenizer file the recipe names relative to its folder is shown as the absolute path
    that will be read."""
    got = json.loads(tp("recipes", "show", name, "--json").stdout)
    path = Path(got["recipe"]["data"]["tokenizer"][key])
    assert path.is_absolute() and path.is_file()
    assert path == (builtin_recipes()[name] / (yaml.safe_load(
        (builtin_recipes()[name] / "recipe.yaml").read_text())["data"]["tokenizer"][key])).resolve()


def test_show_errors_are_one_clean_paragraph() -> None:
    proc = tp("recipes", "show", "bert-bsae")
    assert proc.returncode == 1 and "did you mean 'bert-base'?" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = tp("recipes", "show", "bert-base", "model.encoder.layerz=2")
    assert proc.returncode == 1 and "model.encoder.layerz" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cp_copies_a_recipe_that_runs_as_it_was(tmp_path: Path) -> None:
    dest = tmp_path / "mine"
    proc = tp("recipes", "cp", "clip-tiny", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "recipe.yaml"]
    text = (dest / "recipe.yaml").read_text()
    vocab = builtin_recipes()["clip-tiny"].parent / "_tokenizers" / "clip-tiny-wordpiece.txt"
    assert str(vocab.resolve()) in text and "../_tokenizers" not in text
    assert text.count("#") == (builtin_recipes()["clip-tiny"] / "recipe.yaml").read_text() \
        .count("#")  # the comments stay
    ours = json.loads(tp("recipes", "show", str(dest), "--json").stdout)
    theirs = json.loads(tp("recipes", "show", "clip-tiny", "--json").stdout)
    assert ours["parameters"] == theirs["parameters"] == 583_649
    tok = ours["recipe"]["data"]["tokenizer"]
    assert tok["vocab"] == str(vocab.resolve())
    # a folder that holds something is refused and left alone; an unknown name is named
    proc = tp("recipes", "cp", "bert-base", str(dest))
    assert proc.returncode == 1 and "already exists" in proc.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "recipe.yaml"]
    proc = tp("recipes", "cp", "bert-base", "/proc/tp-recipe")  # a place nobody can write
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot create /proc/tp-recipe")
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    proc = tp("recipes", "cp", "vit-bsae", str(tmp_path / "x"))
    assert proc.returncode == 1 and "did you mean 'vit-base'?" in proc.stderr
    assert not (tmp_path / "x").exists() and [p.name for p in tmp_path.iterdir()] == ["mine"]
