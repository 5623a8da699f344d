"""What tests of training runs share: `tp` in a fresh process, the losses a run logged, and a
hook that stops a run like Ctrl-C (for exact-resume tests). Plugins' tests use them too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tpcli import hookimpl


def run_tp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`tp ARGS` in a fresh process, offline, as a user runs it: a clean environment (no
    TP_LOAD_PLUGINS or TP_HOME of the caller's), a fixed FLOP peak for MFU, plus `env`."""
    return subprocess.run([sys.executable, "-m", "tpcli.cli.main", *args], capture_output=True,
                          text=True, env={"HF_HUB_OFFLINE": "1", "TP_PEAK_FLOPS": "1e12",
                                          "PATH": "/usr/bin:/bin", **(env or {})})


def logged_losses(run: Path) -> dict[int, float]:
    """step -> loss of a run folder's metrics.jsonl; after a resume the later line for a step
    wins (it is the one that counts)."""
    out: dict[int, float] = {}
    for line in (Path(run) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


class StopAt:
    """A plugin that stops a run like Ctrl-C right after optimizer step `step` (not at a
    checkpoint): `make_plugins([StopAt(10)])`."""

    __name__ = "stop-at"

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def tp_on_step(self, step: int, seconds: float) -> None:
        if step == self.step:
            raise KeyboardInterrupt
