"""Make `tp_example` importable without installing it (most tests register it in-process), and
the distribution installed for real with pip once a session (`site`), for the tests that run
`tp` the way a user who pip-installed it does."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# tp's module contract over this distribution's modules (build, forward, backward, state dict,
# Config): the checks tp's built-ins pass, collected here as contract[CHECK-KIND-NAME]
from tpcli.testing.contract_plugin import pytest_collect_file  # noqa: F401,E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install the example plugin into a --target folder that only the subprocesses given
    it as PYTHONPATH see (from a copy, so no build/ lands in the repository)."""
    tmp = tmp_path_factory.mktemp("example-plugin")
    src, target = tmp / "src", tmp / "site"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                             "__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps",
                           "--no-build-isolation", "--no-index", "--quiet", "--target",
                           str(target), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (target / "tp_example" / "cards" / "minilm-pkg.yaml").is_file()  # package data
    return target
