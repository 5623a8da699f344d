"""`tp pretrain ... --nproc N`: run the same command under torchrun, one process per rank.

    python -m torch.distributed.run --standalone --nproc_per_node N -m tpcli.cli.main pretrain ...

Only rank 0's output reaches the console (torchrun's `--tee` with `--local-ranks-filter 0`);
every rank's stdout/stderr is also kept in a log folder for the launcher to read. torchrun's own
agent lines and its ChildFailedError traceback are filtered out, and when ranks fail the user sees
one error: which rank was killed and how, or the lowest rank's `error: ...` paragraph (a user
mistake is the same on every rank).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO

from tpcli.errors import Interrupted, Terminated, TpError
from tpcli.train import run_folder
from tpcli.plugins.requests import PretrainRequest

# torchrun's agent logs: glog-style "W1126 11:40:42.701000 11892 path:line] message"
_AGENT_LINE = re.compile(r"^[DIWEF]\d{4} \d\d:\d\d:\d\d")
_EXITCODE = re.compile(r"exitcode\s*:\s*(-?\d+)")
_TEE_PREFIX = re.compile(r"^\[default\d+\]:")  # torchrun --tee marks each line with its rank
_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")


def child_argv(request: PretrainRequest) -> list[str]:
    """The `tp pretrain` arguments that reproduce `request` (without --nproc)."""
    args = ["pretrain"]
    if request.recipe is not None:
        args.append(str(request.recipe))
    args += list(request.overrides)
    for flag, value in (("--data", request.data), ("--out", request.out),
                        ("--resume", request.resume)):
        if value is not None:
            args += [flag, str(value)]
    for name in request.loggers:
        args += ["--logger", name]
    if not request.progress:
        args.append("--no-progress")
    return args


def torchrun_command(request: PretrainRequest, log_dir: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(request.nproc), "--log-dir", str(log_dir), "--tee", "3",
            "--local-ranks-filter", "0", "-m", "tpcli.cli.main", *child_argv(request)]


def _errors(text: str) -> list[str]:
    """The `error: ...` paragraphs (with their indented lines) of one process's stderr."""
    found: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("error: "):
            found.append(line[len("error: "):])
            inside = True
        elif inside and line.startswith("  "):
            found[-1] += "\n" + line
        else:
            inside = False
    return found


def _rank_errors(log_dir: Path, nproc: int) -> list[str]:
    """Every rank's error paragraphs, lowest rank first, from torchrun's per-rank logs."""
    found: list[str] = []
    for rank in range(nproc):
        for log in sorted(log_dir.glob(f"*/attempt_*/{rank}/stderr.log")):
            found += _errors(log.read_text(errors="replace"))
    return found


def _forward(stream: IO[str], sink: IO[str]) -> None:
    for line in stream:
        sink.write(_TEE_PREFIX.sub("", line, count=1))
        sink.flush()


class _StderrFilter:
    """Forwards the children's stderr; keeps torchrun's noise and the ranks' errors back."""

    def __init__(self, sink: IO[str], debug: bool) -> None:
        self.sink, self.debug = sink, debug
        self.errors: list[str] = []  # each child's `error: ...` paragraph, first first
        self.exitcodes: list[tuple[int, int]] = []  # (rank, exit code) from torchrun's report
        self._in_error = False
        self._in_interrupted = False
        self._in_agent_report = False
        self._rank: int | None = None

    def feed(self, line: str) -> None:
        line = _TEE_PREFIX.sub("", line, count=1)
        text = line.rstrip("\n")
        if self._in_error and text.startswith("  "):
            self.errors[-1] += "\n" + text
            return
        if self._in_interrupted and text.startswith("  "):
            return
        self._in_error = self._in_interrupted = False
        if text.startswith("interrupted: "):  # a rank torchrun stopped: the launcher says so
            self._in_interrupted = True  # once, with the --nproc command (its hint dropped too)
            return
        if text.startswith("error: "):
            self.errors.append(text[len("error: "):])
            self._in_error = True
            return
        if text.startswith("Traceback (most recent call last):") and not self.debug:
            self._in_agent_report = True  # children print no traceback without --debug
        if _AGENT_LINE.match(text) or self._in_agent_report:
            self._note_exit(text)
            return
        self.sink.write(line)
        self.sink.flush()

    def _note_exit(self, text: str) -> None:
        """torchrun's report says, per failed rank, `rank : R (local_rank: ...)` then
        `exitcode : C`."""
        rank, code = _RANK.search(text), _EXITCODE.search(text)
        if rank and not code:
            self._rank = int(rank.group(1))
        elif code and self._rank is not None:
            self.exitcodes.append((self._rank, int(code.group(1))))
            self._rank = None


def launch(request: PretrainRequest) -> dict[str, object]:
    """Run `request` on `request.nproc` local processes; raise one TpError if any rank fails."""
    debug = os.environ.get("TP_DEBUG") == "1"
    env = {**os.environ, LAUNCHED: "1"}  # the ranks leave the summary to this process
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, said without its banner
    log_dir = Path(tempfile.mkdtemp(prefix="tp-torchrun-"))
    filt = _StderrFilter(sys.stderr, debug)
    try:
        proc = subprocess.Popen(torchrun_command(request, log_dir), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, bufsize=1)
        assert proc.stdout is not None and proc.stderr is not None
        out = threading.Thread(target=_forward, args=(proc.stdout, sys.stdout), daemon=True)
        out.start()
        try:
            for line in proc.stderr:
                filt.feed(line)
            code = proc.wait()
        except KeyboardInterrupt as e:
            proc.send_signal(signal.SIGINT)  # torchrun passes it on to every rank
            proc.wait()
            run = request.out or request.resume
            raise Interrupted(
                f"tp pretrain --nproc {request.nproc} stopped by "
                f"{'SIGTERM' if isinstance(e, Terminated) else 'Ctrl-C'}; the run folder keeps "
                "its last complete checkpoint",
                hint=f"continue with `tp pretrain --resume {run} --nproc {request.nproc}`; a "
                "folder with no checkpoint is taken over by the same command") from None
        out.join(timeout=5)
        errors = _rank_errors(log_dir, request.nproc) or filt.errors
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    if code == 0:
        done = run_folder.resolve_resume(Path(request.resume or request.out))[0]
        return {**_summary(done), "nproc": request.nproc}
    run = request.out or request.resume
    resume = f"tp pretrain --resume {run} --nproc {request.nproc}"
    # a rank killed by a signal (not torchrun's SIGTERM to the survivors) is the cause; the
    # others' errors (a collective whose peer vanished) are its consequences
    killed = [(r, c) for r, c in filt.exitcodes if c < 0 and c != -signal.SIGTERM]
    if killed:
        rank, c = killed[0]
        name = signal.Signals(-c).name if -c in signal.Signals._value2member_map_ else str(-c)
        raise TpError(f"training process rank {rank} was killed by {name}; the other ranks were "
                      "stopped and the run folder keeps its last complete checkpoint",
                      hint=f"continue with `{resume}`")
    if errors:  # a user mistake (the same on every rank) before an internal error
        errors = sorted(errors, key=lambda e: e.startswith("internal error"))
        message, _, hint = errors[0].partition("\n  hint: ")
        raise TpError(message, hint=hint or None)
    raise TpError(f"training under torchrun failed (exit code {code}); the run folder keeps its "
                  "last complete checkpoint",
                  hint=f"rerun with --debug for the children's tracebacks, or continue with "
                  f"`{resume}`")


def _summary(run: Path) -> dict[str, object]:
    """What `tp pretrain` reports, read back from the finished run folder: the step of `last`,
    the loss of the last logged step, the folder and its checkpoint."""
    from tpcli.train.checkpoint import read_info

    loss = float("nan")
    path = run / run_folder.METRICS
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            loss = float(json.loads(line).get("loss", loss))
        except ValueError:  # a line cut by a kill mid-write
            continue
    return {"steps": int(read_info(run / run_folder.LAST)["step"]), "loss": loss,
            "out": str(run), "checkpoint": str(run / run_folder.LAST)}


LAUNCHED = "TP_LAUNCHED"  # set for the ranks `tp pretrain --nproc` starts


def launched_rank() -> bool:
    """This process is a rank of `tp pretrain --nproc`: the launcher prints the summary."""
    return os.environ.get(LAUNCHED) == "1"


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ

