"""Where zoo files come from: a `Source` per URL scheme, registered by plugins through
`tp_register_zoo_sources` (`register(scheme, cls)`).

The core registers `hf` (`tpcli.zoo.hf.HfSource`: the Hugging Face Hub through `huggingface_hub`,
files kept in the Hugging Face cache) and `FsspecSource` below for `https`, `http`, `s3`, `gs` and
`file` (any filesystem fsspec knows; s3/gs need s3fs/gcsfs installed). A source only moves bytes;
`tpcli.zoo.pull` decides what to fetch and checks every file's hash through the `verify` callback
a source must call before a file becomes visible in its cache.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from tpcli.errors import TpError
from tpcli.zoo.card import Card

Advance = Callable[[int], None]  # progress: bytes received (negative when a retry starts over)
Verify = Callable[[Path, "str | None"], None]  # (file, its sha256 if already known): raises


@dataclass(frozen=True)
class Remote:
    """What the source says about one file: its size, and the hash the source vouches for (the
    Hub's LFS sha256, or its git blob id for a file not stored in LFS)."""

    size: int | None = None
    sha256: str | None = None
    blob_sha1: str | None = None


class Source(Protocol):
    """The contract of a zoo source (`cls(card)`)."""

    def resolve(self, revision: str) -> str:
        """The cache key of `revision`: a commit id where the source has commits."""

    def describe(self, key: str, paths: list[str]) -> dict[str, Remote]:
        """Size and hash of each file, as far as the source knows them."""

    def fetch(self, path: str, key: str, folder: Path, advance: Advance, verify: Verify) -> Path:
        """Download one file (resuming a partial one), call `verify` on it before it becomes
        visible, return where it lies. `folder` is tp's cache folder for this key."""

    def cached(self, path: str, key: str, folder: Path) -> Path | None:
        """Where the file lies in the cache, without the network (None when it is not there)."""

    def discard(self, local: Path) -> None:
        """Remove a file that failed verification, so nothing of it stays cached."""


RETRIES = 5
READ_CHUNK = 1 << 20
BLOCK = 8 * READ_CHUNK  # bytes per ranged read where a filesystem has no streaming body


class StartOver(Exception):
    """The server ignored the Range header (200, not 206): the part cannot be extended."""


def _status(e: BaseException | None) -> int | None:
    """The HTTP status carried by `e` or an exception it chains (aiohttp's `status`)."""
    seen = 0
    while e is not None and seen < 8:
        status = getattr(e, "status", None)
        if isinstance(status, int):
            return status
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def permanent(e: BaseException) -> bool:
    """True for failures a retry cannot cure (missing file, refused access, a range the remote
    file no longer has): they are reported at once instead of after `RETRIES` waits."""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return True
    status = _status(e)
    return status is not None and 400 <= status < 500 and status not in (408, 429)


class FsspecSource:
    """A folder at any fsspec URL (`https://host/models/bert/`, `s3://bucket/x/`, `file:///d/`).

    Files go to `<cache key folder>/files/<path>.part`, are hashed as they arrive, resumed from
    the part's size when the connection drops (up to `RETRIES` times, or by the next pull),
    verified, then renamed. HTTP bodies are streamed (a `Range: bytes=N-` request resumes them, so
    a dropped connection loses nothing that arrived); other filesystems are read in ranged blocks.
    There are no commits: the key is the card's revision string."""

    def __init__(self, card: Card) -> None:
        self.card = card
        self.base = card.source.rstrip("/")

    def _fs(self) -> tuple[Any, str]:
        import fsspec

        try:
            return fsspec.core.url_to_fs(self.base)
        except (ImportError, ValueError) as e:
            raise TpError(f"cannot open {self.base}: {e}",
                          hint="install the fsspec backend for this URL scheme (s3fs, gcsfs, "
                          "aiohttp for https)") from e

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"

    def resolve(self, revision: str) -> str:
        return revision

    def describe(self, key: str, paths: list[str]) -> dict[str, Remote]:
        fs, root = self._fs()
        out = {}
        for p in paths:
            try:
                size = fs.info(f"{root}/{p}").get("size")
            except FileNotFoundError as e:
                raise self._missing(p, e) from e
            except Exception as e:  # noqa: BLE001 - any transport failure is reported, not raised raw
                raise TpError(f"cannot reach {self.url(p)}: {type(e).__name__}: {e}",
                              hint="check the URL and the network") from e
            out[p] = Remote(size=int(size) if size is not None else None)
        return out

    def _dest(self, folder: Path, path: str) -> Path:
        """Where `path` lands; a path that would leave `folder/files` (a card built without
        validation) is refused rather than written."""
        files = (folder / "files").resolve()
        dest = (files / path).resolve()
        if not dest.is_relative_to(files) or dest == files:
            raise TpError(f"file path {path!r} of {self.card.name} leaves the model folder",
                          hint="fix the card: paths are relative, '/' separated, without '..'")
        return folder / "files" / path

    def fetch(self, path: str, key: str, folder: Path, advance: Advance, verify: Verify) -> Path:
        dest = self._dest(folder, path)
        part = dest.with_name(dest.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        size = self._size(path)
        if part.exists() and (size is None or part.stat().st_size > size):
            part.unlink()  # no size to resume against, or longer than the remote file
        state = download_part(part, size, lambda st: self._copy_from(path, part, size, st, advance),
                              advance, lambda e, tries: self._failed(path, e, tries))
        commit_part(part, dest, state, verify)
        return dest

    def _missing(self, path: str, e: FileNotFoundError) -> TpError:
        """fsspec's http `info` reports any failed request as FileNotFoundError; the status of
        the request it chains tells a missing file from a refused one."""
        status = _status(e)
        if status in (401, 403):
            return TpError(f"{self.url(path)} refused access ({status}) to the card of "
                           f"{self.card.name}", hint="the server wants credentials: give them "
                           "to fsspec (its configuration or environment for this protocol)")
        return TpError(f"{self.url(path)} does not exist (listed in the card of "
                       f"{self.card.name})", hint="fix the card's files or source")

    def _failed(self, path: str, e: Exception, tries: int) -> TpError:
        if permanent(e):
            return TpError(f"downloading {self.url(path)} failed: {type(e).__name__}: {e}",
                           hint="check the card's source and files, and your access to them")
        return TpError(f"downloading {self.url(path)} failed {tries} times: "
                       f"{type(e).__name__}: {e}",
                       hint="pull again: it resumes from the bytes received")

    def _copy_from(self, path: str, part: Path, size: int | None, state: Hashed,
                   advance: Advance) -> None:
        """Append the rest of the remote file to `part`, from its current size."""
        fs, root = self._fs()
        offset = state.done
        if {"http", "https"} & set(_protocols(fs)):
            # a streamed body, resumed by a Range header; size= spares fsspec a HEAD request
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            src = fs.open(f"{root}/{path}", "rb", block_size=0, size=size or None,
                          headers=headers)
            response = getattr(src, "r", None)
            if offset and response is not None and response.status != 206:
                src.close()
                raise StartOver()
        else:
            src = fs.open(f"{root}/{path}", "rb", block_size=BLOCK)
            src.seek(offset)
        with src, open(part, "ab") as out:
            while chunk := src.read(READ_CHUNK):
                out.write(chunk)
                state.add(chunk)
                advance(len(chunk))

    def _size(self, path: str) -> int | None:
        fs, root = self._fs()
        try:
            size = fs.info(f"{root}/{path}").get("size")
        except FileNotFoundError as e:  # gone since describe(): no retry brings it back
            raise self._missing(path, e) from e
        except Exception:  # noqa: BLE001 - unknown size: the download starts from 0
            return None
        return int(size) if size is not None else None

    def cached(self, path: str, key: str, folder: Path) -> Path | None:
        local = folder / "files" / path
        return local if local.is_file() else None

    def discard(self, local: Path) -> None:
        local.unlink(missing_ok=True)


def download_part(part: Path, size: int | None, copy_rest: Callable[[Hashed], None],
                  advance: Advance, failed: Callable[[Exception, int], TpError]) -> Hashed:
    """Bring `part` up to the whole file and return its hash state: the bytes already there (an
    interrupted pull, a dropped connection) are hashed, `copy_rest(state)` appends the rest.
    Transient errors are retried `RETRIES` times with back-off; a permanent one, or the last,
    becomes `failed(error, tries)`; a server that ignores ranges (`StartOver`) starts over."""
    state = Hashed()
    for attempt in range(RETRIES + 1):
        try:
            state.catch_up(part, advance)
            if size is None or state.done < size:
                copy_rest(state)
            return state
        except TpError:
            raise
        except StartOver:
            advance(-state.done)
            part.unlink(missing_ok=True)
            state = Hashed()
        except Exception as e:  # noqa: BLE001 - dropped connections come in many types
            if permanent(e) or attempt == RETRIES:
                raise failed(e, attempt + 1) from e
            time.sleep(min(0.2 * 2 ** attempt, 2.0))
    raise TpError(f"{part.name}: the download restarted from byte 0 {RETRIES + 1} times",
                  hint="the server ignores Range requests and drops connections")


def commit_part(part: Path, dest: Path, state: Hashed, verify: Verify) -> None:
    """Verify a complete part (its sha256 known from the download) and rename it into place;
    a part that fails is deleted."""
    try:
        verify(part, state.digest.hexdigest())
    except TpError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)


def _protocols(fs: Any) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


class Hashed:
    """The sha256 of a part's first `done` bytes, kept in step with the file: after a failed
    attempt the bytes on disk (not what the attempt believed it wrote) are what counts."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.done = 0

    def add(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.done += len(chunk)

    def catch_up(self, part: Path, advance: Advance) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have == self.done:
            return
        if have < self.done:  # the file lost bytes we hashed (should not happen): rehash it
            advance(-self.done)
            self.digest, self.done = hashlib.sha256(), 0
        with open(part, "rb") as f:
            f.seek(self.done)
            while chunk := f.read(READ_CHUNK * 4):
                self.add(chunk)
                advance(len(chunk))


def open_source(card: Card, plugins: Any) -> Source:
    """The registered source for the card's URL scheme."""
    scheme = card.scheme
    if not plugins.registry.has("zoo_source", scheme):
        known = ", ".join(f"{s}://" for s in plugins.registry.names("zoo_source"))
        raise TpError(f"no zoo source handles {scheme}:// (card {card.name})",
                      hint=f"sources installed: {known}; a plugin adds one through "
                      "tp_register_zoo_sources")
    return plugins.registry.get("zoo_source", scheme)(card)
