"""Distributed training on CPU: 2 processes under torchrun (gloo), via `tp pretrain --nproc 2`.

The reference is ONE process with the same global batch, split the same way: the data rule gives
rank r of W the r-th slice of each micro-batch, so DDP/FSDP with 2 ranks and grad_accum=2 see
exactly the 4 micro-batches of one process with grad_accum=4 (ranks' per-slice mean losses and
averaged gradients = the mean over that process's micro-batches), whatever the target (here BERT's
mlm + sp, whose per-slice means are not the global mean). Dropout is 0: masks cannot match across
a different split. Tolerance: 5e-5 absolute on every logged loss (measured ~1e-6: summation order).

Each distributed run is killed (SIGKILL to one rank) after its first checkpoint and resumed, so
one run shows: the kill surfaces as one error, the last checkpoint is intact, the resumed run
continues with the same losses, and all of them equal the one-process losses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import TP, run_tp

STEPS = 12
OVERRIDES = ["model.encoder.layers=2", "model.dropout=0.0", f"pretrain.steps={STEPS}",
             "pretrain.save_every=3", "pretrain.keep_last=2", "pretrain.log_every=1"]
ENV = {"TP_PEAK_FLOPS": "1e11", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TOL = 5e-5


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path, first: bool = False) -> dict[int, float]:
    """step -> loss; the later line for a step wins (the resumed one) unless `first`."""
    out: dict[int, float] = {}
    for rec in _records(run):
        if "event" in rec:  # the resume marker
            continue
        if not (first and rec["step"] in out):
            out[rec["step"]] = rec["loss"]
    return out


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        found += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return found


def _rank_pids(launcher: int) -> list[int]:
    """The training processes (tpcli.cli.main children of torchrun), in start order; not their
    data workers (forked from them, with the same command line)."""
    pids = []
    for pid in _descendants(launcher):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tpcli.cli.main" in cmd and b"torch.distributed.run" not in cmd:
            pids.append(pid)
    return sorted(p for p in pids if _parent(p) not in pids)


def _parent(pid: int) -> int:
    try:  # /proc/PID/stat: pid (comm) state ppid ...; comm may hold spaces, so split after ')'
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _train_kill_resume(tmp: Path, recipe: Path, data: Path, strategy: str) -> dict:
    """`tp pretrain --nproc 2`, SIGKILL rank 1 once checkpoint 3 exists, resume with --nproc 2."""
    run = tmp / strategy
    cmd = [*TP, "pretrain", str(recipe), "--data", str(data), "--out", str(run), *OVERRIDES,
           f"pretrain.strategy={strategy}", "pretrain.grad_accum=2", "--no-progress", "--nproc", "2"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV})
    first_ckpt = run / "checkpoints" / "step-00000003"
    while not first_ckpt.is_dir():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 120
        time.sleep(0.01)
    ranks = _rank_pids(proc.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[1], signal.SIGKILL)
    _, killed_err = proc.communicate(timeout=60)
    last_before = (run / "last").resolve().name
    info_before = json.loads((run / "last" / "checkpoint.json").read_text())
    killed_at = max(_losses(run))
    r = run_tp("pretrain", "--resume", str(run), "--no-progress", "--nproc", "2", "--json",
               env=ENV)
    return {"run": run, "killed_code": proc.returncode, "killed_err": killed_err,
            "last_before": last_before, "info_before": info_before, "killed_at": killed_at, "resume": r,
            "seconds": time.time() - t0}


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, tiny_recipe: Path, tiny_data: Path) -> Path:
    """The one-process reference: the same global batch (8) in 4 micro-batches of 2."""
    run = tmp_path_factory.mktemp("single") / "run"
    r = run_tp("pretrain", str(tiny_recipe), "--data", str(tiny_data), "--out", str(run),
               *OVERRIDES, "pretrain.grad_accum=4", "--no-progress", env=ENV)
    assert r.returncode == 0, r.stderr
    return run


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory, tiny_recipe: Path, tiny_data: Path) -> dict:
    return _train_kill_resume(tmp_path_factory.mktemp("dist"), tiny_recipe, tiny_data, "ddp")


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory: pytest.TempPathFactory, tiny_recipe: Path, tiny_data: Path) -> dict:
    return _train_kill_resume(tmp_path_factory.mktemp("dist"), tiny_recipe, tiny_data, "fsdp")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_killed_rank_then_resume_gives_one_process_losses(
        strategy: str, single: Path, request: pytest.FixtureRequest) -> None:
    res = request.getfixturevalue(strategy)
    run: Path = res["run"]
    # the kill: one clear error from the launcher, no torchrun traceback, checkpoint intact
    assert res["killed_code"] == 1, res["killed_err"]
    err = res["killed_err"]
    assert err.count("error: ") == 1 and "Traceback" not in err, err
    assert "rank 1 was killed by SIGKILL" in err and f"--resume {run} --nproc 2" in err
    assert 3 <= res["killed_at"] < STEPS
    assert res["last_before"] in {f"step-{s:08d}" for s in range(3, STEPS, 3)}
    assert res["info_before"] == {"step": int(res["last_before"][5:]), "weights": "model.safetensors",
                    "strategy": strategy, "world_size": 2}
    # the resume: the same losses as one process, before and after the kill
    r = res["resume"]
    assert r.returncode == 0, r.stderr
    # --json: one summary on stdout, the launcher's (the ranks print none)
    assert len(r.stdout.splitlines()) == 1, r.stdout
    summary = json.loads(r.stdout)
    assert summary["steps"] == STEPS and summary["nproc"] == 2 and summary["out"] == str(run)
    assert "resuming at step" in r.stderr and r.stderr.count("resuming at step") == 1
    expected = _losses(single)
    assert sorted(expected) == list(range(1, STEPS + 1))
    for first in (True, False):
        got = _losses(run, first=first)
        assert sorted(got) == list(range(1, STEPS + 1))
        for step in got:
            assert abs(got[step] - expected[step]) <= TOL, (strategy, first, step)
    assert (run / "last").resolve().name == f"step-{STEPS:08d}"
    assert not list((run / "checkpoints").glob(".tmp-*"))
    # rank 0 logs alone: one line per step of the resumed run
    recs = _records(run)
    assert len([x for x in recs if x["step"] == STEPS]) == 1
    if strategy == "fsdp":
        assert (run / "last" / "fsdp").is_dir()  # one optimizer shard per rank
        assert len(list((run / "last" / "fsdp").glob("*.distcp"))) == 2


def test_fsdp_export_is_the_whole_model(single: Path, fsdp: dict, ddp: dict) -> None:
    """model.safetensors of an FSDP run: full weights, tp keys, loadable, equal to one process."""
    from tpcli.api import load_checkpoint

    got = load_checkpoint(fsdp["run"])
    ref = load_checkpoint(single)
    other = load_checkpoint(ddp["run"])
    assert got.step == ref.step == STEPS
    a, b, c = got.model.state_dict(), ref.model.state_dict(), other.model.state_dict()
    assert sorted(a) == sorted(b)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst
    assert max(float((c[k] - b[k]).abs().max()) for k in c) < 1e-4


def test_sharded_resume_with_another_world_size_is_refused(fsdp: dict) -> None:
    r = run_tp("pretrain", "--resume", str(fsdp["run"]), f"pretrain.steps={STEPS + 3}",
               "--no-progress", env=ENV)
    assert r.returncode == 1
    assert "holds fsdp shards of 2 processes, but this run has 1" in r.stderr, r.stderr
    assert "--nproc 2" in r.stderr and "Traceback" not in r.stderr


def test_batch_not_divisible_by_ranks_is_one_error(tmp_path: Path, tiny_recipe: Path,
                                                   tiny_data: Path) -> None:
    r = run_tp("pretrain", str(tiny_recipe), "--data", str(tiny_data), "--out",
               str(tmp_path / "r"), "pretrain.batch_size=6", "pretrain.grad_accum=2",
               "--no-progress", "--nproc", "2", env=ENV)
    assert r.returncode == 1
    assert r.stderr.count("error: ") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "pretrain.batch_size=6 is not divisible by pretrain.grad_accum=2 x 2 processes" \
        in r.stderr
