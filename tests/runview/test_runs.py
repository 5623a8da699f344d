"""`tp runs`, `tp runs compare` on real runs: finished, failed, stopped by Ctrl-C, killed with
SIGKILL (and resumed by the command it shows), running, fine-tuned."""

from __future__ import annotations

import contextlib
import json
import resource
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tpcli.runview.read import read_jsonl, read_run

from .conftest import TP, Runs, tp_env


def tp(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`tp ARGS` in this process (stdout is not a terminal: plain lines)."""
    from tpcli.cli.main import main

    rc = main([str(a) for a in args])
    got = capsys.readouterr()
    return rc, got.out, got.err


def _rows(run: Path) -> list[dict]:
    return [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]


def test_lists_every_run_under_a_folder_but_not_their_checkpoints(
        runs: Runs, capsys: pytest.CaptureFixture[str],
        table_rows: Callable[[str], list[list[str]]]) -> None:
    rc, out, _ = tp(capsys, "runs", runs.root, "--json")
    assert rc == 0
    got = {Path(r["path"]): r for r in json.loads(out)}
    assert set(got) == {runs.a, runs.b, runs.failed, runs.ctrlc, runs.killed, runs.ft}
    rc, out, _ = tp(capsys, "runs", runs.root)
    rows = table_rows(out)
    assert rc == 0 and [r[0] for r in rows] == sorted(str(p) for p in got)
    by_path = {r[0]: r for r in rows}
    assert by_path[str(runs.a)][1:4] == ["tiny", "6/6", f"{_rows(runs.a)[-1]['loss']:.4f}"]
    assert by_path[str(runs.a)][5] == "finished"
    # the folder itself may be a run; the default folder is the current one
    rc, out, _ = tp(capsys, "runs", runs.a, "--json")
    assert [r["path"] for r in json.loads(out)] == [str(runs.a)]


def test_a_finished_runs_values_are_its_metrics(runs: Runs, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    rc, out, _ = tp(capsys, "runs", runs.a, "--json")
    (r,) = json.loads(out)
    rows = _rows(runs.a)
    assert (r["state"], r["steps"], r["total"], r["checkpoint"]) == ("finished", 6, 6, 6)
    assert r["loss"] == rows[-1]["loss"] and r["best"] is None and r["resume"] is None
    assert "mlm.acc" in r["metrics"] and "loss" in r["metrics"]
    # du's apparent size, less what it adds for the folders themselves
    du = int(subprocess.run(["du", "-sb", str(runs.a)], capture_output=True, text=True,
                            check=True).stdout.split()[0])
    folders = sum(4096 for p in runs.a.rglob("*") if p.is_dir() and not p.is_symlink())
    assert 0 <= du - r["size"] - folders - 4096 < 1000


def test_a_finetuning_run_shows_its_best_metric(runs: Runs, capsys: pytest.CaptureFixture[str],
                                               table_rows: Callable[[str], list[list[str]]]
                                               ) -> None:
    rc, out, _ = tp(capsys, "runs", runs.ft, "--json")
    (r,) = json.loads(out)
    evals = read_jsonl(runs.ft / "eval.jsonl")
    best = max(e["dev.accuracy"] for e in evals)
    first_best = next(e["step"] for e in evals if e["dev.accuracy"] == best)
    assert r["kind"] == "finetune" and r["recipe"] == "classification (finetune)"
    assert r["best"] == {"metric": "dev.accuracy", "value": best, "step": first_best}
    assert (runs.ft / "best").resolve().name == f"step-{first_best:08d}"  # tp's own choice
    assert r["state"] == "finished" and r["loss"] == _rows(runs.ft)[-1]["loss"]
    assert r["steps"] == r["total"] == max(e["step"] for e in evals)
    rc, out, _ = tp(capsys, "runs", runs.ft)
    assert table_rows(out)[0][4] == f"dev.accuracy {best:.4f}"


def test_a_diverged_run_is_failed_with_why(runs: Runs) -> None:
    r = read_run(runs.failed)
    assert r.state == "failed" and r.detail.startswith("failed: loss became nan at step 2")
    assert "lower pretrain.lr" in (r.hint or "")
    assert r.steps == 1 and r.total == 4 and r.checkpoint is None and r.resume is None


def test_a_run_stopped_by_ctrl_c_says_where_and_how_to_resume(runs: Runs) -> None:
    r = read_run(runs.ctrlc)
    assert r.state == "stopped" and r.steps == 5 and r.checkpoint == 4
    assert r.resume == f"tp pretrain --resume {runs.ctrlc}"
    assert r.detail == f"stopped at step 5 (Ctrl-C); resume from step 4: {r.resume}"


def test_a_killed_run_was_running_then_stopped_and_its_command_resumes_it(
        runs: Runs, tmp_path: Path) -> None:
    seen = runs.while_running
    assert seen.state == "running" and seen.pid == runs.killed_pid  # type: ignore[attr-defined]
    r = read_run(runs.killed)
    last = max(row["step"] for row in _rows(runs.killed))
    assert r.state == "stopped" and r.steps == last and r.total == 80 and r.checkpoint >= 10
    assert r.detail == (f"stopped at step {last} (killed); resume from step {r.checkpoint}: "
                        f"tp pretrain --resume {runs.killed}")
    # the command, run as shown (on a copy, so the other tests see the killed run)
    copy = tmp_path / "killed"
    shutil.copytree(runs.killed, copy, symlinks=True)
    command = shlex.split(read_run(copy).resume)
    assert command[:2] == ["tp", "pretrain"]
    done = subprocess.run([*TP, *command[1:], "--no-progress"], capture_output=True, text=True,
                          env=tp_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    after = read_run(copy)
    assert (after.state, after.steps, after.checkpoint) == ("finished", 80, 80)


@contextlib.contextmanager
def _file_limit(limit: int) -> Iterator[None]:
    """A real per-file size limit on this process (EFBIG; Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_failure_mid_run_is_recorded_and_a_successful_resume_clears_it(
        runs: Runs, tmp_path: Path) -> None:
    from tpcli.errors import TpError
    from tpcli.testing.runs import quiet_machine
    from tpcli.verbs import PretrainRequest, pretrain

    run = tmp_path / "full"
    shutil.copytree(runs.a, run, symlinks=True)  # finished at step 6, checkpoint 6
    with quiet_machine():
        with _file_limit(1_000_000), pytest.raises(TpError, match="could not write checkpoint"):
            pretrain(PretrainRequest(None, None, None, ["pretrain.steps=9"], resume=run,
                                     progress=False))
        r = read_run(run)
        assert r.state == "failed" and r.error.startswith("could not write checkpoint")
        assert r.steps == 9 and r.total == 9 and r.checkpoint == 6
        # the checkpoint's recipe says 6 steps: the command names the 9 the run was going to
        assert r.resume == f"tp pretrain --resume {run} pretrain.steps=9"
        pretrain(PretrainRequest(None, None, None, shlex.split(r.resume)[4:], resume=run,
                                 progress=False))
    r = read_run(run)
    assert (r.state, r.error, r.steps, r.checkpoint) == ("finished", None, 9, 9)


def test_compare_shows_exactly_the_keys_that_differ(runs: Runs,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = tp(capsys, "runs", "compare", runs.a, runs.b, "--json")
    got = json.loads(out)
    assert rc == 0 and got["runs"] == [str(runs.a), str(runs.b)]
    assert got["differ"] == {"model.encoder.layers": [1, 2], "pretrain.lr": [0.001, 0.002]}
    assert got["results"]["final loss"] == [_rows(runs.a)[-1]["loss"], _rows(runs.b)[-1]["loss"]]
    assert got["results"]["steps"] == [6, 6]
    rc, out, _ = tp(capsys, "runs", "compare", runs.a, runs.b)
    assert "pretrain.lr" in out and "pretrain.steps" not in out and "final loss" in out
    # with the fine-tuned run: its task and head differ, and its best metric shows
    rc, out, _ = tp(capsys, "runs", "compare", runs.a, runs.ft, "--json")
    got = json.loads(out)
    assert got["differ"]["finetune.task.name"] == [None, "classification"]
    assert "model.encoder.layers" not in got["differ"]
    assert got["results"]["best dev.accuracy"][0] is None
    assert got["results"]["best dev.accuracy"][1] == read_run(runs.ft).best["value"]


def test_bad_runs_are_clean_errors(runs: Runs, capsys: pytest.CaptureFixture[str],
                                   tmp_path: Path) -> None:
    rc, _, err = tp(capsys, "runs", "compare", runs.a, tmp_path)
    assert rc == 1 and "is not a tp run folder" in err and "Traceback" not in err
    rc, _, err = tp(capsys, "runs", "compare", runs.a)
    assert rc == 1 and "only one run" in err
    rc, _, err = tp(capsys, "runs", tmp_path / "nowhere")
    assert rc == 1 and "is not a folder" in err


def test_listing_imports_neither_torch_nor_matplotlib(runs: Runs) -> None:
    """`tp runs` reads files only: it answers in a fraction of a second."""
    code = ("import sys; from tpcli.cli.main import main; rc = main(['runs', sys.argv[1], "
            "'--json']); print(rc, 'torch' in sys.modules, 'matplotlib' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, str(runs.root)], capture_output=True,
                       text=True, env=tp_env(), timeout=60)
    assert r.stdout.splitlines()[-1] == "0 False False", r.stderr


def test_a_run_killed_before_its_first_last_link_resumes_from_its_newest_checkpoint(
        runs: Runs, tmp_path: Path) -> None:
    """Killed between the first checkpoint's rename and the `last` link: the newest complete
    checkpoint is the run's last, for `tp runs`, `--resume RUN` and a checkpoint reader alike;
    a damaged `last` is not second-guessed (the command names the intact checkpoint)."""
    from tpcli.train.checkpoint import find_checkpoint
    from tpcli.train.run_folder import checkpoints, resolve_resume

    copy = tmp_path / "killed"
    shutil.copytree(runs.killed, copy, symlinks=True)
    newest = checkpoints(copy)[-1]
    (copy / "last").unlink()
    r = read_run(copy)
    step = int(newest.name.split("-")[-1])
    assert r.checkpoint == step
    assert r.resume == f"tp pretrain --resume {copy}"  # its own recipe says 80 steps
    assert resolve_resume(copy) == (copy, newest) and find_checkpoint(copy) == newest
    (copy / "last").symlink_to("checkpoints/step-99999999")  # a link to nothing: damaged
    r = read_run(copy)
    assert r.resume == f"tp pretrain --resume {newest}"
    assert r.detail.endswith(f"resume from step {step}: {r.resume}")
