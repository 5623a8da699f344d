"""`tp convert` into a folder it cannot write: one clear error naming the folder, exit 1, no
traceback, nothing left behind (it was "internal error: PermissionError")."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tpcli.testing.convert import make_run
from tpcli.testing.faults import obey_permissions

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="POSIX permissions; root is handled the Linux way")

SMALL = ["model.hidden_size=32", "model.encoder.layers=2", "model.encoder.heads=2",
         "model.encoder.ffn_size=64", "model.embedding.pos.max_length=64"]
def _tp(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tpcli.cli.main", *argv], capture_output=True,
                          text=True, env=env, timeout=300, preexec_fn=obey_permissions)


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Path]:
    """A read-only folder (made writable again afterwards, so that pytest can remove it)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    probe = subprocess.run(["mkdir", str(folder / "probe")], capture_output=True,
                           preexec_fn=obey_permissions)
    if probe.returncode == 0:
        folder.chmod(0o755)
        pytest.skip("this machine lets the test process write into a 0555 folder")
    yield folder
    folder.chmod(0o755)


def test_read_only_out_is_a_clear_error(tmp_path: Path, locked: Path) -> None:
    run = make_run("bert-base", tmp_path / "run", SMALL)
    for out in (locked / "hf", locked / "deeper" / "hf"):
        r = _tp("convert", str(run), "--to", "hf", "--out", str(out))
        err = " ".join(r.stderr.split())
        assert r.returncode == 1, r.stderr
        assert f"cannot write {out}: Permission denied in {locked}" in err, err
        assert f"make {locked} writable" in err
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr
        assert list(locked.iterdir()) == []  # no temporary folder left
