"""`pkg://MODULE/sub/folder`: a zoo source for weights shipped inside an installed Python package.

Some organisations publish weights as wheels (an internal index, an air-gapped mirror): `pip
install` is then the download, and the zoo only has to copy the files into tp's cache, check them
against the card and convert them. The cache key of a revision is the version of the distribution
that ships the module, so upgrading the package never mixes two versions' files.

A card's `revision` is that version (`0.1.0`), or `main` for whatever version is installed; a
card pinned to another version than the installed one is refused with the pip command that fixes
it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import os
import re
from pathlib import Path
from typing import Any

from tpcli.errors import TpError
from tpcli.zoo.card import Card, safe_relpath
from tpcli.zoo.sources import Advance, Remote, Verify

SCHEME = "pkg"
CHUNK = 4 << 20
MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class PackageSource:
    """Files under `importlib.resources.files(MODULE)/sub/folder` (see the module docstring)."""

    def __init__(self, card: Card) -> None:
        self.card = card
        rest = card.source[len(f"{SCHEME}://"):].strip("/")
        self.module, _, self.sub = rest.partition("/")
        if not MODULE.match(self.module):
            raise TpError(f"source {card.source!r} of {card.name} names no Python module",
                          hint="write pkg://MODULE/sub/folder, e.g. pkg://my_weights/model")
        if self.sub:
            try:
                safe_relpath(self.sub)
            except ValueError as e:
                raise TpError(f"source {card.source!r} of {card.name}: {e}") from None

    def _root(self) -> Any:
        """The package folder (a `Traversable`: a real folder, or a folder inside a zip)."""
        try:
            root = importlib.resources.files(self.module)
        except ModuleNotFoundError:
            raise TpError(f"{self.card.name} comes from the Python package {self.module}, "
                          "which is not installed",
                          hint=f"pip install the distribution that ships {self.module}") from None
        return root.joinpath(*self.sub.split("/")) if self.sub else root

    def _file(self, path: str) -> Any:
        entry = self._root().joinpath(*path.split("/"))
        if not entry.is_file():
            raise TpError(f"{self.card.source}/{path} does not exist (listed in the card of "
                          f"{self.card.name})", hint="fix the card's files, or reinstall the "
                          f"package {self.module}")
        return entry

    def installed_version(self) -> str:
        top = self.module.split(".")[0]
        dists = importlib.metadata.packages_distributions().get(top) or []
        if not dists:
            self._root()  # not importable: that error says what to install
            raise TpError(f"no installed distribution ships the module {top}",
                          hint="install it with pip (tp keys the cache by its version)")
        return importlib.metadata.version(dists[0])

    def resolve(self, revision: str) -> str:
        """The installed version; it must be the card's when the card names one."""
        version = self.installed_version()
        if revision not in ("main", version):
            raise TpError(f"{self.card.name} is pinned to version {revision} of the package "
                          f"that ships {self.module}, but {version} is installed",
                          hint=f"pip install the version {revision}, or pull another revision "
                          f"with --revision {version}")
        return version

    def describe(self, key: str, paths: list[str]) -> dict[str, Remote]:
        out = {}
        for path in paths:
            entry = self._file(path)
            size = os.stat(entry).st_size if isinstance(entry, os.PathLike) else None
            out[path] = Remote(size=size)  # no hash: the card's sha256 is the reference
        return out

    def fetch(self, path: str, key: str, folder: Path, advance: Advance, verify: Verify) -> Path:
        """Copy with hashing to `<file>.part`, verify, rename: a copy is never half-visible.
        A local copy is cheap, so a leftover part is overwritten rather than resumed."""
        try:
            safe_relpath(path)  # cards are validated; a hand-built one must not escape either
        except ValueError as e:
            raise TpError(f"{self.card.name}: {e}") from None
        dest = folder / "files" / path
        part = dest.with_name(dest.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with self._file(path).open("rb") as src, open(part, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                advance(len(chunk))
        try:
            verify(part, digest.hexdigest())
        except TpError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, dest)
        return dest

    def cached(self, path: str, key: str, folder: Path) -> Path | None:
        local = folder / "files" / path
        return local if local.is_file() else None

    def discard(self, local: Path) -> None:
        local.unlink(missing_ok=True)
