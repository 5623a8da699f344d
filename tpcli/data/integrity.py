"""Is a dataset folder what `tp preprocess` wrote? Cheap checks, made when a dataset is opened.

Datasets can be far larger than memory, so what is checked is chosen by cost:

- every file's size against `meta.json` (a truncated or extended file);
- the index files (`.seqs.idx`, `.docs.idx`: 8 bytes per sequence / document, small) in full:
  their sha256 against the one `meta.json` records (datasets written before digests were
  recorded skip this), and their offsets: starting at 0, never decreasing, ending at the count
  `meta.json` gives. Random bytes in an index fail this;
- token ids as they are read: an id outside the vocabulary means the shard was overwritten
  (random bytes of uint16 fall outside a 30k vocabulary half the time, of uint32 nearly always).

A failed check is a DataError naming the file and saying to re-run `tp preprocess`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from tpcli.errors import DataError

INDEXES = ("seqs.idx", "docs.idx")


def digest(data: bytes | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    """The sha256 of a (small) file, as recorded in meta.json."""
    return digest(Path(path).read_bytes())


def rebuild_hint(folder: Path) -> str:
    return (f"the dataset was damaged after `tp preprocess` wrote it: delete {folder} and re-run "
            "`tp preprocess` to rebuild it")


def corrupt(folder: Path, file: str, what: str) -> DataError:
    return DataError(f"dataset {folder} is corrupt: {file} {what}", hint=rebuild_hint(folder))


def check_shard_info(folder: Path, k: int, info: Any, name: str) -> None:
    """Shard `k`'s entry in meta.json names it `name` (shard-k) and gives counts that are
    integers >= 0."""
    counts = ("documents", "sequences", "tokens")
    ok = (isinstance(info, dict) and info.get("name") == name
          and all(type(info.get(c)) is int and info[c] >= 0 for c in counts))
    if not ok:
        raise DataError(f"dataset {folder} is corrupt: meta.json's shard {k} is not "
                        f"{{name: {name}, documents, sequences, tokens}} but {info!r:.200}",
                        hint=rebuild_hint(folder))


def check_sizes(folder: Path, info: dict[str, Any], itemsize: int) -> None:
    """Every file of shard `info` exists with the size its counts give."""
    sizes = {
        "tokens.bin": int(info["tokens"]) * itemsize,
        "seqs.idx": (int(info["sequences"]) + 1) * 8,
        "docs.idx": (int(info["documents"]) + 1) * 8,
    }
    for suffix, size in sizes.items():
        path = folder / f"{info['name']}.{suffix}"
        if not path.is_file():
            raise DataError(f"dataset {folder} is missing {path.name}", hint=rebuild_hint(folder))
        if path.stat().st_size != size:
            raise corrupt(folder, path.name, f"has {path.stat().st_size} bytes, meta.json says "
                          f"{size} (truncated or corrupt)")


def _check_offsets(folder: Path, file: str, offsets: np.ndarray, end: int, of: str) -> None:
    """`offsets` (n+1,) int64 start at 0, never decrease and end at `end`."""
    if offsets[0] != 0 or offsets[-1] != end:
        raise corrupt(folder, file, f"runs from {int(offsets[0])} to {int(offsets[-1])}; it must "
                      f"run from 0 to {end} ({of})")
    steps = np.diff(offsets)
    if steps.size and steps.min() < 0:
        at = int(np.argmax(steps < 0))
        raise corrupt(folder, file, f"goes backwards at entry {at + 1} ({int(offsets[at])} -> "
                      f"{int(offsets[at + 1])}): offsets must never decrease")


def check_index(folder: Path, info: dict[str, Any]) -> None:
    """The index files of shard `info`: recorded digests, then offsets in order and in range."""
    name = info["name"]
    ends = {"seqs.idx": (int(info["tokens"]), "the shard's tokens"),
            "docs.idx": (int(info["sequences"]), "the shard's sequences")}
    recorded = info.get("sha256") or {}
    for suffix in INDEXES:
        file = f"{name}.{suffix}"
        data = (folder / file).read_bytes()
        if suffix in recorded and digest(data) != recorded[suffix]:
            raise corrupt(folder, file, "does not match the sha256 meta.json records for it "
                          "(overwritten or damaged)")
        _check_offsets(folder, file, np.frombuffer(data, np.int64), *ends[suffix])


def check_ids(folder: Path, shard: str, ids: np.ndarray, vocab_size: int) -> None:
    """DataError unless every id in `ids` (read from `shard`) is below `vocab_size`."""
    if ids.size == 0 or int(ids.max()) < vocab_size:
        return
    raise corrupt(folder, f"{shard}.tokens.bin", f"holds token id {int(ids.max())}, but the "
                  f"vocabulary has {vocab_size} ids: the shard was overwritten or damaged")
