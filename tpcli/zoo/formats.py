"""A pulled weight in the format asked for: the source's files as they are, or converted.

`hf` cards become tp checkpoints through `tp convert --from hf` (`tpcli.convert.from_hf`), `tp`
cards become Hugging Face folders through `tpcli.convert.to_hf`. The converter reads a folder of
links to exactly the card's verified files (never other files that share the Hugging Face
snapshot), writes `<cache key>/<format>/` atomically, and the manifest records the sha256 of
what it wrote so `tp zoo verify` checks it too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from tpcli.errors import TpError
from tpcli.zoo import cache
from tpcli.zoo.card import Card

FORMATS = ("tp", "hf")


def convertible(card: Card, plugins: Any) -> str | None:
    """None when an installed converter reads the card's HF architecture, else why not."""
    if card.model_type is None:
        return f"the card of {card.name} names no model_type"
    if not plugins.registry.has("converter", card.model_type):
        return f"no installed plugin converts model_type {card.model_type!r}"
    conv = plugins.registry.get("converter", card.model_type)
    known = {conv.hf_architecture, conv.base_architecture, *conv.also_reads,
             *conv.full_architectures} - {None}
    if card.architecture is not None and card.architecture not in known:
        return (f"converter {conv.name!r} maps {' and '.join(sorted(known))}, not "
                f"{card.architecture}")
    return None


def choose_format(card: Card, fmt: str | None, plugins: Any) -> str:
    """The format a pull delivers: `fmt`, or tp when the card's weights convert, else the card's
    own format."""
    if fmt is not None and fmt not in FORMATS:
        raise TpError(f"unknown format {fmt!r}", hint="--format tp or --format hf")
    if card.format == "tp":
        return fmt or "tp"
    why = convertible(card, plugins)
    if fmt == "tp" and why is not None:
        raise TpError(f"cannot deliver {card.name} in tp format: {why}",
                      hint=f"pull it with --format hf (the files as published), or install the "
                      f"plugin that converts {card.model_type}")
    return fmt or ("tp" if why is None else "hf")


def source_folder(card: Card, manifest: dict[str, Any]) -> Path:
    """The folder in which the card's files lie together (the HF snapshot, or tp's files/)."""
    first = card.files[0]
    local = Path(manifest["files"][first.path]["path"])
    depth = len(PurePosixPath(first.path).parts)
    return local.parents[depth - 1]


def _linked(card: Card, manifest: dict[str, Any], tmp: Path) -> Path:
    """A folder of links to exactly the card's verified files."""
    for f in card.files:
        link = tmp / f.path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.realpath(manifest["files"][f.path]["path"]), link)
    return tmp


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): cache.sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def ensure_format(card: Card, folder: Path, manifest: dict[str, Any], fmt: str,
                  plugins: Any) -> Path:
    """The path of the weights in `fmt`, converting (once) when the card's format differs."""
    if fmt == card.format:
        return source_folder(card, manifest)
    formats = manifest.setdefault("formats", {})
    done = formats.get(fmt)
    out = folder / fmt
    if done and out.is_dir():
        return out
    shutil.rmtree(out, ignore_errors=True)  # a conversion that was not recorded: redo it
    with tempfile.TemporaryDirectory(prefix=f"tp-zoo-{card.name}-") as tmp:
        src = _linked(card, manifest, Path(tmp))
        if fmt == "tp":
            from tpcli.convert.hf import from_hf

            from_hf(str(src), out, plugins)
            _note_origin(out, card, manifest)
        else:
            from tpcli.convert.hf import to_hf

            to_hf(src, out, plugins)
    formats[fmt] = {"path": str(out), "files": _hashes(out)}
    cache.write_manifest(folder, manifest)
    return out


def _note_origin(out: Path, card: Card, manifest: dict[str, Any]) -> None:
    """checkpoint.json names the zoo card and commit, not the temporary folder read."""
    info_path = out / "checkpoint.json"
    info = json.loads(info_path.read_text())
    info.setdefault("converted_from", {})["source"] = (
        f"zoo:{card.name} ({card.source}@{manifest.get('key')})")
    cache.write_atomic(info_path, (json.dumps(info, indent=1) + "\n").encode())
