"""tp's zoo cache under `TP_HOME` (default `~/.cache/tp`): manifests, locks, hashing.

Layout, per card::

    TP_HOME/zoo/<name>/
      .lock                    one pull (or rm) of this model at a time, across processes;
                               removed with the folder when nothing else is left in it
      refs/<revision>          the commit a branch or tag resolved to (read when offline)
      <key>/manifest.json      what was pulled at commit <key>: every file, its size and sha256,
                               where it lies, and the converted formats
      <key>/files/...          files of fsspec sources (hf:// files stay in the Hugging Face cache)
      <key>/tp/, <key>/hf/     the weights converted on pull

Nothing is half-written: files are downloaded to `*.part`, verified, then renamed; manifests and
converted folders are written to a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tpcli.errors import TpError

HASH_CHUNK = 4 << 20  # bytes read per hash update: large enough that hashlib runs without the GIL
LOCK_TIMEOUT_S = 3600.0
MANIFEST = "manifest.json"
_TRUE = ("1", "true", "yes", "on")


def tp_home() -> Path:
    return Path(os.environ.get("TP_HOME") or "~/.cache/tp").expanduser()


def model_dir(name: str) -> Path:
    return tp_home() / "zoo" / name


def offline() -> str | None:
    """The variable that puts tp offline (`TP_OFFLINE` or `HF_HUB_OFFLINE`), or None."""
    for var in ("TP_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return None


def safe_key(revision: str) -> str:
    """A revision as a folder name (`refs/pr/1` -> `refs--pr--1`)."""
    key = revision.replace("/", "--")
    if not re.match(r"^[\w.+-]+$", key) or key in (".", ".."):
        raise TpError(f"bad revision {revision!r}", hint="give a commit, branch or tag name")
    return key


@contextmanager
def locked(name: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold this model's lock: a second `tp zoo pull` of the same model waits here, then finds
    the files the first one verified. On release, a model folder left with nothing in it (a
    pull that failed before any byte arrived, a `tp zoo rm`) is removed with its lock file, so
    a failed pull leaves nothing behind but a partial download it can resume."""
    folder = model_dir(name)
    try:
        release = _acquire(folder / ".lock", timeout)
    except TimeoutError as e:
        raise TpError(f"another process has held the lock on {name} for {timeout:.0f} s",
                      hint=f"wait for it to finish, or remove {folder / '.lock'} if none runs"
                      ) from e
    try:
        yield
    finally:
        release()


def _acquire(path: Path, timeout: float) -> Callable[[], None]:
    """Lock `path` (created if needed) and return the function that releases it."""
    try:
        import fcntl
    except ImportError:  # Windows: filelock, and the lock file stays (it cannot be pruned safely)
        from filelock import FileLock, Timeout

        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=timeout)
        except Timeout as e:
            raise TimeoutError(str(path)) from e
        return lock.release
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # another release pruned the folders meanwhile: again
            continue
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise TimeoutError(str(path)) from None
                time.sleep(0.05)
        if _is_current(fd, path):
            return lambda: _release(fd, path)
        # the holder before us pruned this lock file: a newer one is the lock now
        os.close(fd)


def _is_current(fd: int, path: Path) -> bool:
    try:
        now = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _release(fd: int, path: Path) -> None:
    """Prune the model folder while the lock is still held (a waiter that then gets the old,
    unlinked lock file sees it is stale and locks a new one), then unlock."""
    try:
        prune(path.parent, keep=path.name)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def prune(folder: Path, keep: str) -> None:
    """Remove the empty folders under `folder`; if nothing but the file `keep` is left, remove
    it and `folder` too (and the zoo folder above, when that is empty then)."""
    for root, dirs, _ in os.walk(folder, topdown=False):
        for d in dirs:
            try:
                (Path(root) / d).rmdir()
            except OSError:  # not empty: it holds something worth keeping
                pass
    try:
        if [p.name for p in folder.iterdir()] != [keep]:
            return
        (folder / keep).unlink()
        folder.rmdir()
        folder.parent.rmdir()  # TP_HOME/zoo, only if no other model is there
    except OSError:
        pass


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest in `folder` ({} when there is none; a corrupt one is treated as none, so the
    next pull re-verifies everything)."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    write_atomic(folder / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def read_ref(name: str, revision: str) -> str | None:
    try:
        return (model_dir(name) / "refs" / safe_key(revision)).read_text().strip() or None
    except OSError:
        return None


def write_ref(name: str, revision: str, key: str) -> None:
    if revision != key:
        write_atomic(model_dir(name) / "refs" / safe_key(revision), key.encode())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file: what the Hub's ETag is for a file not stored in LFS."""
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_size(path: Path) -> int:
    """Bytes under `path`, following symlinks to files (the HF cache links snapshots to blobs)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += (Path(root) / f).stat().st_size
            except OSError:
                pass
    return total


def human(n: int | None) -> str:
    if n is None:
        return "?"
    size, unit = float(n), "B"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            break
        size /= 1000
    return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
