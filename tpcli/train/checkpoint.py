"""Checkpoints: weights as safetensors; optimizer, schedule, RNG and data position beside them.

Layout of a run folder::

    RUN/recipe.yaml                  the validated recipe (overrides applied)
    RUN/run.json                     dataset path and how the run was started
    RUN/metrics.jsonl                one JSON line per log step
    RUN/checkpoints/step-00001000/   model.safetensors, trainer.pt, recipe.yaml, tokenizer/,
                                     checkpoint.json, and a sharded strategy's own files
                                     (fsdp/, deepspeed/)
    RUN/last -> checkpoints/step-00001000
    RUN/best -> checkpoints/step-00000800  (fine-tuning: the best dev metric so far)

model.safetensors always holds the whole model with tp's keys, whatever the strategy (FSDP and
ZeRO-3 shards are gathered by rank 0), so `tp convert` and fine-tuning read any checkpoint.
checkpoint.json records {step, weights, strategy, world_size}.

A checkpoint is written into a temporary folder (by every rank, under torchrun) and renamed into
place by rank 0 after a barrier, then `last` is swapped atomically, so a run killed at any
instant, or one of its ranks, leaves the previous checkpoint intact. Loading is
strict, names every missing or unexpected key, and unpickles no code (`weights_only=True`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from tpcli.errors import CheckpointError, TpError
from tpcli.files import save_weights
from tpcli.train.run_folder import (CHECKPOINTS, INFO, LAST, WEIGHTS, checkpoints,
                                    earlier_hint, last_checkpoint, point,
                                    write_recipe)

if TYPE_CHECKING:
    from tpcli.plugins import Plugins
    from tpcli.train.strategy import Dist, Strategy

TRAINER = "trainer.pt"


class Unsharded:
    """The checkpoint side of a strategy for a model held whole by one process: what tools that
    write a checkpoint outside a training run (conversion, tests) pass to `save_checkpoint`."""

    name = "single"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}

    def save_trainer_state(self, folder: Path, extra: dict[str, Any]) -> None:
        torch.save(extra, Path(folder) / TRAINER)


def save_checkpoint(
    run_dir: Path,
    step: int,
    strategy: Strategy | Unsharded,
    dist: Dist | None,
    extra: dict[str, Any],
    recipe_raw: dict[str, Any],
    tokenizer: Any,
    keep_last: int,
    pointer: str | None = None,
) -> Path:
    """Checkpoint `step` from any strategy; every rank calls it (it is collective).
    `pointer` (e.g. "best") names a second link to it, whose checkpoint pruning keeps.

    Rank 0 makes the temporary folder; every rank writes its part into it (the gathered weights
    and trainer.pt by rank 0, shards by each rank); after a barrier rank 0 renames it into place,
    points `last` at it and prunes. A rank that dies before that barrier leaves only the
    temporary folder, which the next save removes."""
    if dist is None:  # one process, no process group
        from tpcli.train.strategy import Dist

        dist = Dist("cpu")
    ckpt_root = run_dir / CHECKPOINTS
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".tmp-step-{step:08d}"
    try:
        if dist.is_main:
            ckpt_root.mkdir(parents=True, exist_ok=True)
            for stale in ckpt_root.glob(".tmp-*"):  # left by a killed run
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        dist.barrier()
        weights = strategy.full_state_dict()  # collective under fsdp / ZeRO-3
        if weights is not None:
            save_weights(weights, tmp / WEIGHTS, {"format": "pt", "step": str(step)})
        strategy.save_trainer_state(tmp, extra)
        if dist.is_main:
            write_recipe(tmp, recipe_raw)
            if tokenizer is not None:  # a model of images or audio features may have none
                tokenizer.save(str(tmp / "tokenizer"))
            (tmp / INFO).write_text(json.dumps({
                "step": step, "weights": WEIGHTS, "strategy": strategy.name,
                "world_size": dist.world_size}, indent=1))
        dist.barrier()  # every rank's part is on disk
        if dist.is_main:
            _commit(tmp, final)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM mid-save: the previous checkpoint stands
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:  # noqa: BLE001 - only write failures are the user's to fix
        if not _is_write_failure(e):
            raise
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(final, e) from e
    if dist.is_main:
        point(run_dir, final)
        if pointer is not None:
            point(run_dir, final, pointer)
        _prune(ckpt_root, keep_last, keep=final)
    dist.barrier()  # no rank runs ahead (and could be killed) before `last` moved
    return final


def _commit(tmp: Path, final: Path) -> None:
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _is_write_failure(e: BaseException) -> bool:
    """A full disk or a file-size limit, as os, safetensors (SafetensorError) or torch.save
    (RuntimeError "... failed writing file ...") report it."""
    if isinstance(e, (OSError, SafetensorError)):
        return True
    return isinstance(e, RuntimeError) and "writ" in str(e).lower()


def _write_error(final: Path, e: BaseException) -> TpError:
    reason = getattr(e, "strerror", None) or e
    return TpError(
        f"could not write checkpoint {final}: {reason}; the previous checkpoint "
        "is intact",
        hint="free disk space (or choose another --out) and resume with --resume",
    )


def _fsync_dir(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _prune(ckpt_root: Path, keep_last: int, keep: Path) -> None:
    """Remove all but the newest `keep_last` checkpoints, never `keep` nor one that a link of
    the run folder (`last`, fine-tuning's `best`) points at."""
    links = [p for p in ckpt_root.parent.iterdir() if p.is_symlink()]
    kept = {keep.resolve()} | {p.resolve() for p in links}
    done = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in done[:-keep_last]:
        if old.resolve() not in kept:
            shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(path: Path) -> Path:
    """A checkpoint folder from a checkpoint folder, a run folder (its `last`), or `RUN/last`."""
    path = Path(path)
    if (path / WEIGHTS).is_file():
        return path.resolve()
    if (path / LAST / WEIGHTS).is_file():
        return (path / LAST).resolve()
    newest = last_checkpoint(path) if path.is_dir() else None
    if newest is not None:  # `last` never made: killed right after the first save's rename
        return newest
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist",
                              hint="pass a run folder made by `tp pretrain` or one of its "
                              "checkpoints/step-* folders")
    found = checkpoints(path)
    if found:
        raise CheckpointError(
            f"{path}: its `{LAST}` checkpoint is missing or damaged; earlier checkpoints: "
            + ", ".join(p.name for p in found[-5:]),
            hint=f"pass one of them, e.g. {found[-1]}")
    raise CheckpointError(
        f"{path} holds no checkpoint ({WEIGHTS} not found there nor under {path}/{LAST})",
        hint="the run may have been stopped before its first checkpoint; start it again",
    )


def read_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(ckpt / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt / WEIGHTS} is corrupt or unreadable: {e}",
                              hint=earlier_hint(ckpt)) from e


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


def check_body(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str,
               hint: str) -> list[str]:
    """Every weight of `own` outside the targets is in `state` with its shape, or one
    CheckpointError names the missing and mis-shaped ones. Returns those keys (the body)."""
    body = [k for k in own if not k.startswith("targets.")]
    missing = [k for k in body if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in body
             if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        listed = "; ".join([f"missing {k}" for k in missing[:8]] + wrong[:8])
        raise CheckpointError(
            f"{source} does not fit this model ({len(missing)} missing, {len(wrong)} "
            f"mis-shaped weights: {listed})", hint=hint)
    return body


def load_init(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Weights to start a run from (`pretrain.init`): every weight outside the targets must be in
    `state` with its shape; a target's weight is taken when `state` has it with the same shape,
    else it keeps its fresh initialisation. Returns {fresh: [...], unused: [...]} (keys)."""
    own = model.state_dict()
    check_body(own, state, source, hint="start from a checkpoint of the same architecture and "
               "vocabulary (its recipe.yaml), or set the recipe's model section to match it")
    load = {k: state[k] for k in own if k in state and state[k].shape == own[k].shape}
    model.load_state_dict({**own, **load}, strict=True)
    return {"fresh": sorted(k for k in own if k not in load),
            "unused": sorted(k for k in state if k not in own)}


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    try:
        return torch.load(ckpt / TRAINER, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{ckpt} has no {TRAINER}: it cannot be resumed",
                              hint="it can still initialise a new run") from e
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"{ckpt / TRAINER} is corrupt: {e}",
                              hint=earlier_hint(ckpt)) from e


def read_info(ckpt: Path) -> dict[str, Any]:
    """checkpoint.json; checkpoints from before strategies were recorded read as single, 1."""
    try:
        info = json.loads((ckpt / INFO).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt / INFO} is missing or corrupt: {e}",
                              hint=earlier_hint(ckpt)) from e
    return {"strategy": "single", "world_size": 1, **info}


def check_resumable(info: dict[str, Any], strategy: str, world_size: int, ckpt: Path) -> None:
    """A checkpoint resumes in its strategy's family (single and ddp share one format); a sharded
    strategy's (fsdp, deepspeed) also needs the same number of processes."""
    was = info["strategy"]
    family = {"single": "replicated", "ddp": "replicated"}
    if family.get(was, was) != family.get(strategy, strategy):
        raise CheckpointError(
            f"checkpoint {ckpt} was written by the {was} strategy; this run uses {strategy}",
            hint=f"resume with pretrain.strategy={was}")
    if was in ("fsdp", "deepspeed") and int(info["world_size"]) != world_size:
        raise CheckpointError(
            f"checkpoint {ckpt} holds {was} shards of {info['world_size']} processes, but this "
            f"run has {world_size}",
            hint=f"resume with --nproc {info['world_size']} (or torchrun --nproc_per_node "
            f"{info['world_size']})")


@dataclass
class Loaded:
    model: Any  # TpModel in eval mode
    recipe: Any  # tpcli.recipes.config.Recipe
    tokenizer: Any
    step: int
    path: Path


def load_tokenizer(ckpt: Path, recipe: Any, plugins: Plugins) -> Any:
    """The tokenizer saved in checkpoint `ckpt` (None when its recipe has none)."""
    if recipe.tokenizer is None:
        return None
    tok_cls = plugins.registry.get("tokenizer", recipe.tokenizer.name)
    return tok_cls.from_saved(str(ckpt / "tokenizer"))


def load_checkpoint(path: Path, plugins: Plugins) -> Loaded:
    """Model (eval mode), recipe, tokenizer and step of a checkpoint (a run folder means its
    `last`); the tokenizer is the one saved beside the weights."""
    from tpcli.model import build_model, vocabulary
    from tpcli.recipes.config import build_recipe
    from tpcli.train.run_folder import read_recipe

    ckpt = find_checkpoint(Path(path))
    recipe = build_recipe(read_recipe(ckpt), plugins.registry, name=str(ckpt), path=ckpt)
    tokenizer = load_tokenizer(ckpt, recipe, plugins)
    model = build_model(recipe.model, plugins.registry, *vocabulary(tokenizer))
    load_weights(model, read_weights(ckpt), str(ckpt))
    return Loaded(model.eval(), recipe, tokenizer, int(read_info(ckpt).get("step", 0)), ckpt)

