"""Faults during training: a loss that turns NaN, a disk that fills while saving.

Both must stop the run with one clear message (exit 1, no traceback) and leave the last good
checkpoint as the run's `last`, so `--resume` can continue from it.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
from pathlib import Path

from safetensors.torch import load_file

from .conftest import TP


def _tp(*args: str, file_limit: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:  # in the child: a real per-file size limit (EFBIG), not a mock
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*TP, *args], capture_output=True, text=True, env=env, timeout=300,
                          preexec_fn=limit if file_limit is not None else None)


def _last_step(run: Path) -> int:
    return json.loads((run / "last" / "checkpoint.json").read_text())["step"]


def test_nan_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, tiny_recipe: Path, tiny_data: Path) -> None:
    run = tmp_path / "run"
    # a learning rate that blows the weights up within a few steps; checkpoints every step but
    # the loss is only read back every 5 steps: no checkpoint may hold the broken weights
    r = _tp("pretrain", str(tiny_recipe), "--data", str(tiny_data), "--out", str(run),
            "pretrain.lr=1e6", "pretrain.grad_clip=0", "pretrain.warmup_steps=0",
            "pretrain.steps=40", "pretrain.log_every=5", "pretrain.save_every=1",
            "pretrain.keep_last=2", "--no-progress")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    msg = r.stderr
    assert "loss became" in msg and "at step" in msg, msg
    bad = int(msg.split("at step")[1].split()[0].strip(";,."))
    last = _last_step(run)
    assert last < bad, (last, bad)
    weights = load_file(str(run / "last" / "model.safetensors"))
    assert all(bool(t.float().isfinite().all()) for t in weights.values())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(m["loss"]) for m in records)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(
        tmp_path: Path, tiny_recipe: Path, tiny_data: Path) -> None:
    run = tmp_path / "run"
    args = ("--data", str(tiny_data), "--no-progress", "pretrain.log_every=1",
            "pretrain.save_every=2")
    r = _tp("pretrain", str(tiny_recipe), "--out", str(run), *args, "pretrain.steps=2")
    assert r.returncode == 0, r.stderr
    before = {p.name: p.read_bytes() for p in (run / "last").iterdir() if p.is_file()}
    size = (run / "last" / "model.safetensors").stat().st_size
    # resume with files capped below one checkpoint's weights: writing step 4 must fail
    r = _tp("pretrain", "--resume", str(run), "pretrain.steps=4", file_limit=size // 2)
    assert r.returncode == 1, r.stderr
    assert "could not write checkpoint" in r.stderr and "previous checkpoint is intact" in r.stderr
    assert "Traceback" not in r.stderr
    assert _last_step(run) == 2
    after = {p.name: p.read_bytes() for p in (run / "last").iterdir() if p.is_file()}
    assert after == before
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []
    # with space again, the run continues from step 2
    r = _tp("pretrain", "--resume", str(run), "pretrain.steps=4")
    assert r.returncode == 0, r.stderr
    assert _last_step(run) == 4
