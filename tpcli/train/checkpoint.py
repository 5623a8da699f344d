"""Checkpoints: weights as safetensors; optimizer, schedule, RNG and data position beside them.

Layout of a run folder::

    RUN/recipe.yaml                  the validated recipe (overrides applied)
    RUN/run.json                     dataset path and how the run was started
    RUN/metrics.jsonl                one JSON line per log step
    RUN/checkpoints/step-00001000/   model.safetensors, trainer.pt, recipe.yaml, tokenizer/,
                                     checkpoint.json
    RUN/last -> checkpoints/step-00001000

A checkpoint is written into a temporary folder and renamed into place, then `last` is swapped
atomically, so a run killed at any instant leaves the previous checkpoint intact. Loading is
strict, names every missing or unexpected key, and unpickles no code (`weights_only=True`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tpcli.errors import CheckpointError, TpError

WEIGHTS = "model.safetensors"
TRAINER = "trainer.pt"
INFO = "checkpoint.json"


def write_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    trainer_state: dict[str, Any],
    recipe_raw: dict[str, Any],
    tokenizer: Any,
    keep_last: int,
) -> Path:
    """Write checkpoint `step` atomically, point `last` at it, keep the newest `keep_last`."""
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "step": str(step)})
        torch.save(trainer_state, tmp / TRAINER)
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe_raw, sort_keys=False))
        tokenizer.save(str(tmp / "tokenizer"))
        (tmp / INFO).write_text(json.dumps({"step": step, "weights": WEIGHTS}, indent=1))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TpError(
            f"could not write checkpoint {final}: {e.strerror or e}; the previous checkpoint "
            "is intact",
            hint="free disk space (or choose another --out) and resume with --resume",
        ) from e
    _point_last(run_dir, final)
    _prune(ckpt_root, keep_last, keep=final)
    return final


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _point_last(run_dir: Path, target: Path) -> None:
    link = run_dir / "last"
    tmp = run_dir / f".last-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(target, run_dir), tmp)
    os.replace(tmp, link)


def _prune(ckpt_root: Path, keep_last: int, keep: Path) -> None:
    done = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in done[:-keep_last]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(path: Path) -> Path:
    """A checkpoint folder from a checkpoint folder, a run folder (its `last`), or `RUN/last`."""
    path = Path(path)
    if (path / WEIGHTS).is_file():
        return path.resolve()
    if (path / "last" / WEIGHTS).is_file():
        return (path / "last").resolve()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist",
                              hint="pass a run folder made by `tp pretrain` or one of its "
                              "checkpoints/step-* folders")
    raise CheckpointError(
        f"{path} holds no checkpoint ({WEIGHTS} not found there nor under {path}/last)",
        hint="the run may have been killed before its first checkpoint; start it again",
    )


def read_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(ckpt / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt / WEIGHTS} is corrupt or unreadable: {e}",
                              hint="use an earlier checkpoint of the run") from e


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load: every missing, unexpected or mis-shaped key is named."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected),
                             ("wrong shape", shapes)):
            if items:
                shown = ", ".join(items[:12]) + (f" (+{len(items) - 12} more)" if len(items) > 12 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(
            f"checkpoint {source} does not fit the model: " + "; ".join(parts),
            hint="load it with the recipe it was trained with (saved as recipe.yaml beside it)",
        )
    model.load_state_dict(state, strict=True)


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    try:
        return torch.load(ckpt / TRAINER, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{ckpt} has no {TRAINER}: it cannot be resumed",
                              hint="it can still initialise a new run") from e
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"{ckpt / TRAINER} is corrupt: {e}",
                              hint="use an earlier checkpoint of the run") from e
