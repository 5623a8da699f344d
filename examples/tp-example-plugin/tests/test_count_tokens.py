"""The verb this plugin adds, `tp count-tokens`, run through `tp` as a user who pip-installed
the plugin runs it: listed by `tp --help` and `tp plugins`, counts equal to the tokenizer's
own, tp's error handling (one paragraph, exit 1, `--debug` traceback), and a verb named like
one of tp's own refused with a warning while tp's stays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tpcli.plugins import get_plugins
from tpcli.recipes import load_recipe

LINES = ["In the beginning God created the heaven and the earth.",
         "And the earth was without form, and void; zzqxj", "", "Let there be light."]


def tp(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TP_")}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", COLUMNS="400", NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "tpcli.cli.main", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_the_plugin_verb_is_listed_and_counts_as_the_tokenizer(site: Path,
                                                              tmp_path: Path) -> None:
    from tpcli.data import build_tokenizer

    proc = tp(site, "--help")
    assert proc.returncode == 0 and "count-tokens" in proc.stdout, proc.stderr
    proc = tp(site, "plugins")
    (row,) = [ln for ln in proc.stdout.splitlines() if ln.strip("│ ").startswith("example ")]
    assert "command:count-tokens" in row and "register_commands" in row
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    proc = tp(site, "count-tokens", "bert-tiny", "--corpus", str(corpus), "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    plugins = get_plugins()
    tok = build_tokenizer(load_recipe("bert-tiny", [], plugins), plugins)
    ids = tok.encode_batch([ln for ln in LINES if ln])
    unk = tok.special_ids["unk"]
    assert got == {"recipe": "bert-tiny", "lines": 3, "tokens": sum(map(len, ids)),
                   "mean": sum(map(len, ids)) / 3, "longest": max(map(len, ids)),
                   "unknown": sum(i == unk for row in ids for i in row)}
    assert got["tokens"] > 20
    proc = tp(site, "count-tokens", "bert-tiny", "--corpus", str(corpus))
    assert proc.stdout.startswith(f"3 lines, {got['tokens']:,} tokens")


def test_the_plugin_verb_runs_under_tps_error_handling(site: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    proc = tp(site, "count-tokens", "bert-tiny", "--corpus", str(missing))
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: corpus {missing} is not")
    assert "hint: pass a text file with --corpus" in proc.stderr and "Traceback" not in proc.stderr
    proc = tp(site, "--debug", "count-tokens", "bert-tiny", "--corpus", str(missing))
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    proc = tp(site, "count-tokens", "vit-tiny", "--corpus", str(missing))
    assert proc.returncode == 1 and "has no tokenizer" in proc.stderr
    proc = tp(site, "count-tokens", "bert-tiny")  # a usage error: click's exit code 2
    assert proc.returncode == 2 and "--corpus" in proc.stderr


def test_a_verb_named_like_tps_own_is_refused_and_a_clash_names_both(site: Path,
                                                                    tmp_path: Path) -> None:
    """Two more plugins (distributions on PYTHONPATH): one registers `pretrain`, both register
    `hello`."""
    from tpcli.testing.plugins import fake_distribution

    for dist in ("tp-one", "tp-two"):
        module = dist.replace("-", "_")
        fake_distribution(tmp_path, dist, "0.1", f"{module} = {module}.plugin", {
            f"{module}/__init__.py": "",
            f"{module}/plugin.py": (
                "from tpcli import hookimpl\n\n"
                "def hello() -> None:\n    print('hello')\n\n"
                "@hookimpl\ndef tp_register_commands(register):\n"
                "    register('hello', hello)\n"
                + ("    register('pretrain', hello)\n" if dist == "tp-one" else ""))})
    env_path = f"{tmp_path}{os.pathsep}{site}"
    proc = tp(Path(env_path), "--help")
    assert proc.returncode == 0 and "count-tokens" in proc.stdout
    assert ("warning: plugin 'tp_one' (tp-one) registers the verb 'pretrain', which is tp's own"
            in proc.stderr)
    proc = tp(Path(env_path), "pretrain", "--help")  # tp's own verb is still there
    assert proc.returncode == 0 and "--resume" in proc.stdout
    proc = tp(Path(env_path), "hello")
    assert proc.returncode == 1 and "command 'hello' is registered twice" in proc.stderr
    assert "(tp-one)" in proc.stderr and "(tp-two)" in proc.stderr
