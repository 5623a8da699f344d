"""What the downstream tests share: sentences of Python's own documentation, by topic."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sentences(topic: str) -> list[str]:
    """The sentences of one pydoc topic with more than three words, tabs made spaces (so they
    fit a TSV cell)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from pydoc_corpus import sentences as split
    finally:
        sys.path.pop(0)
    from pydoc_data.topics import topics

    return [s.replace("\t", " ") for s in split(topics[topic]) if len(s.split()) > 3]
