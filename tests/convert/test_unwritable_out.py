"""`tp convert` into a folder it cannot write: one clear error naming the folder, exit 1, no
traceback, nothing left behind (it was "internal error: PermissionError")."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tpcli.convert.testing import make_run

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="POSIX permissions; root is handled the Linux way")

SMALL = ["model.hidden_size=32", "model.encoder.layers=2", "model.encoder.heads=2",
         "model.encoder.ffn_size=64", "model.embedding.pos.max_length=64"]
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _obey_permissions() -> None:
    """preexec_fn: root writes into any folder (CAP_DAC_OVERRIDE). Dropped from the bounding
    set before exec, the command runs as root still, but bound by permission bits as any
    user is: a 0555 folder is read-only to it."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _tp(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tpcli.cli.main", *argv], capture_output=True,
                          text=True, env=env, timeout=300, preexec_fn=_obey_permissions)


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Path]:
    """A read-only folder (made writable again afterwards, so that pytest can remove it)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    probe = subprocess.run(["mkdir", str(folder / "probe")], capture_output=True,
                           preexec_fn=_obey_permissions)
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
