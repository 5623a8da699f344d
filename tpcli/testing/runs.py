"""What tests of training runs share: `tp` in a fresh process, the losses a run logged, a
hook that stops a run like Ctrl-C (for exact-resume tests), and a quiet machine for in-process
runs. Plugins' tests use them too."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from tpcli import hookimpl


def run_tp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`tp ARGS` in a fresh process, offline, as a user runs it: a clean environment (no
    TP_LOAD_PLUGINS or TP_HOME of the caller's), a fixed FLOP peak for MFU, plus `env`."""
    return subprocess.run([sys.executable, "-m", "tpcli.cli.main", *args], capture_output=True,
                          text=True, env={"HF_HUB_OFFLINE": "1", "TP_PEAK_FLOPS": "1e12",
                                          "PATH": "/usr/bin:/bin", **(env or {})})


@contextlib.contextmanager
def quiet_machine() -> Iterator[None]:
    """For in-process training of tiny models: one torch thread (the pool only adds contention
    on a shared machine, and golden losses stay bit-stable), a fixed FLOP peak for MFU instead
    of a second of measuring it, and the Hub offline; all restored after."""
    import torch

    threads = torch.get_num_threads()
    saved = {k: os.environ.get(k) for k in ("TP_PEAK_FLOPS", "HF_HUB_OFFLINE")}
    torch.set_num_threads(1)
    os.environ.update(TP_PEAK_FLOPS="1e12", HF_HUB_OFFLINE="1")
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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


def stop_and_resume(train: Callable[[Path, Any], object], folder: Path,
                    stop_at: int) -> dict[int, float]:
    """`train(folder, plugins)` stopped like Ctrl-C right after step `stop_at` (and saying so),
    then resumed from its last checkpoint to the end, in process: the losses that count."""
    from tpcli.errors import TpError
    from tpcli.plugins import make_plugins
    from tpcli.verbs import PretrainRequest, pretrain

    try:
        train(folder, make_plugins([StopAt(stop_at)]))
    except TpError as e:
        assert "stopped by Ctrl-C" in str(e), e
    else:
        raise AssertionError(f"the run was not stopped after step {stop_at}")
    assert max(logged_losses(folder)) == stop_at - 1  # the stopping step logs nothing
    pretrain(PretrainRequest(None, None, None, resume=folder, progress=False,
                             plugins=make_plugins()))
    return logged_losses(folder)


def assert_same_losses(got: dict[int, float], expected: dict[int, float],
                       rel: float = 1e-6) -> None:
    """Every step's loss, as `expected`'s to `rel` (exact resume: float rounding only)."""
    assert sorted(got) == sorted(expected)
    for step, want in expected.items():
        assert abs(got[step] - want) <= rel * max(1.0, abs(want)), (step, got[step], want)
