"""The `tp zoo` actions besides pull: list, info, verify, rm, path (and the dispatch of all)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from tpcli.errors import TpError
from tpcli.zoo import ZooRequest, cache
from tpcli.zoo.card import Card, Catalog, load_catalog
from tpcli.zoo.pull import is_present


def catalog(plugins: Any) -> Catalog:
    """The registered card folders, then those in TP_ZOO_CARDS (os.pathsep-separated: an
    organisation's own cards without writing a plugin; read at each call). A folder that does
    not exist and every card that is skipped get a warning on stderr naming the file."""
    extra = [d for d in os.environ.get("TP_ZOO_CARDS", "").split(os.pathsep) if d]
    for folder in extra:
        if not Path(folder).exists():  # a typo would otherwise hide the cards without a word
            print(f"tp: warning: TP_ZOO_CARDS names {folder}, which does not exist; it was "
                  "ignored", file=sys.stderr)
    cat = load_catalog([*plugins.zoo_dirs, *extra])
    for why in cat.skipped.values():
        print(f"tp: warning: {why}; the card was skipped", file=sys.stderr)
    return cat


def run_zoo(request: ZooRequest) -> Any:
    plugins = request.plugins
    cat = catalog(plugins)
    if request.action == "list":
        return list_cards(cat, request.modality, request.task)
    if request.action == "verify" and request.name is None:
        return verify_all(cat, plugins)
    if request.name is None:
        raise TpError(f"tp zoo {request.action} needs a model name", hint="`tp zoo list`")
    card = cat.find(request.name)
    if request.action == "pull":
        from tpcli.zoo.pull import pull

        return pull(card, plugins, revision=request.revision, fmt=request.format,
                    show=request.progress, workers=request.workers)
    if request.action == "info":
        return info(card, cat)
    if request.action == "verify":
        return verify(card, plugins)
    if request.action == "rm":
        return remove(card, hf_cache=request.hf_cache)
    if request.action == "path":
        return {"name": card.name, "path": str(cached_path(card, request.format, plugins))}
    if request.action == "lock":
        from tpcli.zoo.lock import lock

        return lock(card, cat.paths[card.name], plugins)
    raise TpError(f"unknown zoo action {request.action!r}")


def list_cards(cat: Catalog, modality: str | None, task: str | None) -> list[dict[str, Any]]:
    from tpcli.zoo.card import MODALITIES

    if modality is not None and modality not in MODALITIES:
        raise TpError(f"unknown modality {modality!r}", hint=f"one of {', '.join(MODALITIES)}")
    rows = []
    for name in sorted(cat.cards):
        card = cat.cards[name]
        if modality and card.modality != modality or task and task not in card.tasks:
            continue
        keys = _keys(card)
        rows.append({"name": name, "modality": card.modality, "tasks": list(card.tasks),
                     "params": card.params, "size": _size(card, keys),
                     "license": card.license, "cached": bool(keys), "source": card.source})
    return rows


def _size(card: Card, keys: list[Path]) -> dict[str, Any] | None:
    """What is known of the download size: `{"bytes": N, "exact": True}` when the card sizes
    every file or a complete pull recorded them, `{"bytes": N, "exact": False}` (at least N)
    when it sizes some, None when it sizes none."""
    if card.known_size is not None:
        return {"bytes": card.known_size, "exact": True}
    for folder in keys:  # a complete pull of the card's own revision knows every size
        manifest = cache.read_manifest(folder)
        files = manifest.get("files", {})
        if manifest.get("revision") == card.revision \
                and all(is_present(files.get(f.path)) for f in card.files):
            return {"bytes": sum(int(files[f.path]["size"]) for f in card.files), "exact": True}
    known = [f.size for f in card.files if f.size is not None]
    return {"bytes": sum(known), "exact": False} if known else None


def _keys(card: Card) -> list[Path]:
    """The cache folders of this card that hold a manifest (one per pulled revision)."""
    root = cache.model_dir(card.name)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / cache.MANIFEST).is_file())


def info(card: Card, cat: Catalog) -> dict[str, Any]:
    """The card, and for each pulled revision: where it lies, how big, which files are there."""
    pulled = []
    for folder in _keys(card):
        manifest = cache.read_manifest(folder)
        files = manifest.get("files", {})
        present = [f.path for f in card.files if is_present(files.get(f.path))]
        size = sum(int(files[p]["size"]) for p in present)
        formats = {fmt: e["path"] for fmt, e in manifest.get("formats", {}).items()}
        size += sum(cache.tree_size(Path(p)) for p in formats.values() if Path(p).exists())
        pulled.append({"revision": manifest.get("revision"), "commit": folder.name,
                       "complete": len(present) == len(card.files), "bytes": size,
                       "files": {p: files[p]["path"] for p in present}, "formats": formats})
    return {"card": card.model_dump(exclude_none=True), "file": str(cat.paths[card.name]),
            "pinned": card.pinned, "cached": bool(pulled), "cache": pulled}


def verify(card: Card, plugins: Any) -> dict[str, Any]:
    """Re-hash every cached file of the card (and its converted formats) against the manifest
    and, for the card's own revision, the card. A file that fails is deleted and dropped from
    the manifest, so the next pull fetches it again."""
    from tpcli.zoo.sources import open_source

    if not _keys(card):
        raise TpError(f"{card.name} is not in the cache", hint=f"tp zoo pull {card.name}")
    source = open_source(card, plugins)
    checked, bad = 0, []
    with cache.locked(card.name):
        for folder in _keys(card):
            manifest = cache.read_manifest(folder)
            pinned = {f.path: f.sha256 for f in card.files
                      if manifest.get("revision") == card.revision and f.sha256}
            for path, entry in list(manifest.get("files", {}).items()):
                problem = _check(Path(entry["path"]), pinned.get(path) or entry.get("sha256"))
                checked += 1
                if problem:
                    bad.append(f"{card.name}@{folder.name[:12]} {path}: {problem}")
                    source.discard(Path(entry["path"]))
                    del manifest["files"][path]
            for fmt, conv in list(manifest.get("formats", {}).items()):
                for rel, digest in conv.get("files", {}).items():
                    problem = _check(Path(conv["path"]) / rel, digest)
                    checked += 1
                    if problem:
                        bad.append(f"{card.name}@{folder.name[:12]} {fmt}/{rel}: {problem}")
                        shutil.rmtree(conv["path"], ignore_errors=True)
                        del manifest["formats"][fmt]
                        break
            cache.write_manifest(folder, manifest)
    return {"name": card.name, "checked": checked, "failed": bad}


def _check(path: Path, sha256: str | None) -> str | None:
    if not path.is_file():
        return "missing"
    if sha256 is None:
        return None
    got = cache.sha256_file(path)
    return None if got == sha256 else f"sha256 {got}, expected {sha256}"


def verify_all(cat: Catalog, plugins: Any) -> dict[str, Any]:
    results = [verify(card, plugins) for card in cat.cards.values() if _keys(card)]
    return {"name": "all", "models": len(results), "checked": sum(r["checked"] for r in results),
            "failed": [b for r in results for b in r["failed"]]}


def remove(card: Card, hf_cache: bool = False) -> dict[str, Any]:
    """Delete tp's cache of the card (and, with `hf_cache`, its revisions in the Hugging Face
    cache, which `transformers` shares)."""
    root = cache.model_dir(card.name)
    if not root.is_dir():
        raise TpError(f"{card.name} is not in the cache", hint="`tp zoo list` marks cached models")
    commits = [f.name for f in _keys(card)]
    freed = 0
    with cache.locked(card.name):
        for folder in _keys(card):
            freed += cache.tree_size(folder)
        for child in root.iterdir():
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    if hf_cache and card.scheme == "hf":
        from huggingface_hub import scan_cache_dir

        repo = card.source[len("hf://"):]
        info = scan_cache_dir()
        found = [r.commit_hash for c in info.repos if c.repo_id == repo for r in c.revisions
                 if r.commit_hash in commits]
        if found:
            strategy = info.delete_revisions(*found)
            freed += strategy.expected_freed_size
            strategy.execute()
    return {"name": card.name, "removed": str(root), "freed": cache.human(freed)}


def cached_path(card: Card, fmt: str | None, plugins: Any) -> Path:
    """Where the pulled weights lie in format `fmt`, without the network (an error says how to
    pull them when they are not there)."""
    from tpcli.zoo.formats import choose_format, source_folder

    target = choose_format(card, fmt, plugins)
    rev_key = cache.read_ref(card.name, card.revision) or card.revision
    folder = cache.model_dir(card.name) / cache.safe_key(rev_key)
    manifest = cache.read_manifest(folder)
    files = manifest.get("files", {})
    if not manifest or any(not is_present(files.get(f.path)) for f in card.files):
        raise TpError(f"{card.name} is not pulled", hint=f"tp zoo pull {card.name}")
    if target == card.format:
        return source_folder(card, manifest)
    conv = manifest.get("formats", {}).get(target)
    if not conv or not Path(conv["path"]).is_dir():
        raise TpError(f"{card.name} is pulled but not converted to {target}",
                      hint=f"tp zoo pull {card.name} --format {target}")
    return Path(conv["path"])
