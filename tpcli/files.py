"""Writing files the way every verb must: atomically, and readable like their neighbours.

A file is written to a temporary name in its own folder and renamed over the final name, so a
reader (or a run killed mid-write) never sees half of it. safetensors creates its files with mode
0600; `save_weights` gives them the mode any other new file gets (0666 less the umask), so a team
sharing a machine can read each other's checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def default_mode() -> int:
    """The mode `open()` gives a new file: 0666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temporary sibling, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_weights(state: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors `save_file`, with the file's mode that of its neighbours (not 0600)."""
    from safetensors.torch import save_file

    save_file(state, str(path), metadata=metadata)
    os.chmod(path, default_mode())
