"""The run folder: the one owner of its layout, who may start a run in it, and how it resumes.

    RUN/recipe.yaml            the recipe of the latest segment (overrides applied)
    RUN/run.json               recipe name and folder, dataset, overrides, and one entry per
                               segment (the first start and every resume)
    RUN/metrics.jsonl          one JSON line per log step; a resume drops the rows after the
                               checkpoint it resumes from and writes a {"event": "resume"} row
    RUN/checkpoints/step-N/    see tpcli.train.checkpoint
    RUN/last, RUN/best         links to checkpoints
    RUN/status.json            while training: `running` with the pid and host; at the end
                               `finished`, `stopped` (Ctrl-C, SIGTERM) or `failed` with the error

A folder that holds no checkpoint (a run that failed or was interrupted before its first save) is
no run to resume: a new run may take it over. Anything else that exists is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tpcli.errors import CheckpointError, Terminated, TpError
from tpcli.files import write_text

RECIPE = "recipe.yaml"
RUN_INFO = "run.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LAST = "last"
WEIGHTS = "model.safetensors"
INFO = "checkpoint.json"
STATUS = "status.json"


def is_checkpoint(path: Path) -> bool:
    return (path / WEIGHTS).is_file() and (path / INFO).is_file()


def checkpoints(run: Path) -> list[Path]:
    """The run's complete checkpoint folders, oldest first."""
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and is_checkpoint(p))


def last_checkpoint(run: Path) -> Path | None:
    """The checkpoint a run continues from: the one `last` points at; where `last` was never
    made (a run killed between its first checkpoint's rename and the link), the newest complete
    one. None when there is none, or when `last` exists but is damaged (the caller names the
    earlier checkpoints rather than choose one)."""
    link = Path(run) / LAST
    if is_checkpoint(link):
        return link.resolve()
    if link.is_symlink() or link.exists():
        return None
    found = checkpoints(run)
    return found[-1] if found else None


def _listing(found: list[Path]) -> str:
    names = [p.name for p in found]
    return ", ".join(names[-5:]) + (f" (+{len(names) - 5} older)" if len(names) > 5 else "")


def claim(out: Path, resume: str | None = "tp pretrain --resume {out}") -> None:
    """Refuse `out` for a new run unless it is absent, empty, or a run folder (pre-training's or
    fine-tuning's) that holds no checkpoint. `resume`: the command that continues a run there,
    for the refusal's hint. Writes nothing."""
    out = Path(out)
    if not out.exists():
        if out.is_symlink():
            raise TpError(f"--out {out} is a broken link", hint="remove it or choose another --out")
        return
    if not out.is_dir():
        raise TpError(f"--out {out} exists and is not a folder", hint="choose another --out")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not ((out / RUN_INFO).is_file() or (out / RECIPE).is_file()):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise TpError(f"--out {out} exists and is not a tp run folder (it holds {shown})",
                      hint="choose another --out, or empty that folder")
    found = sorted(p.parent for p in out.rglob(WEIGHTS))
    if found or (out / LAST).exists():
        cont = f"continue it with `{resume.format(out=out)}`, or " if resume else ""
        raise TpError(f"run folder {out} already exists and holds checkpoints "
                      f"({_listing(found)})", hint=f"{cont}choose another --out")


def prepare(out: Path) -> None:
    """Make the run folder, or empty one that `claim` allowed (a run with no checkpoint)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for old in out.iterdir():
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
    except OSError as e:
        raise unwritable(out, e) from e


def write_recipe(folder: Path, raw: dict[str, Any]) -> None:
    """The validated recipe beside a run or checkpoint, atomically."""
    write_text(Path(folder) / RECIPE, yaml.safe_dump(raw, sort_keys=False))


def read_recipe(folder: Path) -> dict[str, Any]:
    """The recipe saved in a run or checkpoint folder, or a CheckpointError saying what is wrong."""
    path = Path(folder) / RECIPE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}",
                              hint=earlier_hint(Path(folder))) from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds no recipe", hint=earlier_hint(Path(folder)))
    return raw


def create(out: Path, recipe: Any, data: Path, overrides: list[str], steps: int) -> None:
    """Make (or take over) the run folder and write its recipe and run.json atomically."""
    out = Path(out)
    prepare(out)
    try:
        write_recipe(out, recipe.raw)
        write_text(out / RUN_INFO, json.dumps({
            "recipe": recipe.name, "recipe_dir": str(recipe.base_dir),
            "data": str(Path(data).resolve()), "overrides": list(overrides),
            "segments": [_segment(0, steps, overrides)]}, indent=1))
    except OSError as e:
        raise unwritable(out, e) from e


def unwritable(path: Path, e: OSError) -> TpError:
    """A folder tp cannot write into (read-only, not ours, a full disk) is the user's to fix."""
    reason = e.strerror or str(e)
    return TpError(f"cannot write into {path}: {reason}",
                   hint="choose an --out in a folder you can write to (check its permissions "
                   "and free space)")


def _segment(start: int, steps: int, overrides: list[str]) -> dict[str, Any]:
    return {"start_step": start, "steps": steps, "overrides": list(overrides),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def read_info(run: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run) / RUN_INFO).read_text())
    except (OSError, ValueError) as e:
        raise TpError(f"{Path(run) / RUN_INFO} is missing or corrupt: {e}",
                      hint="pass the --out folder of an earlier `tp pretrain`") from e


def point(run: Path, target: Path, name: str = LAST) -> None:
    """Point the link `run/name` at checkpoint `target`, atomically (a new link renamed over)."""
    link = Path(run) / name
    tmp = Path(run) / f".{name}-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(target, run), tmp)
    os.replace(tmp, link)


def record_resume(run: Path, recipe: Any, ckpt: Path, start: int, steps: int,
                  overrides: list[str]) -> None:
    """A resumed segment: `last` points at the checkpoint it resumes from (an earlier one than
    `last` abandons the later ones, which the run overwrites as it reaches their steps), the
    top-level recipe.yaml becomes this segment's (a run extended with pretrain.steps=N says N)
    and run.json gains the segment and its overrides."""
    run = Path(run)
    if (run / LAST).resolve() != Path(ckpt).resolve():
        point(run, Path(ckpt))
    info = read_info(run)
    info.setdefault("segments", [])
    info["segments"].append(_segment(start, steps, overrides))
    info["overrides"] = list(info.get("overrides", [])) + list(overrides)
    try:
        write_recipe(run, recipe.raw)
        write_text(run / RUN_INFO, json.dumps(info, indent=1))
    except OSError as e:
        raise unwritable(run, e) from e


def mark_resume(run: Path, step: int) -> None:
    """metrics.jsonl after a resume from `step`: the killed segment's rows after `step` (which the
    resumed run writes again) are dropped, and a resume row marks the seam."""
    path = Path(run) / METRICS
    kept: list[str] = []
    dropped = 0
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by a kill mid-write
                dropped += 1
                continue
            if int(row.get("step", 0)) <= step:
                kept.append(line)
            else:
                dropped += 1
    kept.append(json.dumps({"step": step, "event": "resume", "dropped_rows": dropped,
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    write_text(path, "\n".join(kept) + "\n")


def resolve_resume(path: Path) -> tuple[Path, Path]:
    """(run folder, checkpoint) for `--resume RUN`, `RUN/last` or `RUN/checkpoints/step-N`."""
    path = Path(path)
    if is_checkpoint(path) and path.resolve().parent.name == CHECKPOINTS:
        run = path.resolve().parent.parent
        if (run / RUN_INFO).is_file():
            return run, path.resolve()
    if path.name == LAST and (path.parent / RUN_INFO).is_file():
        path = path.parent
    if not path.is_dir():
        raise TpError(f"run folder {path} does not exist",
                      hint="pass the --out folder of an earlier `tp pretrain`")
    if not (path / RUN_INFO).is_file() or not (path / RECIPE).is_file():
        raise TpError(f"{path} is not a tp run folder (no {RECIPE}/{RUN_INFO})",
                      hint="pass the --out folder of an earlier `tp pretrain`")
    ckpt = last_checkpoint(path)
    if ckpt is not None:
        return path, ckpt
    found = checkpoints(path)
    if found:
        raise CheckpointError(
            f"run {path}: its `{LAST}` checkpoint is missing or damaged; earlier checkpoints: "
            f"{_listing(found)}",
            hint=f"resume from the newest intact one: `tp pretrain --resume {found[-1]}`")
    raise CheckpointError(
        f"run {path} holds no checkpoint: it stopped before its first save",
        hint="start it again with the same `tp pretrain RECIPE --data ... --out "
        f"{path}` command: a run folder without a checkpoint is taken over")


def earlier_hint(ckpt: Path) -> str:
    """The hint for a damaged checkpoint: the exact command that resumes from the one before."""
    ckpt = Path(ckpt).resolve()
    if ckpt.parent.name == CHECKPOINTS:
        older = [p for p in checkpoints(ckpt.parent.parent) if p.name < ckpt.name]
        if older:
            return f"use an earlier checkpoint of the run: `--resume {older[-1]}`"
    return "use an earlier checkpoint of the run (RUN/checkpoints/step-N)"


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None where it is gone
    (or a zombie: ended, not yet reaped) or there is no /proc: a pid reused by another process
    has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # from field 3 on: the name may hold spaces
    return None if fields[0] in ("Z", "X") else fields[19]  # state, start time (field 22)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _write_status(run: Path, status: dict[str, Any]) -> None:
    try:
        write_text(Path(run) / STATUS, json.dumps(status, indent=1))
    except OSError:  # the status is for `tp runs`; the checkpoint writes report a bad disk
        pass


@contextlib.contextmanager
def marked(run: Path, start: int, steps: int, active: bool = True) -> Iterator[None]:
    """RUN/status.json around a training segment, so `tp runs` tells the states apart:
    `running` with this process's pid, start time and host; then `finished`, `stopped` (Ctrl-C,
    SIGTERM) or `failed` with the error's message and hint. A run killed outright (SIGKILL, a
    lost machine) leaves `running` with a process that is gone. Each segment (a resume) writes
    it anew, so a successful resume clears an earlier failure. `active`: only rank 0 writes."""
    if not active:
        yield
        return
    base = {"pid": os.getpid(), "host": socket.gethostname(),
            "process_start": process_start(os.getpid()), "start_step": start, "steps": steps,
            "started": _now()}
    _write_status(run, {"state": "running", **base})
    try:
        yield
    except KeyboardInterrupt as e:
        why = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
        _write_status(run, {"state": "stopped", "reason": why, **base, "ended": _now()})
        raise
    except Exception as e:
        error = e.message if isinstance(e, TpError) else f"{type(e).__name__}: {e}"
        _write_status(run, {"state": "failed", "error": error,
                            "hint": getattr(e, "hint", None), **base, "ended": _now()})
        raise
    _write_status(run, {"state": "finished", **base, "ended": _now()})
