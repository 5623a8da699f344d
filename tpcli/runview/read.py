"""Run folders as `tp runs` sees them: found under a folder, each read into a `Run`.

A pre-training run folder holds run.json; a fine-tuning one init.json (both beside recipe.yaml).
The state comes from RUN/status.json (`tpcli.train.run_folder.marked`): `running` whose process
is gone from this host was killed outright (SIGKILL, out of memory) and reads as stopped. Runs
written before status.json existed read as finished when their steps are done, else stopped.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tpcli.errors import TpError
from tpcli.train import run_folder as rf

FINETUNE_INFO = "init.json"
EVAL = "eval.jsonl"
RESULTS = "results.json"
SKIP = {rf.CHECKPOINTS, "predictions", "tokenizer"}  # a run's own folders hold no runs
NOT_A_RUN_HINT = ("pass the --out folder of a `tp pretrain` or `tp finetune` run (`tp runs "
                  "FOLDER` lists the runs under a folder)")


@dataclass
class Run:
    """One run folder, read: what `tp runs` prints (`--json` gives these fields)."""

    path: str
    kind: str  # "pretrain" | "finetune"
    recipe: str
    steps: int | None  # the last step done (logged or checkpointed)
    total: int | None  # the steps the run (its latest segment) trains to
    loss: float | None  # the last logged loss
    best: dict[str, Any] | None  # fine-tuning: {metric, value, step}
    state: str  # "finished" | "running" | "stopped" | "failed"
    detail: str  # the state in words: "stopped at step 47 (killed); resume from step 40"
    resume: str | None  # the command that continues (or restarts) the run
    error: str | None  # failed: the error's message
    hint: str | None  # failed: its hint
    checkpoint: int | None  # the step of RUN/last
    size: int  # bytes on disk (links not followed)
    pid: int | None = None
    host: str | None = None
    metrics: list[str] = field(default_factory=list)  # the names metrics.jsonl logs

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def is_run(folder: Path) -> bool:
    return (folder / rf.RECIPE).is_file() and (
        (folder / rf.RUN_INFO).is_file() or (folder / FINETUNE_INFO).is_file())


def find_runs(root: Path) -> list[Path]:
    """The run folders at or under `root`, sorted; a run's own folders (checkpoints/,
    predictions/) and hidden folders are not searched, nor links (`last`, `best`)."""
    root = Path(root)
    if not root.is_dir():
        raise TpError(f"{root} is not a folder", hint=NOT_A_RUN_HINT)
    if is_run(root):
        return [root]
    found: list[Path] = []
    for here, dirs, _ in os.walk(root):
        base = Path(here)
        keep = []
        for d in sorted(dirs):
            if d in SKIP or d.startswith("."):
                continue
            if is_run(base / d):
                found.append(base / d)
            else:
                keep.append(d)
        dirs[:] = keep
    return sorted(found)


def expand(refs: list[str]) -> list[Path]:
    """Run folders from command-line arguments: a run folder, or a folder of runs (each of
    them). Anything else is a TpError naming it."""
    if not refs:
        raise TpError("no run given", hint=NOT_A_RUN_HINT)
    out: list[Path] = []
    for ref in refs:
        path = Path(ref)
        if path.name in (rf.LAST, "best") and is_run(path.parent):
            path = path.parent
        if not path.exists():
            raise TpError(f"run folder {ref} does not exist", hint=NOT_A_RUN_HINT)
        found = find_runs(path)
        if not found:
            raise TpError(f"{ref} is not a tp run folder (no {rf.RECIPE} with {rf.RUN_INFO} or "
                          f"{FINETUNE_INFO}) and holds none", hint=NOT_A_RUN_HINT)
        out += [p for p in found if p not in out]
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file; a line cut by a kill mid-write is skipped."""
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(step, value)] from metrics.jsonl, by step; where a step was logged twice
    (a resume) the later row wins."""
    series: dict[str, dict[int, float]] = {}
    for row in read_jsonl(Path(run) / rf.METRICS):
        if "event" in row or not isinstance(row.get("step"), int):
            continue
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(key, {})[row["step"]] = float(value)
    return {k: sorted(v.items()) for k, v in series.items()}


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def recipe_of(run: Path) -> dict[str, Any]:
    """The recipe.yaml of a run or checkpoint folder as written ({} when unreadable)."""
    try:
        raw = yaml.safe_load((run / rf.RECIPE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def disk_size(folder: Path) -> int:
    """Bytes of the files under `folder`, links not followed (a `last` link counts nothing)."""
    total = 0
    for here, dirs, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(here, name))
            except OSError:
                continue
            total += st.st_size
    return total


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name)
    return value if isinstance(value, dict) else {}


def best_eval(run: Path, raw: dict[str, Any]) -> dict[str, Any] | None:
    """Fine-tuning's best evaluation: the metric the run chose its best checkpoint by (on its
    first dev set), its best value and step; eval.jsonl holds every evaluation."""
    rows = [r for r in read_jsonl(run / EVAL) if isinstance(r.get("step"), int)]
    if not rows:
        return None
    keys = [k for k in rows[0] if k != "step"]
    if not keys:
        return None
    dev = keys[0].rsplit(".", 1)[0]
    results = _json(run / RESULTS) or _json(run.parent / RESULTS)
    metric = (_section(raw, "finetune").get("metric") or results.get("metric")
              or keys[0].rsplit(".", 1)[-1])
    key = f"{dev}.{metric}"
    scored = [(r[key], r["step"]) for r in rows if isinstance(r.get(key), (int, float))]
    if not scored:
        return None
    value, step = max(scored, key=lambda vs: (vs[0], -vs[1]))  # the first of equals, as tp keeps
    return {"metric": key, "value": value, "step": step}


def _alive(status: dict[str, Any]) -> bool | None:
    """Whether the process that status.json names still runs: None where it ran on another
    host (tp cannot look there)."""
    if status.get("host") not in (None, socket.gethostname()):
        return None
    pid = status.get("pid")
    if not isinstance(pid, int):
        return False
    started = rf.process_start(pid)
    if started is None:
        try:
            os.kill(pid, 0)  # no /proc: ask the kernel whether the pid exists
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return status.get("process_start") is None
    return status.get("process_start") in (None, started)  # another start: the pid was reused


def _resume_command(run: Path, checkpoint: int | None, total: int | None,
                    info: dict[str, Any]) -> str:
    """The command that continues a pre-training run: --resume from its last checkpoint, or
    (none yet) the command that started it, which takes a folder without checkpoints over.
    A resume trains the checkpoint's recipe: a segment that was extending the run (`--resume
    RUN pretrain.steps=N`) and stopped before its first save needs its pretrain.steps again."""
    if checkpoint is not None:
        ckpt = rf.last_checkpoint(run)
        if ckpt is None:  # `last` damaged: the newest intact checkpoint, named
            ckpt = rf.checkpoints(run)[-1]
            words = ["tp", "pretrain", "--resume", str(ckpt)]
        else:
            words = ["tp", "pretrain", "--resume", str(run)]
        saved = _section(recipe_of(ckpt), "pretrain").get("steps")
        if total is not None and saved != total:
            words.append(f"pretrain.steps={total}")
        return " ".join(shlex.quote(w) for w in words)
    # no checkpoint yet: the same command again takes the folder over
    recipe = info.get("recipe_dir") or info.get("recipe") or "RECIPE"
    words = ["tp", "pretrain", str(recipe), "--data", str(info.get("data", "DATA")), "--out",
             str(run), *info.get("overrides", [])]
    return " ".join(shlex.quote(w) for w in words)


def _checkpoint_step(run: Path) -> int | None:
    last = run / rf.LAST
    if rf.is_checkpoint(last):
        step = _json(last / rf.INFO).get("step")
        if isinstance(step, int):
            return step
    found = rf.checkpoints(run)
    return int(found[-1].name.split("-")[-1]) if found else None


def read_run(run: Path) -> Run:
    """One run folder, read (a TpError when it is none)."""
    run = Path(run)
    if not is_run(run):
        raise TpError(f"{run} is not a tp run folder (no {rf.RECIPE} with {rf.RUN_INFO} or "
                      f"{FINETUNE_INFO})", hint=NOT_A_RUN_HINT)
    kind = "pretrain" if (run / rf.RUN_INFO).is_file() else "finetune"
    raw, info, status = recipe_of(run), _json(run / rf.RUN_INFO), _json(run / rf.STATUS)
    series = curves(run)
    losses = series.get("loss", [])
    checkpoint = _checkpoint_step(run)
    steps = max([s for s, _ in losses] + [checkpoint or 0]) or None
    section = _section(raw, kind)
    total = status.get("steps") or section.get("steps")
    if kind == "pretrain":
        name = str(info.get("recipe") or "?")
    else:
        task = _section(section, "task").get("name") or section.get("task") or "?"
        name = f"{task} (finetune)"
    best = best_eval(run, raw) if kind == "finetune" else None
    state, detail, error, hint, resume = _state(run, kind, status, steps, total, checkpoint, info)
    return Run(path=str(run), kind=kind, recipe=name, steps=steps, total=total,
               loss=losses[-1][1] if losses else None, best=best, state=state, detail=detail,
               resume=resume, error=error, hint=hint, checkpoint=checkpoint,
               size=disk_size(run), pid=status.get("pid"), host=status.get("host"),
               metrics=sorted(series))


def _state(run: Path, kind: str, status: dict[str, Any], steps: int | None, total: int | None,
           checkpoint: int | None, info: dict[str, Any]
           ) -> tuple[str, str, str | None, str | None, str | None]:
    """(state, in words, error, hint, resume command)."""
    said = status.get("state")
    if said == "running":
        alive = _alive(status)
        if alive is None:
            return "running", f"running on {status['host']} (pid {status.get('pid')})", \
                None, None, None
        if alive:
            return "running", f"running (pid {status.get('pid')})", None, None, None
        said, why = "stopped", "killed"  # SIGKILL, out of memory, a lost machine
    else:
        why = status.get("reason") or "stopped"
    if said == "failed":
        error, hint = status.get("error") or "?", status.get("hint")
        # after fixing the cause it continues from its last checkpoint (none: the hint says)
        resume = (_resume_command(run, checkpoint, total, info)
                  if kind == "pretrain" and checkpoint is not None else None)
        return "failed", f"failed: {error}", error, hint, resume
    done = steps or 0
    if said is None:  # a run from before status.json: its steps (or results) tell
        said = "finished" if ((total is not None and done >= total)
                              or (run / RESULTS).is_file()) else "stopped"
    if said == "finished":
        return "finished", "finished", None, None, None
    if kind == "finetune":
        return "stopped", (f"stopped at step {done} ({why}); fine-tuning does not resume: run "
                           "the same `tp finetune` again"), None, None, None
    resume = _resume_command(run, checkpoint, total, info)
    where = (f"resume from step {checkpoint}" if checkpoint is not None
             else "no checkpoint yet: start it again")
    return "stopped", f"stopped at step {done} ({why}); {where}: {resume}", None, None, resume


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def fmt_number(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-" if v is None else str(v)
    return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
