"""Plugins installed for real, without pip: a `.dist-info` folder is all `importlib.metadata`
needs to find a distribution and its `tp` entry points (put `root` on PYTHONPATH)."""

from __future__ import annotations

import textwrap
from pathlib import Path


def fake_distribution(root: Path, dist: str, version: str, entry: str,
                      files: dict[str, str]) -> Path:
    """A minimal installed distribution under `root`: `dist` at `version` with the entry point
    `entry` (``name = module``) in group ``tp``, and `files` (relative path -> source, dedented)
    beside it. Returns `root`."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[tp]\n{entry}\n")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root
