"""`tp plugins new`: the distribution it writes installs with pip, its own tests pass (tp's
module contract included), `tp plugins` / `tp modules` list what it registers, and its example
recipe runs; a bad name, an unknown kind or a taken folder is one paragraph, exit 1, and
nothing written.

Installs go into a --target folder that only the subprocesses given it as PYTHONPATH see, so
the shared venv is left as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tpcli.cli.main import main
from tpcli.scaffold import KINDS, names

ALL = list(KINDS)


def run(args: list[str], site: Path | None = None, cwd: Path | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """A command with the scaffold's --target site (if any) on PYTHONPATH, no TP_* from the
    caller, offline, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TP_")}
    env.update(HF_HUB_OFFLINE="1", COLUMNS="400", NO_COLOR="1", OMP_NUM_THREADS="1",
               TP_PEAK_FLOPS="1e12")
    env.pop("PYTHONPATH", None)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def tp(*args: str, site: Path | None = None, cwd: Path | None = None
       ) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("tp")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "tpcli.cli.main"]
    return run(cmd + list(args), site, cwd)


def scaffold(tmp: Path, name: str, *kinds: str) -> Path:
    """`tp plugins new NAME --kind ... --dir tmp` through the real CLI; the new folder."""
    flags = [x for k in kinds for x in ("--kind", k)]
    assert main(["plugins", "new", name, *flags, "--dir", str(tmp)]) == 0
    return tmp / name


def install(src: Path, tmp: Path) -> Path:
    """pip-install the scaffold, as written, into a --target folder; that folder."""
    site = tmp / "site"
    proc = run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                "--no-index", "--quiet", "--target", str(site), str(src)], timeout=300)
    assert proc.returncode == 0, proc.stderr
    return site


def own_tests(src: Path, site: Path) -> dict[str, int]:
    """Run the scaffold's tests with pytest in a subprocess; counts of passed and contract
    tests (they must all pass)."""
    proc = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA"],
               site, cwd=src, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    passed = [ln for ln in proc.stdout.splitlines() if ln.startswith("PASSED")]
    return {"passed": len(passed), "contract": sum("contract[" in ln for ln in passed)}


def test_encoder_scaffold_installs_tests_lists_and_trains(tmp_path: Path) -> None:
    src = scaffold(tmp_path, "my-thing", "encoder")
    files = {str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()}
    assert {"pyproject.toml", "README.md", "tp_my_thing/plugin.py", "tp_my_thing/my_thing.py",
            "tests/conftest.py", "tests/test_my_thing.py", "tests/test_recipe.py",
            "recipes/my-thing-tiny/recipe.yaml"} <= files
    assert '[project.entry-points.tp]\nmy-thing = "tp_my_thing.plugin"' in \
        (src / "pyproject.toml").read_text()
    site = install(src, tmp_path)
    assert (site / "tp_my_thing" / "my_thing.py").is_file()

    counts = own_tests(src, site)
    assert counts["contract"] == 3  # forward_backward, state_dict_round_trip, config
    assert counts["passed"] == 7

    plugins = {r["plugin"]: r for r in json.loads(tp("plugins", "--json", site=site).stdout)}
    assert plugins["my-thing"]["distribution"] == "my-thing"
    assert plugins["my-thing"]["registered"] == ["encoder:my_thing"]
    mods = json.loads(tp("modules", "encoder", "--json", site=site).stdout)
    mine = next(m for m in mods if m["name"] == "my_thing")
    assert mine["distribution"] == "my-thing" and mine["error"] is None
    assert {o["name"]: o["default"] for o in mine["options"]} == {
        "layers": 2, "ffn_size": 512, "kernel_size": 3}

    recipe = src / "recipes" / "my-thing-tiny"
    proc = tp("recipes", "show", str(recipe), "--json", site=site)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["recipe"]["model"]["encoder"]["name"] == "my_thing"
    assert shown["recipe"]["model"]["encoder"]["kernel_size"] == 3  # a default filled in
    # counted by hand: word (69-token vocab.txt) + pos (512 rows) + the embedding's norm, two
    # blocks (2 norms, depthwise conv, MLP), the final norm; the lm head is tied to word
    h, f, k, v, p = 32, 64, 3, 69, 512
    block = 2 * 2 * h + (h * k + h) + (h * f + f) + (f * h + h)
    assert shown["parameters"] == v * h + p * h + 2 * h + 2 * block + 2 * h

    proc = tp("preprocess", str(recipe), "--corpus", str(recipe / "corpus.txt"), "--out",
              str(tmp_path / "data"), site=site)
    assert proc.returncode == 0, proc.stderr
    proc = tp("pretrain", str(recipe), "--data", str(tmp_path / "data"), "--out",
              str(tmp_path / "run"), "--no-progress", "--json", "pretrain.steps=3",
              "pretrain.save_every=3", site=site)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3


def test_every_kind_in_one_distribution(tmp_path: Path) -> None:
    """All seven kinds at once: each module file and test, registered by one plugin, listed."""
    src = scaffold(tmp_path, "tp-all", *ALL)
    mods = {k: f"all_{k}" for k in ALL}
    for k in ALL:
        assert (src / "tp_all" / f"{mods[k]}.py").is_file()
        assert (src / "tests" / f"test_{mods[k]}.py").is_file()
    site = install(src, tmp_path)
    counts = own_tests(src, site)
    assert counts["contract"] == 10  # embedding 4, encoder 3, target 3
    # + one `registered` test per kind, behaviour (2 per model kind, 1 per other), the recipe
    assert counts["passed"] == 10 + 7 + (3 * 2 + 4) + 1

    plugins = {r["plugin"]: r for r in json.loads(tp("plugins", "--json", site=site).stdout)}
    assert sorted(plugins["tp-all"]["registered"]) == sorted(f"{k}:{mods[k]}" for k in ALL)
    listed = {(m["kind"], m["name"]): m for m in
              json.loads(tp("modules", "--json", site=site).stdout)}
    for k in ("embedding", "encoder", "target", "tokenizer", "processor", "task"):
        assert listed[(k, mods[k])]["error"] is None, listed[(k, mods[k])]
        assert listed[(k, mods[k])]["distribution"] == "tp-all"
    shown = json.loads(tp("recipes", "show", str(src / "recipes" / "all-tiny"), "--json",
                          site=site).stdout)
    model, data = shown["recipe"]["model"], shown["recipe"]["data"]
    assert model["encoder"]["name"] == "all_encoder"
    assert data["tokenizer"]["name"] == "all_tokenizer"  # the byte tokenizer: 261 ids
    assert data["processor"] == {"name": "all_processor", "seq_length": 32}

    # the whole chain through tp: its tokenizer and processor preprocess, its embedding,
    # encoder and target pretrain, its task fine-tunes the result
    recipe = src / "recipes" / "all-tiny"
    proc = tp("preprocess", str(recipe), "--corpus", str(recipe / "corpus.txt"), "--out",
              str(tmp_path / "data"), "--json", site=site)
    assert proc.returncode == 0, proc.stderr
    corpus = (recipe / "corpus.txt").read_text(encoding="utf-8").splitlines()
    assert json.loads(proc.stdout)["tokens"] == sum(len(t.encode()) for t in corpus)  # bytes
    proc = tp("pretrain", str(recipe), "--data", str(tmp_path / "data"), "--out",
              str(tmp_path / "run"), "--no-progress", "--json", "pretrain.steps=2",
              "pretrain.save_every=2", site=site)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "train.tsv").write_text("pos\tgood film\nneg\tbad film\npos\tnice\n")
    (tmp_path / "dev.tsv").write_text("pos\tfine film\nneg\tbad\n")
    proc = tp("finetune", "--init", str(tmp_path / "run"), "--task", "all_task", "--train",
              str(tmp_path / "train.tsv"), "--dev", str(tmp_path / "dev.tsv"), "--out",
              str(tmp_path / "ft"), "--no-progress", "--json", "finetune.epochs=1", site=site)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["task"] == "all_task"
    assert result["runs"][0]["dev"]["dev"]["examples"] == 2.0
    assert result["runs"][0]["fresh"] == ["targets.cls.classifier.weight",
                                          "targets.cls.classifier.bias"]


@pytest.mark.parametrize("kind", ALL)
def test_each_kind_alone(tmp_path: Path, kind: str) -> None:
    """One kind: its module is named after the plugin, registered by the matching hook, and
    every file written is valid Python / TOML."""
    import tomllib

    src = scaffold(tmp_path, "acme-x", kind)
    text = (src / "tp_acme_x" / "plugin.py").read_text()
    hook = {"embedding": "modules", "encoder": "modules", "target": "modules"}.get(kind, kind + "s")
    assert f"def tp_register_{hook}(" in text and '"acme_x"' in text
    for path in src.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")
    deps = tomllib.loads((src / "pyproject.toml").read_text())["project"]["dependencies"]
    assert deps == (["tpcli", "tp-text"] if kind == "converter" else ["tpcli"])
    assert f"acme_x` ({'tp_acme_x'}/acme_x.py)" in (src / "README.md").read_text()


def test_names() -> None:
    assert names("my-thing") == {"dist": "my-thing", "package": "tp_my_thing",
                                 "name": "my_thing", "class": "MyThing", "plugin": "my-thing"}
    assert names("tp-foo.Bar")["package"] == "tp_foo_bar"
    assert names("tp-foo", module_name="foo2")["name"] == "foo2"


@pytest.mark.parametrize("args,message", [
    (["plugins", "new", "bad name!"], "is not a valid distribution name"),
    (["plugins", "new", "ok", "--kind", "encodr"], "unknown kind 'encodr'"),
    (["plugins", "new", "ok", "--module-name", "Bad-Name"], "cannot be a registry"),
    (["plugins", "new", "taken"], "already exists and is not an empty folder"),
])
def test_errors_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              args: list[str], message: str) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(args + ["--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "hint: " in err
    assert "Traceback" not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_an_empty_folder_is_filled(tmp_path: Path) -> None:
    (tmp_path / "fresh").mkdir()
    src = scaffold(tmp_path, "fresh", "tokenizer")
    assert (src / "tp_fresh" / "fresh.py").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh"]  # no temporary left
