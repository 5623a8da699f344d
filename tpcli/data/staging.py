"""The temporary folder a dataset is written into before it is renamed into place.

A dataset `DIR/NAME` is built in the hidden sibling `DIR/.NAME.tmp-PID-XXXXXXXX` (PID: the
writing process) and renamed to `DIR/NAME` only when complete. Ctrl-C and SIGTERM delete the
folder on the way out (`Writer` removes it for any exception, KeyboardInterrupt included); a
`kill -9` or a power cut cannot, so every new preprocess into `DIR` first removes the temporary
folders whose writer is dead. The writer's host is recorded in the folder (`OWNER`): on a folder
shared between machines, a PID is only judged on the machine that wrote it.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

from tpcli.errors import DataError

log = logging.getLogger(__name__)

OWNER = ".tp-owner"  # "HOST PID": who writes this temporary folder
_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")
# what a writer puts in its folder: anything else means the folder is not ours to delete
_OURS = re.compile(r"^(shard-\d+\.(tokens\.bin|seqs\.idx|docs\.idx)|meta\.json|\.tp-owner)$")


def write_error(out: Path, e: OSError, doing: str) -> DataError:
    """A user-facing error for an OSError while writing dataset `out` (a read-only or full disk
    is the user's to fix, not a bug in tp)."""
    where = Path(out).parent
    reason = e.strerror or str(e)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = (f"{where} is not writable by you: pass an --out in a folder you can write, or "
                "change the folder's permissions")
    elif e.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = f"free space on the disk of {where} (or use --out on another disk), then re-run"
    else:
        hint = "check the --out folder and the disk, then re-run"
    return DataError(f"cannot write dataset {out}: {doing} in {where} failed: {reason}",
                     hint=hint)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale(folder: Path, pid: int) -> bool:
    """True when `folder`'s writer on this host is gone, and the folder holds only our files."""
    try:
        names = [p.name for p in folder.iterdir()]
        owner = (folder / OWNER).read_text(encoding="utf-8").split() if OWNER in names else []
    except OSError:
        return False  # not a folder, or not ours to read
    if len(owner) == 2 and owner[0] != socket.gethostname():
        return False  # another machine's writer: its PIDs mean nothing here
    return not _alive(pid) and all(_OURS.match(n) for n in names)


def remove_stale(parent: Path) -> list[Path]:
    """Delete the temporary dataset folders in `parent` whose writing process is dead (what a
    `kill -9` leaves); returns them."""
    removed: list[Path] = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed  # no such folder yet, or unreadable: nothing of ours to clean
    for path in entries:
        m = _TMP.match(path.name)
        if m and int(m["pid"]) != os.getpid() and _stale(path, int(m["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                log.warning("removed %s, left by an interrupted tp preprocess (pid %s)", path,
                            m["pid"])
                removed.append(path)
    return removed


def make_temp(out: Path) -> Path:
    """Create and return the temporary folder for dataset `out`, its owner recorded."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        (tmp / OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n", encoding="utf-8")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(out, e, "creating its folder") from None
    return tmp


def remove_own(out: Path) -> None:
    """Delete every temporary folder this process made for dataset `out`: the last line of
    defence when a signal lands between creating one and the `with` block that owns it."""
    for path in Path(out).parent.glob(f".{glob.escape(Path(out).name)}.tmp-{os.getpid()}-*"):
        shutil.rmtree(path, ignore_errors=True)


def complete(tmp: Path, out: Path, meta: dict[str, Any], name: str = "meta.json") -> None:
    """Finish dataset `out` written in `tmp`: its meta file, the owner mark dropped, then one
    rename into place (a reader sees the whole dataset or none). A full or read-only disk is a
    DataError naming the dataset; so is an `out` that appeared meanwhile."""
    import json

    try:
        (tmp / name).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (tmp / OWNER).unlink()
    except OSError as e:
        raise write_error(out, e, "completing it") from None
    if out.exists():
        raise DataError(f"output {out} appeared while writing",
                        hint="choose another --out or delete it")
    try:
        os.rename(tmp, out)
    except OSError as e:
        raise write_error(out, e, f"renaming {tmp.name} into place") from None
