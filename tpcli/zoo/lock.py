"""`tp zoo lock NAME`, for maintainers online: pin the card's revision to a commit and write
each file's size and sha256 into the card.

For `hf://` sources one `model_info` call gives the commit and, for LFS files, size and sha256;
files outside LFS (config.json, vocab.txt) are downloaded, checked against the Hub's git blob id
and hashed. For fsspec sources every file is streamed and hashed. The card is rewritten
atomically, and only if the result still validates.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from tpcli.errors import TpError
from tpcli.zoo import cache
from tpcli.zoo.card import Card
from tpcli.zoo.pull import verifier
from tpcli.zoo.sources import Remote, Source, open_source


def _hash_by_download(card: Card, source: Source, path: str, key: str, remote: Remote,
                      folder: Path) -> tuple[int, str]:
    digests: list[str] = []
    verify = verifier(card, path, None, None, remote)
    local = source.fetch(path, key, folder, lambda n: None,
                         lambda p, known: digests.append(verify(p, known)))
    return local.stat().st_size, digests[0]


def lock(card: Card, card_path: Path, plugins: Any) -> dict[str, Any]:
    var = cache.offline()
    if var:
        raise TpError(f"tp zoo lock needs the network, and {var} is set", hint=f"unset {var}")
    source = open_source(card, plugins)
    key = source.resolve(card.revision)
    paths = [f.path for f in card.files]
    remote = source.describe(key, paths)
    entries = []
    with tempfile.TemporaryDirectory(prefix=f"tp-zoo-lock-{card.name}-") as tmp:
        for path in paths:
            r = remote[path]
            if r.sha256 is not None and r.size is not None:
                size, digest = r.size, r.sha256
            else:
                size, digest = _hash_by_download(card, source, path, key, r, Path(tmp))
            entries.append({"path": path, "size": int(size), "sha256": digest})
    raw = yaml.safe_load(card_path.read_text(encoding="utf-8"))
    raw["revision"] = key if card.scheme == "hf" else card.revision
    raw["files"] = entries
    Card(**raw)  # the locked card must still be a valid card
    cache.write_atomic(card_path, yaml.safe_dump(raw, sort_keys=False, allow_unicode=True,
                                                 width=100).encode())
    return {"name": card.name, "card": str(card_path), "revision": raw["revision"],
            "files": len(entries), "bytes": sum(e["size"] for e in entries)}
