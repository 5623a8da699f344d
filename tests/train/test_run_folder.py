"""Run folders: what may start a run where, what --resume accepts, what a resume records, and
what Ctrl-C / SIGTERM leave behind. Real `tp` processes and real signals."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tpcli.testing.faults import obey_permissions
from tpcli.train import run_folder

from .conftest import TP, losses, run_tp

FAST = ["pretrain.steps=6", "pretrain.save_every=2", "pretrain.log_every=2", "pretrain.keep_last=5",
        "--no-progress"]


def _pretrain(recipe: Path, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_tp("pretrain", str(recipe), "--data", str(data), "--out", str(out), *FAST, *extra)


def test_a_sequence_longer_than_the_model_fails_before_the_folder_exists(
        tmp_path: Path, tiny_recipe: Path, tiny_data: Path) -> None:
    out = tmp_path / "run"
    # the data holds 32-token examples; a position table of 16 rows cannot take them
    r = _pretrain(tiny_recipe, tiny_data, out, "model.embedding.pos.max_length=16")
    assert r.returncode == 1, r.stderr
    assert "longer than max_length 16" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_a_folder_without_checkpoint_is_taken_over(tmp_path: Path, tiny_recipe: Path,
                                                   tiny_data: Path) -> None:
    out = tmp_path / "run"
    # diverges at the first read of the loss (step 2), before the first save (step 4)
    r = _pretrain(tiny_recipe, tiny_data, out, "pretrain.lr=1e9", "pretrain.grad_clip=0",
                  "pretrain.warmup_steps=0", "pretrain.save_every=4")
    assert r.returncode == 1 and "loss became" in r.stderr, r.stderr
    assert (out / "run.json").is_file() and not run_folder.checkpoints(out)
    r = run_tp("pretrain", "--resume", str(out))
    assert r.returncode == 1 and "holds no checkpoint" in r.stderr
    assert "is taken over" in r.stderr  # the hint says the same command will work
    r = _pretrain(tiny_recipe, tiny_data, out)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in run_folder.checkpoints(out)][-1] == "step-00000006"
    assert all("event" not in json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines())
    # a folder with checkpoints is never taken over, a foreign folder neither
    r = _pretrain(tiny_recipe, tiny_data, out)
    assert r.returncode == 1 and f"--resume {out}" in r.stderr
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"x")
    r = _pretrain(tiny_recipe, tiny_data, foreign)
    assert r.returncode == 1 and "not a tp run folder (it holds cat.jpg)" in r.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["cat.jpg"]


def test_resume_from_an_earlier_checkpoint_records_the_segment(
        tmp_path: Path, tiny_recipe: Path, tiny_data: Path) -> None:
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert _pretrain(tiny_recipe, tiny_data, ref, "pretrain.steps=8").returncode == 0
    assert _pretrain(tiny_recipe, tiny_data, out).returncode == 0
    step2 = out / "checkpoints" / "step-00000002"
    r = run_tp("pretrain", "--resume", str(step2), "pretrain.steps=8", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "resuming at step 2" in r.stderr
    # the same losses as a run that went to 8 steps at once: the schedule of 8 steps from step 2
    assert losses(out) == pytest.approx(losses(ref), abs=1e-5)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    marks = [x for x in rows if x.get("event") == "resume"]
    assert len(marks) == 1 and marks[0]["step"] == 2 and marks[0]["dropped_rows"] == 2
    assert [x["step"] for x in rows if "event" not in x] == [2, 4, 6, 8]  # each step once
    assert yaml.safe_load((out / "recipe.yaml").read_text())["pretrain"]["steps"] == 8
    info = json.loads((out / "run.json").read_text())
    assert [(s["start_step"], s["steps"]) for s in info["segments"]] == [(0, 6), (2, 8)]
    assert info["overrides"][-1] == "pretrain.steps=8"
    assert (out / "last").resolve().name == "step-00000008"


def test_a_damaged_last_names_the_earlier_checkpoints(tmp_path: Path, tiny_recipe: Path,
                                                      tiny_data: Path) -> None:
    out = tmp_path / "run"
    assert _pretrain(tiny_recipe, tiny_data, out).returncode == 0
    (out / "last" / "model.safetensors").write_bytes(b"\0" * 64)  # corrupt in place
    r = run_tp("pretrain", "--resume", str(out), "pretrain.steps=8")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "corrupt" in r.stderr and "step-00000004" in r.stderr, r.stderr
    (out / "last" / "model.safetensors").unlink()  # and now missing
    r = run_tp("pretrain", "--resume", str(out), "pretrain.steps=8")
    assert r.returncode == 1
    assert "`last` checkpoint is missing or damaged" in r.stderr
    assert "step-00000002, step-00000004" in r.stderr
    hint = r.stderr.split("`tp pretrain --resume ")[1].split("`")[0]
    assert hint.endswith("checkpoints/step-00000004")
    r = run_tp("pretrain", "--resume", hint, "pretrain.steps=8", "--no-progress")
    assert r.returncode == 0, r.stderr


def test_arguments_a_resume_would_ignore_are_errors(tmp_path: Path, tiny_recipe: Path,
                                                    tiny_data: Path) -> None:
    out = tmp_path / "run"
    r = run_tp("pretrain", str(tiny_recipe), "--resume", str(out))
    assert r.returncode == 1 and "both a recipe" in r.stderr and "--resume" in r.stderr
    r = run_tp("pretrain", "--resume", str(out), "--out", str(tmp_path / "other"))
    assert r.returncode == 1 and "a resumed run writes into the folder it resumes" in r.stderr


def test_weights_are_readable_like_their_neighbours(tmp_path: Path, tiny_recipe: Path,
                                                    tiny_data: Path) -> None:
    out = tmp_path / "run"
    assert _pretrain(tiny_recipe, tiny_data, out, "pretrain.steps=2").returncode == 0
    mask = os.umask(0)
    os.umask(mask)
    for f in ("model.safetensors", "trainer.pt", "checkpoint.json"):
        mode = stat.S_IMODE((out / "last" / f).stat().st_mode)
        assert mode == 0o666 & ~mask, (f, oct(mode))
    hf = tmp_path / "hf"  # the converted folder's weights too (safetensors alone writes 0600)
    r = run_tp("convert", str(out), "--to", "hf", "--out", str(hf))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((hf / "model.safetensors").stat().st_mode) == 0o666 & ~mask


def _start(recipe: Path, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*TP, "pretrain", str(recipe), "--data", str(data), "--out", str(out),
                             "pretrain.steps=100000", "pretrain.log_every=1", "--no-progress",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _wait_for(proc: subprocess.Popen, path: Path) -> None:
    deadline = time.time() + 120
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_after_a_checkpoint_exits_130_and_says_resume(
        sig: int, tmp_path: Path, tiny_recipe: Path, tiny_data: Path) -> None:
    out = tmp_path / "run"
    proc = _start(tiny_recipe, tiny_data, out, "pretrain.save_every=3")
    _wait_for(proc, out / "last")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    name = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C"
    assert f"interrupted: tp pretrain stopped by {name}" in err
    assert f"continue with `tp pretrain --resume {out}`" in err
    assert not list((out / "checkpoints").glob(".tmp-*"))
    r = run_tp("pretrain", "--resume", str(out), "pretrain.steps=6", "--no-progress")
    assert r.returncode in (0, 1), r.stderr  # 1 only when it was stopped past step 6
    assert "Traceback" not in r.stderr


def test_interrupt_before_a_checkpoint_says_the_folder_is_taken_over(
        tmp_path: Path, tiny_recipe: Path, tiny_data: Path) -> None:
    out = tmp_path / "run"
    proc = _start(tiny_recipe, tiny_data, out, "pretrain.save_every=100000")
    _wait_for(proc, out / "metrics.jsonl")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "before its first checkpoint" in err and "taken over" in err
    assert _pretrain(tiny_recipe, tiny_data, out, "pretrain.steps=2").returncode == 0


def test_without_a_terminal_the_first_step_is_reported(tmp_path: Path, tiny_recipe: Path,
                                                       tiny_data: Path) -> None:
    r = _pretrain(tiny_recipe, tiny_data, tmp_path / "run", "pretrain.log_every=5",
                  "pretrain.steps=5")
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("step ")]
    assert lines[0].startswith("step      1/5 | first step done")
    assert lines[1].startswith("step      5/5 | loss") and "eta 0s" in lines[1]


def test_an_unwritable_out_is_a_user_error(tmp_path: Path, tiny_recipe: Path,
                                           tiny_data: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    r = subprocess.run([*TP, "pretrain", str(tiny_recipe), "--data", str(tiny_data), "--out",
                        str(locked / "run"), *FAST], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"},
                       preexec_fn=obey_permissions, timeout=300)
    assert r.returncode == 1, r.stderr
    assert f"cannot write into {locked / 'run'}: Permission denied" in r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    assert list(locked.iterdir()) == []
