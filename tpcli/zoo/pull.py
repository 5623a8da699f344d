"""`tp zoo pull`: download a card's files in parallel, verify each, cache, convert.

Every file is checked before it becomes visible in a cache: against the card's sha256 (and size)
when the card pins this revision, else against the hash the source vouches for (the Hub's LFS
sha256, or the git blob id of a small file). A file that fails is deleted and the pull stops with
an error naming it. A second pull of the same model waits on the model's lock and then finds
everything verified in the manifest: nothing is downloaded twice. Offline (`TP_OFFLINE=1` or
`HF_HUB_OFFLINE=1`) the manifest and the cache answer alone, or the error lists what is missing.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from tpcli.errors import TpError
from tpcli.zoo import cache
from tpcli.zoo.card import COMMIT, Card
from tpcli.zoo.sources import Remote, Source, open_source

WORKERS = 8


def verifier(card: Card, path: str, size: int | None, sha256: str | None,
              remote: Remote) -> Callable[[Path, str | None], str]:
    """The check of one file: size, then the card's sha256, the source's sha256 or git blob id.
    Returns the file's sha256 (recorded in the manifest for `tp zoo verify`)."""

    def verify(local: Path, known: str | None) -> str:
        got_size = local.stat().st_size
        want_size = size if size is not None else remote.size
        if want_size is not None and got_size != want_size:
            raise TpError(f"{path} of {card.name} has {got_size} bytes, not {want_size}: the "
                          "download is damaged; it was deleted", hint="pull again")
        digest = known or cache.sha256_file(local)
        want = sha256 or remote.sha256
        if want is not None and digest != want:
            raise TpError(f"sha256 mismatch for {path} of {card.name}: expected {want}, got "
                          f"{digest}; the file was deleted and nothing of it is cached",
                          hint="pull again; if it fails again the source no longer serves the "
                          "bytes the card was locked to (maintainers: `tp zoo lock`)")
        if want is None and remote.blob_sha1 is not None:
            blob = cache.git_blob_sha1(local)
            if blob != remote.blob_sha1:
                raise TpError(f"{path} of {card.name} does not match the Hub's git blob id "
                              f"({remote.blob_sha1}, got {blob}); it was deleted",
                              hint="pull again")
        return digest

    return verify


class _Progress:
    """One bar for all files of a pull (rich), fed from the download threads."""

    def __init__(self, name: str, total: int | None, show: bool) -> None:
        self.lock = threading.Lock()
        self.done = 0
        self.bar: Any = None
        if show:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TimeRemainingColumn,
                                       TransferSpeedColumn)

            from rich.console import Console

            # on stderr: stdout carries the result (`tp zoo pull ... | tail -1` is the path)
            self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                                DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=False)
            self.task = self.bar.add_task(f"pull {name}", total=total)

    def advance(self, n: int) -> None:
        with self.lock:
            self.done += n
            if self.bar is not None:
                self.bar.update(self.task, completed=max(self.done, 0))

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _download(card: Card, source: Source, key: str, folder: Path, todo: list[str],
              remote: dict[str, Remote], use_card: bool, manifest: dict[str, Any],
              show: bool, workers: int) -> int:
    """Fetch and verify `todo` in parallel; each verified file is recorded in the manifest at
    once (an interrupted pull keeps them). Returns the bytes received."""
    by_path = {f.path: f for f in card.files}
    total = sum(remote[p].size or by_path[p].size or 0 for p in todo) or None
    guard = threading.Lock()

    def one(path: str, progress: _Progress) -> None:
        f = by_path[path]
        verify = verifier(card, path, f.size if use_card else None,
                           f.sha256 if use_card else None, remote[path])
        digests: list[str] = []
        local = source.fetch(path, key, folder, progress.advance,
                             lambda p, known: digests.append(verify(p, known)))
        with guard:
            manifest["files"][path] = {"path": str(local), "size": local.stat().st_size,
                                       "sha256": digests[0]}
            cache.write_manifest(folder, manifest)

    with _Progress(card.name, total, show) as progress, \
            ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
        futures = [pool.submit(one, p, progress) for p in todo]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in pending:  # those not started yet; running ones finish their file
            fut.cancel()
        failed = [e for e in (fut.exception() for fut in done) if e is not None]
        if failed:
            raise failed[0]
        return max(progress.done, 0)


def is_present(entry: dict[str, Any] | None) -> bool:
    if not entry:
        return False
    try:
        return Path(entry["path"]).stat().st_size == entry["size"]
    except (OSError, KeyError, TypeError):
        return False


def fetch_files(card: Card, plugins: Any, *, revision: str | None = None, show: bool = True,
                workers: int = WORKERS) -> tuple[Path, dict[str, Any], int]:
    """Make every file of the card present and verified in the cache (under the model's lock,
    held by the caller). Returns (cache folder, manifest, bytes downloaded)."""
    rev = revision or card.revision
    source = open_source(card, plugins)
    why_offline = cache.offline()
    if why_offline:
        return _offline(card, rev, why_offline) + (0,)
    # a commit needs no request while everything is cached; a branch is resolved each time
    resolved = not COMMIT.match(rev)
    key = cache.safe_key(source.resolve(rev) if resolved else rev)
    folder = cache.model_dir(card.name) / key
    manifest = cache.read_manifest(folder)
    manifest.setdefault("files", {})
    manifest.update({"card": card.name, "source": card.source, "revision": rev, "key": key})
    todo = [f.path for f in card.files if not is_present(manifest["files"].get(f.path))]
    received = 0
    if todo:
        if not resolved:
            source.resolve(key)  # the source's sizes and hashes of this commit
        remote = source.describe(key, todo)
        # the card's hashes describe the card's revision; another revision is checked against
        # what the source says of it
        use_card = rev == card.revision
        received = _download(card, source, key, folder, todo, remote, use_card, manifest, show,
                             workers)
        manifest["pulled"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        cache.write_manifest(folder, manifest)
    cache.write_ref(card.name, rev, key)
    return folder, manifest, received


def _offline(card: Card, rev: str, var: str) -> tuple[Path, dict[str, Any]]:
    key = cache.read_ref(card.name, rev) or rev
    folder = cache.model_dir(card.name) / cache.safe_key(key)
    manifest = cache.read_manifest(folder)
    files = manifest.get("files", {})
    missing = [f for f in card.files if not is_present(files.get(f.path))]
    if missing:
        listed = ", ".join(f"{f.path} ({cache.human(f.size)})" for f in missing)
        raise TpError(f"offline ({var} is set) and {card.name}@{rev} is not fully cached: "
                      f"missing {listed}",
                      hint=f"go online and run `tp zoo pull {card.name}`, or unset {var}")
    return folder, manifest


def pull(card: Card, plugins: Any, *, revision: str | None = None, fmt: str | None = None,
         show: bool = True, workers: int = WORKERS) -> dict[str, Any]:
    """`tp zoo pull`: files present and verified, then the weights in format `fmt` (default: tp
    where an installed converter reads the card's architecture, else the source's format)."""
    from tpcli.zoo.formats import choose_format, ensure_format

    start = time.perf_counter()
    target = choose_format(card, fmt, plugins)
    with cache.locked(card.name):
        folder, manifest, received = fetch_files(card, plugins, revision=revision, show=show,
                                                 workers=workers)
        path = ensure_format(card, folder, manifest, target, plugins)
    sizes = sum(int(e["size"]) for e in manifest["files"].values())
    return {"name": card.name, "revision": manifest.get("revision"), "commit": manifest.get("key"),
            "format": target, "path": str(path), "files": len(card.files), "bytes": sizes,
            "downloaded": received, "seconds": round(time.perf_counter() - start, 3)}
