"""A run killed with SIGKILL resumes and produces the same losses as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import torch

from .conftest import TP, losses, run_tp


def test_sigkill_resume_matches_uninterrupted(tmp_path: Path, tiny_recipe: Path,
                                              tiny_data: Path) -> None:
    steps = ["pretrain.steps=120", "pretrain.save_every=20"]
    ref = tmp_path / "ref"
    r = run_tp("pretrain", str(tiny_recipe), "--data", str(tiny_data), "--out", str(ref), *steps,
               "--no-progress")
    assert r.returncode == 0, r.stderr
    expected = losses(ref)
    assert sorted(expected) == list(range(1, 121))

    run = tmp_path / "killed"
    proc = subprocess.Popen([*TP, "pretrain", str(tiny_recipe), "--data", str(tiny_data),
                             "--out", str(run), *steps, "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step-00000040").is_dir():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = max(losses(run))
    assert 40 <= killed_at < 120

    r = run_tp("pretrain", "--resume", str(run), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "resuming at step" in r.stderr
    got = losses(run)
    assert sorted(got) == list(range(1, 121))
    for step in range(1, 121):
        assert abs(got[step] - expected[step]) <= 1e-6 * max(1.0, abs(expected[step])), step
    # the last checkpoint is complete and `last` points at it
    assert (run / "last").resolve().name == "step-00000120"
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_resume_of_finished_run_says_how_to_extend(tmp_path: Path, tiny_recipe: Path,
                                                   tiny_data: Path) -> None:
    run = tmp_path / "r"
    assert run_tp("pretrain", str(tiny_recipe), "--data", str(tiny_data), "--out", str(run),
                  "pretrain.steps=5", "--no-progress").returncode == 0
    r = run_tp("pretrain", "--resume", str(run), "--no-progress")
    assert r.returncode == 1
    assert "already finished step 5" in r.stderr and "pretrain.steps=10" in r.stderr
    r = run_tp("pretrain", "--resume", str(run), "pretrain.steps=8", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert max(losses(run)) == 8


def test_pretrain_init_starts_a_new_run_from_another_runs_weights(
        tmp_path: Path, tiny_recipe: Path, tiny_data: Path) -> None:
    """pretrain.init (TencentPretrain's --pretrained_model_path): a new run, step 1, starting
    from the weights of another run; with a learning rate too small to move them, the new run's
    checkpoint holds the first run's weights. A model it does not fit is a clean error."""
    from tpcli.train.checkpoint import find_checkpoint, read_weights

    first, second = tmp_path / "first", tmp_path / "second"
    assert run_tp("pretrain", str(tiny_recipe), "--data", str(tiny_data), "--out", str(first),
                  "pretrain.steps=3", "--no-progress").returncode == 0
    r = run_tp("pretrain", str(tiny_recipe), "--data", str(tiny_data), "--out", str(second),
               f"pretrain.init={first}", "pretrain.steps=1", "pretrain.lr=1e-30",
               "pretrain.warmup_steps=0", "pretrain.weight_decay=0", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"init: weights from {find_checkpoint(first)}" in r.stderr
    assert max(losses(second)) == 1
    a, b = read_weights(find_checkpoint(first)), read_weights(find_checkpoint(second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    r = run_tp("pretrain", str(tiny_recipe), "--data", str(tiny_data), "--out",
               str(tmp_path / "bad"), f"pretrain.init={first}", "model.hidden_size=48",
               "--no-progress")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "does not fit this model" in r.stderr and "mis-shaped" in r.stderr
    assert not (tmp_path / "bad").exists()
