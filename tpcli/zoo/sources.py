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


class FsspecSource:
    """A folder at any fsspec URL (`https://host/models/bert/`, `s3://bucket/x/`, `file:///d/`).

    Files go to `<cache key folder>/files/<path>.part`, are hashed as they arrive, resumed from
    the part's size when the connection drops (up to `RETRIES` times), verified, then renamed.
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
                raise TpError(f"{self.url(p)} does not exist (listed in the card of "
                              f"{self.card.name})", hint="fix the card's files or source") from e
            except Exception as e:  # noqa: BLE001 - any transport failure is reported, not raised raw
                raise TpError(f"cannot reach {self.url(p)}: {type(e).__name__}: {e}",
                              hint="check the URL and the network") from e
            out[p] = Remote(size=int(size) if size is not None else None)
        return out

    def fetch(self, path: str, key: str, folder: Path, advance: Advance, verify: Verify) -> Path:
        dest = folder / "files" / path
        part = dest.with_name(dest.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = self._size(path) if part.exists() else None
        if size is not None and part.stat().st_size > size:
            part.unlink()  # longer than the remote file: not a prefix of it
        if part.exists():  # a partial download from an earlier, interrupted pull
            with open(part, "rb") as f:
                while chunk := f.read(READ_CHUNK * 4):
                    digest.update(chunk)
            advance(part.stat().st_size)
        for attempt in range(RETRIES + 1):
            try:
                self._copy_from(path, part, digest, advance)
                break
            except TpError:
                raise
            except Exception as e:  # noqa: BLE001 - dropped connections come in many types
                if attempt == RETRIES:
                    raise TpError(f"downloading {self.url(path)} failed {RETRIES + 1} times: "
                                  f"{type(e).__name__}: {e}",
                                  hint="pull again: it resumes from the bytes received") from e
                time.sleep(min(0.2 * 2 ** attempt, 2.0))
        try:
            verify(part, digest.hexdigest())
        except TpError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, dest)
        return dest

    def _copy_from(self, path: str, part: Path, digest: Any, advance: Advance) -> None:
        """Append the rest of the remote file to `part` (a ranged read from its current size)."""
        fs, root = self._fs()
        offset = part.stat().st_size if part.exists() else 0
        with fs.open(f"{root}/{path}", "rb", block_size=8 * READ_CHUNK) as src, \
                open(part, "ab") as out:
            src.seek(offset)
            while chunk := src.read(READ_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                advance(len(chunk))

    def _size(self, path: str) -> int | None:
        fs, root = self._fs()
        try:
            return fs.info(f"{root}/{path}").get("size")
        except Exception:  # noqa: BLE001 - unknown size: the caller keeps the part
            return None

    def cached(self, path: str, key: str, folder: Path) -> Path | None:
        local = folder / "files" / path
        return local if local.is_file() else None

    def discard(self, local: Path) -> None:
        local.unlink(missing_ok=True)


def open_source(card: Card, plugins: Any) -> Source:
    """The registered source for the card's URL scheme."""
    scheme = card.scheme
    if not plugins.registry.has("zoo_source", scheme):
        known = ", ".join(f"{s}://" for s in plugins.registry.names("zoo_source"))
        raise TpError(f"no zoo source handles {scheme}:// (card {card.name})",
                      hint=f"sources installed: {known}; a plugin adds one through "
                      "tp_register_zoo_sources")
    return plugins.registry.get("zoo_source", scheme)(card)
