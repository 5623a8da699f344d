"""The core logger: the pace it reports excludes start-up, and a non-terminal run says early
that it started."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tpcli.train import loggers


def test_eta_is_the_pace_after_the_first_step(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    loggers.tp_on_train_start(run={"out": str(tmp_path), "steps": 4, "start_step": 0,
                                   "params": 1, "progress": False})
    try:
        time.sleep(0.6)  # start-up and the first step's warm-up: not the training pace
        loggers.tp_on_step(step=1, seconds=0.6)
        assert loggers._eta(1) is None  # no pace yet
        time.sleep(0.05)
        loggers.tp_on_step(step=2, seconds=0.65)
        eta = loggers._eta(2)
    finally:
        loggers.tp_on_train_end(summary={})
    # 2 steps left at ~0.05 s each; counting the start-up would say ~0.65 s
    assert eta is not None and 0.05 < eta < 0.4
    err = capsys.readouterr().err
    assert "step      1/4 | first step done 0.6s after start-up" in err
