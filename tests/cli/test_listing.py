"""What the listing commands and the verbs print on stdout: plain, never-wrapped lines when
piped, one JSON document with `--json`, and a `tp modules` that reads its listing from the
modules' source instead of importing them (no torch)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tpcli.cli.render import jsonable, plain_lines
from tpcli.plugins import make_plugins
from tpcli.plugins.static_read import ClassFacts, Option, facts_of, read_class
from tpcli.testing.plugins import fake_distribution

REPO = Path(__file__).resolve().parents[2]


def tp(*args: str, pythonpath: Path | None = None,
       **env_extra: str) -> subprocess.CompletedProcess[str]:
    """`tp` as a user runs it in a pipe (stdout is not a terminal), with a narrow terminal
    width: nothing printed may wrap at it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TP_")}
    env.update(HF_HUB_OFFLINE="1", COLUMNS="60", NO_COLOR="1", **env_extra)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    script = Path(sys.executable).with_name("tp")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "tpcli.cli.main"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=120)


def plain_rows(out: str) -> list[list[str]]:
    """The cells of piped output, cut where the header's columns start."""
    header, *lines = out.splitlines()
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    bounds = list(zip(starts, starts[1:] + [None]))
    return [[line[a:b].strip() for a, b in bounds] for line in lines]


# ---------------------------------------------------------------- tp modules: read, not imported


def test_static_reading_matches_the_imported_classes() -> None:
    """The contract of `tpcli.plugins.static_read`: for every registered module, what it reads from the
    source is what the imported class says, and it reads every built-in (or `tp modules` would
    import torch again)."""
    entries = [e for e in make_plugins().registry.entries()
               if e.kind not in ("converter", "command")]
    assert len(entries) > 40
    for entry in entries:
        assert isinstance(entry.target, str), entry.name  # registered lazily
        got = read_class(entry.target)
        assert got is not None, f"{entry.kind} {entry.name}: not readable from {entry.target}"
        assert got == facts_of(entry.load()), f"{entry.kind} {entry.name}"


UNUSUAL = '''
"""A plugin module whose Config the static reader does not follow."""
from pydantic import BaseModel, Field

WIDTHS = [1, 2]


class Plain:
    """Plain: a class without a Config."""


class Factory:
    """Factory: a default built by a function."""

    class Config(BaseModel):
        widths: list[int] = Field(default_factory=lambda: list(WIDTHS))
        depth: int = 3


class Computed:
    """Computed: a default that is an expression."""

    class Config(BaseModel):
        size: int = 2 ** 10


class Inherits(Factory):
    """Inherits: its Config comes from the base class."""
'''


@pytest.fixture
def unusual(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "tp_unusual_mod.py").write_text(UNUSUAL)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "tp_unusual_mod"
    sys.modules.pop("tp_unusual_mod", None)


def test_what_cannot_be_read_is_imported(unusual: str) -> None:
    def plugin(register: Any) -> None:
        for name in ("Plain", "Factory", "Computed", "Inherits"):
            register("embedding", name.lower(), f"{unusual}:{name}")

    mod = types.ModuleType("unusual_plugin")
    from tpcli import hookimpl

    mod.tp_register_modules = hookimpl(plugin)  # type: ignore[attr-defined]
    registry = make_plugins(extra=[mod]).registry
    assert read_class(f"{unusual}:Plain") == ClassFacts("Plain: a class without a Config.", None)
    for name in ("factory", "computed", "inherits"):
        assert read_class(f"{unusual}:{name.title()}") is None, name
    assert unusual not in sys.modules  # reading executed nothing
    facts = {n: registry.entry("embedding", n).facts() for n in ("factory", "computed", "inherits")}
    assert facts["factory"].options == [Option("widths", False, [1, 2]), Option("depth", False, 3)]
    assert facts["computed"].options == [Option("size", False, 1024)]
    assert facts["inherits"] == ClassFacts("Inherits: its Config comes from the base class.",
                                           facts["factory"].options)


def test_listing_every_module_imports_no_torch() -> None:
    code = ("import sys; from tpcli.cli.main import main; rc = main(['modules']); "
            "heavy = [m for m in ('torch', 'tp_text.word', 'tp_encoders.transformer') "
            "if m in sys.modules]; print('IMPORTED', heavy, rc, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.stderr.strip().endswith("IMPORTED [] 0"), proc.stderr


def test_modules_piped_is_one_line_per_module() -> None:
    listed = json.loads(tp("modules", "--json").stdout)
    proc = tp("modules")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "PLUGIN", "DESCRIPTION", "OPTIONS"]
    assert len(lines) == 1 + len(listed)  # no wrapped continuation lines, no title, no box
    rows = {(r[0], r[1]): r for r in plain_rows(proc.stdout)}
    pos = rows[("embedding", "pos")]
    assert pos[2] == "text" and pos[3].startswith("Learned absolute positions")
    assert pos[4] == "max_length=512, offset=0, padding_aware=False"
    word = next(m for m in listed if m["name"] == "word" and m["kind"] == "embedding")
    assert word["distribution"] == "tp-text" and word["error"] is None


def test_one_module_piped_and_json() -> None:
    proc = tp("modules", "encoder", "transformer")
    assert proc.returncode == 0, proc.stderr
    head, *rest = proc.stdout.splitlines()
    assert head.startswith("encoder transformer from plugin encoders (tp-encoders): ")
    options = json.loads(tp("modules", "encoder", "transformer", "--json").stdout)["options"]
    assert [r[0] for r in plain_rows("\n".join(rest))] == [o["name"] for o in options]
    layers = next(o for o in options if o["name"] == "layers")
    assert layers["default"] == 12 and layers["type"] == "int" and not layers["required"]
    section = json.loads(tp("modules", "pretrain", "--json").stdout)
    assert section["kind"] == "pretrain" and "lr" in [o["name"] for o in section["options"]]


# ---------------------------------------------------------------- other listings


def test_recipes_and_plugins_piped_and_json() -> None:
    proc = tp("recipes")
    assert proc.returncode == 0, proc.stderr
    rows = {r[0]: r for r in plain_rows(proc.stdout)}
    assert rows["bert-base"][1:5] == ["word, pos, seg", "transformer", "-", "mlm, sp"]
    assert rows["gpt2"][1] == "word, pos"  # `{pos: {max_length: 1024}}` is the module pos
    got = {r["name"]: r for r in json.loads(tp("recipes", "--json").stdout)}
    assert got["bert-base"]["decoder"] is None and got["t5-small"]["decoder"] == "transformer"
    plugins = {r["plugin"]: r for r in json.loads(tp("plugins", "--json").stdout)}
    assert "embedding:word" in plugins["text"]["registered"]
    assert plugins["text"]["error"] is None and plugins["text"]["clashes"] == []
    lines = tp("plugins").stdout.splitlines()
    assert lines[0].split()[:3] == ["PLUGIN", "DISTRIBUTION", "VERSION"]
    assert len(lines) == 1 + len(plugins)


# ---------------------------------------------------------------- the verbs' summaries

VERBS_PLUGIN = '''
from tpcli import hookimpl

SUMMARY = {"steps": 100000, "loss": 1.234567891, "tokens_per_s": float("nan"),
           "out": "/runs/" + "a-very-long-run-folder-name/" * 6 + "end",
           "note": "[bold]not markup[/]", "history": [1, 2]}

@hookimpl
def tp_preprocess(request):
    return SUMMARY

@hookimpl
def tp_pretrain(request):
    return SUMMARY

@hookimpl
def tp_finetune(request):
    return SUMMARY

@hookimpl
def tp_convert(request):
    return SUMMARY
'''


@pytest.fixture(scope="module")
def verbs_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A distribution whose plugin answers every verb with a long summary."""
    return fake_distribution(tmp_path_factory.mktemp("verbs-site"), "listing-verbs", "0.0.1",
                             "listingverbs = listing_verbs_mod",
                             {"listing_verbs_mod.py": VERBS_PLUGIN})


VERB_ARGS = {
    "preprocess": ["preprocess", "bert-tiny", "--corpus", "c.txt", "--out", "d"],
    "pretrain": ["pretrain", "bert-tiny", "--data", "d", "--out", "r"],
    "convert": ["convert", "r", "--to", "hf", "--out", "h"],
    "finetune": ["finetune", "--init", "r", "--task", "classification", "--out", "f"],
}


@pytest.mark.parametrize("verb", ["preprocess", "pretrain", "convert"])
def test_the_summary_is_one_line_when_piped(verb: str, verbs_site: Path) -> None:
    proc = tp(*VERB_ARGS[verb], pythonpath=verbs_site)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.splitlines()[-1]  # what `| tail -1` gets
    assert last == (f"{verb} done: steps=100000, loss=1.235, tokens_per_s=nan, out=/runs/"
                    + "a-very-long-run-folder-name/" * 6 + "end, note=[bold]not markup[/]")


@pytest.mark.parametrize("verb", ["preprocess", "pretrain", "convert", "finetune"])
def test_json_summary_is_one_object(verb: str, verbs_site: Path) -> None:
    proc = tp(*VERB_ARGS[verb], "--json", pythonpath=verbs_site)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    got = json.loads(line)
    assert got["steps"] == 100000 and got["loss"] == 1.234567891 and got["history"] == [1, 2]
    assert got["tokens_per_s"] is None  # NaN is not JSON: null
    assert got["out"].endswith("/end")


def test_jsonable_and_plain_lines() -> None:
    assert jsonable({"p": Path("/x"), "t": (1, math.inf), 2: {"s": {3}}}) == {
        "p": "/x", "t": [1, None], "2": {"s": [3]}}
    assert plain_lines(("a", "bb"), [("x", ""), ("longer", "two\nlines")]) == [
        "A       BB", "x       -", "longer  two lines"]
