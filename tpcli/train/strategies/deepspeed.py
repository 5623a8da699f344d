"""DeepSpeed ZeRO 1/2/3 behind tp's Strategy interface.

The DeepSpeed config is built from the recipe (batch size, accumulation, clipping, precision,
ZeRO stage, CPU offload) and merged with an optional user JSON (`pretrain.deepspeed_config`) for
everything the recipe does not speak about (bucket sizes, overlap, stage-3 knobs). A JSON value
the recipe also sets must agree with it: two sources of truth that disagree are a TpError.

The optimizer and schedule are tp's own (`tpcli.train.optim`: AdamW with the no-decay groups,
LambdaLR warm-up + decay) handed to DeepSpeed as client objects, so the learning rate at every
step is the same as under the single/DDP/FSDP strategies. ZeRO wraps the AdamW: it keeps the
fp32 master weights and the Adam moments partitioned across ranks.

The loop drives accumulation: `accumulate(is_last_micro)` tells DeepSpeed which micro-batch is
the boundary (`set_gradient_accumulation_boundary`), `backward` receives a loss already divided
by grad_accum, and `step` runs once per optimizer step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tpcli.errors import CheckpointError, TpError
from tpcli.recipes.options import PretrainOptions
from tpcli.train import checkpoint as ckpt_io
from tpcli.train.optim import make_optimizer, make_scheduler
from tpcli.train.strategy import Dist, checkpoint_activations

INSTALL = "DS_BUILD_OPS=0 pip install deepspeed"
DS_FOLDER = "deepspeed"  # DeepSpeed's own checkpoint folder inside a tp checkpoint
DS_TAG = "state"


def import_deepspeed(device: torch.device | None = None) -> Any:
    """DeepSpeed, or a TpError that says how to install it.

    DeepSpeed picks its accelerator when imported (CUDA if it sees one); training on the CPU
    says so first, unless DS_ACCELERATOR is set already."""
    if device is not None and device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as e:
        raise TpError(f"pretrain.strategy=deepspeed needs DeepSpeed, which is not installed ({e})",
                      hint=f"install it with `{INSTALL}` (or `pip install 'tpcli[deepspeed]'`), "
                      "or choose pretrain.strategy=ddp or fsdp") from e
    # tp chose the config, so DeepSpeed's advice about it ("untested optimizer", module output
    # types it cannot hook) is noise to a tp user; its errors still show
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=r"`torch\.distributed\.\w+` is deprecated")
    return deepspeed


def micro_batch(opts: PretrainOptions, world_size: int) -> int:
    """Examples per rank per micro-batch: batch_size / grad_accum / world_size, exactly."""
    per_step = opts.grad_accum * world_size
    if opts.batch_size % per_step:
        raise TpError(f"pretrain.batch_size={opts.batch_size} is not divisible by "
                      f"pretrain.grad_accum={opts.grad_accum} x {world_size} processes",
                      hint=f"choose a batch size that is a multiple of {per_step}")
    return opts.batch_size // per_step


def recipe_config(opts: PretrainOptions, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config that the recipe alone implies."""
    zero: dict[str, Any] = {"stage": opts.zero_stage}
    if opts.offload:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_batch_size": opts.batch_size,
        "train_micro_batch_size_per_gpu": micro_batch(opts, world_size),
        "gradient_accumulation_steps": opts.grad_accum,
        "gradient_clipping": opts.grad_clip,
        "bf16": {"enabled": opts.precision == "bf16"},
        "fp16": {"enabled": opts.precision == "fp16"},
        "zero_optimization": zero,
        # tp's AdamW is a client optimizer: allow it under ZeRO and under CPU offload
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # tp logs; DeepSpeed stays quiet
        "wall_clock_breakdown": False,
    }


# (path in the DeepSpeed JSON, recipe option that decides it)
_CHECKED = (
    ("train_batch_size", "pretrain.batch_size"),
    ("train_micro_batch_size_per_gpu", "pretrain.batch_size / grad_accum / processes"),
    ("gradient_accumulation_steps", "pretrain.grad_accum"),
    ("gradient_clipping", "pretrain.grad_clip"),
    ("bf16.enabled", "pretrain.precision"),
    ("fp16.enabled", "pretrain.precision"),
    ("zero_optimization.stage", "pretrain.zero_stage"),
    ("zero_optimization.offload_optimizer.device", "pretrain.offload"),
)
_ADAM = {"lr": "lr", "weight_decay": "weight_decay", "betas": "betas", "eps": "adam_eps"}


def _get(d: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _set(d: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        d = d.setdefault(part, {})
    d[last] = value


def _merge(base: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in user.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _contradiction(source: str, key: str, theirs: Any, option: str, ours: Any) -> TpError:
    return TpError(
        f"the DeepSpeed config {source} sets {key}={json.dumps(theirs)} but the recipe's "
        f"{option} gives {json.dumps(ours)}",
        hint=f"remove {key} from {source} (or set it to \"auto\") so the recipe decides, or "
        f"change {option} to agree with it")


def build_config(opts: PretrainOptions, world_size: int) -> dict[str, Any]:
    """The recipe's config merged with `opts.deepspeed_config`; contradictions are TpErrors.

    A value of "auto" in the JSON means "whatever the recipe says". An `optimizer` block may
    only restate the recipe's AdamW (lr, weight_decay, betas, eps): tp's own AdamW and schedule
    run, so learning rates match the other strategies step for step.
    """
    ours = recipe_config(opts, world_size)
    if not opts.deepspeed_config:
        return ours
    source = str(opts.deepspeed_config)
    try:
        user = json.loads(Path(source).read_text())
    except FileNotFoundError as e:
        raise TpError(f"pretrain.deepspeed_config {source} does not exist",
                      hint="pass the path of a DeepSpeed JSON config, or leave it out") from e
    except (OSError, json.JSONDecodeError) as e:
        raise TpError(f"pretrain.deepspeed_config {source} is not valid JSON: {e}",
                      hint="fix the file; DeepSpeed configs are plain JSON objects") from e
    if not isinstance(user, dict):
        raise TpError(f"pretrain.deepspeed_config {source} holds a {type(user).__name__}, "
                      "not a JSON object", hint="a DeepSpeed config is a JSON object {...}")
    user = json.loads(json.dumps(user))  # a private copy we may edit
    for key, option in _CHECKED:
        theirs = _get(user, key)
        if theirs is None:
            continue
        mine = _get(ours, key)
        if theirs == "auto":
            if mine is None:
                _drop(user, key)
            else:
                _set(user, key, mine)
            continue
        if key.endswith("offload_optimizer.device"):
            mine = mine or "none"
        if not _same(theirs, mine):
            raise _contradiction(source, key, theirs, option, mine)
    if "scheduler" in user:
        raise TpError(f"the DeepSpeed config {source} has a scheduler block, but the schedule "
                      "comes from the recipe (pretrain.schedule, warmup_steps/warmup_ratio, "
                      "min_lr_ratio)",
                      hint=f"remove \"scheduler\" from {source} and set the schedule in the recipe")
    opt = user.pop("optimizer", None)
    if opt is not None:
        kind = str(opt.get("type", "adamw")).lower()
        if kind not in ("adam", "adamw"):
            raise TpError(f"the DeepSpeed config {source} asks for optimizer {opt.get('type')!r}, "
                          "but tp trains with AdamW",
                          hint=f"remove \"optimizer\" from {source}")
        for name, field in _ADAM.items():
            theirs = (opt.get("params") or {}).get(name)
            if theirs is None or theirs == "auto":
                continue
            mine = getattr(opts, field)
            if not _same(theirs, mine):
                raise _contradiction(source, f"optimizer.params.{name}", theirs,
                                     f"pretrain.{field}", list(mine) if isinstance(mine, tuple)
                                     else mine)
    return _merge(ours, user)


def _drop(d: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    for part in parents:
        d = d[part]
    d.pop(last, None)


def _init_distributed(deepspeed: Any, dist: Dist) -> None:
    """DeepSpeed on the loop's process group (for one process, a group of one)."""
    dist.ensure_group()
    os.environ.setdefault("LOCAL_RANK", str(dist.local_rank))
    if dist.device.type == "cpu":
        # DeepSpeed's CPU backend compiles a shared-memory all-reduce (about a minute of g++ on
        # first use) that only its inference path calls; training reduces through gloo.
        # Marking it incompatible skips the build (DeepSpeed keeps this dict for such edits).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    backend = "nccl" if dist.device.type == "cuda" else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


class DeepSpeedStrategy:
    """ZeRO stage `opts.zero_stage` (1, 2 or 3), optionally with the optimizer state on the CPU."""

    name = "deepspeed"

    def __init__(self, opts: PretrainOptions, dist: Dist) -> None:
        self.opts, self.dist = opts, dist
        self.ds = import_deepspeed(dist.device)
        self.config = build_config(opts, dist.world_size)  # fail before any model is built
        self.engine: Any = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._pending: dict[str, Tensor] | None = None

    # --- set-up ---------------------------------------------------------------------------

    def setup(self, model: nn.Module) -> nn.Module:
        """Build tp's AdamW + schedule and the DeepSpeed engine around `model`; return the engine.

        The engine is an nn.Module: `engine(batch)` runs the model's forward (ZeRO-3 gathers
        each layer's weights on the way).
        """
        _init_distributed(self.ds, self.dist)
        if self._pending is not None:
            ckpt_io.load_weights(model, self._pending, "weights")
            self._pending = None
        if self.opts.activation_checkpointing:
            checkpoint_activations(model)
        # foreach: ZeRO swaps the parameters for flat fp32 partitions under the optimizer
        optimizer = make_optimizer(model, self.opts, fused=False)
        self.scheduler = make_scheduler(optimizer, self.opts)
        self.engine, _, _, _ = self.ds.initialize(
            model=model, optimizer=optimizer, lr_scheduler=self.scheduler, config=self.config,
            dist_init_required=False)
        if self.engine.gradient_accumulation_steps() != self.opts.grad_accum:
            raise AssertionError("DeepSpeed and the loop disagree on gradient accumulation")
        return self.engine

    # --- one optimizer step ---------------------------------------------------------------

    @contextmanager
    def accumulate(self, is_last_micro: bool) -> Iterator[None]:
        """DeepSpeed reduces gradients on the boundary micro-batch only; tell it which one."""
        self.engine.set_gradient_accumulation_boundary(is_last_micro)
        yield

    def backward(self, loss: Tensor) -> None:
        # the loop already divided by grad_accum: DeepSpeed must not divide again
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> Tensor:
        """Clip (DeepSpeed's gradient_clipping), AdamW step, schedule step, zero grads."""
        self.engine.set_gradient_accumulation_boundary(True)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()  # before clipping, as clip_grad_norm_'s
        if isinstance(norm, Tensor):
            return norm.detach()
        return torch.tensor(float("nan") if norm is None else float(norm))

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    # --- weights ---------------------------------------------------------------------------

    def full_state_dict(self) -> dict[str, Tensor] | None:
        """Every weight in fp32 with tp's keys, gathered from the ZeRO partitions, on rank 0.

        The fp32 master copy is read (not the bf16/fp16 working copy), so an export of a
        mixed-precision run loses nothing. Collective: every rank must call it.
        """
        from deepspeed.utils import safe_get_full_fp32_param

        module = self.engine.module
        gathered: dict[int, Tensor] = {}
        for p in _unique_params(module):
            full = safe_get_full_fp32_param(p) if p.requires_grad else None
            if full is None:  # frozen (or not managed by ZeRO): gather the working copy
                full = self._gather_param(p)
            if self.dist.is_main:  # the other ranks only took part in the collective
                gathered[id(p)] = full.detach().to("cpu", torch.float32, copy=True)
        if not self.dist.is_main:
            return None
        out: dict[str, Tensor] = {}
        for key, value in module.state_dict(keep_vars=True).items():
            if isinstance(value, nn.Parameter):
                out[key] = gathered[id(value)]
            else:  # buffers are never partitioned; floating ones saved as fp32 like the weights
                value = value.detach().cpu()
                out[key] = (value.float() if value.is_floating_point() else value).clone()
        return out

    def _gather_param(self, p: nn.Parameter) -> Tensor:
        if hasattr(p, "ds_id"):
            with self.ds.zero.GatheredParameters([p], modifier_rank=None):
                return p.data.detach().to("cpu", torch.float32, copy=True)
        return p.data.detach().to("cpu", torch.float32, copy=True)

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """Strict load of tp weights. Before setup(): kept and loaded into the model when setup()
        receives it. After setup(): written into the working copy and the fp32 master partitions
        of every rank (collective)."""
        if self.engine is None:
            self._pending = state
            return
        from deepspeed.utils import safe_set_full_fp32_param

        module = self.engine.module
        named = module.state_dict(keep_vars=True)
        _check_keys(named, state)
        with torch.no_grad():
            for key, value in named.items():
                if not isinstance(value, nn.Parameter):
                    value.copy_(state[key])
                    continue
                if hasattr(value, "ds_id"):  # ZeRO-3: a partition; gather, edit, re-partition
                    with self.ds.zero.GatheredParameters([value], modifier_rank=0):
                        if self.dist.is_main:
                            value.data.copy_(state[key])
                else:
                    value.data.copy_(state[key])
                if value.requires_grad:
                    safe_set_full_fp32_param(value, state[key].to(torch.float32))

    # --- trainer state ---------------------------------------------------------------------

    def save_trainer_state(self, folder: Path, extra: dict[str, Any]) -> None:
        """DeepSpeed's checkpoint under folder/deepspeed (partitioned fp32 master weights and
        Adam moments: one file per rank; the schedule), and `extra` by rank 0 in trainer.pt."""
        folder = Path(folder)
        self.engine.save_checkpoint(str(folder / DS_FOLDER), tag=DS_TAG)
        if self.dist.is_main:
            torch.save({**extra, "deepspeed": {"zero_stage": self.opts.zero_stage,
                                               "world_size": self.dist.world_size}},
                       folder / ckpt_io.TRAINER)

    def load_trainer_state(self, folder: Path) -> dict[str, Any]:
        """Restore optimizer, master weights and schedule (after setup); return `extra`."""
        folder = Path(folder)
        state = ckpt_io.read_trainer_state(folder)
        saved = state.pop("deepspeed", None)
        if saved is None or not (folder / DS_FOLDER / DS_TAG).is_dir():
            raise TpError(f"checkpoint {folder} holds no DeepSpeed state: it was not written "
                          "with pretrain.strategy=deepspeed",
                          hint="resume it with the strategy it was trained with")
        if saved["zero_stage"] != self.opts.zero_stage:
            raise TpError(f"checkpoint {folder} was written with ZeRO stage {saved['zero_stage']}, "
                          f"but this run has pretrain.zero_stage={self.opts.zero_stage}",
                          hint=f"resume with pretrain.zero_stage={saved['zero_stage']}")
        if saved["world_size"] != self.dist.world_size:
            raise TpError(f"checkpoint {folder} holds DeepSpeed shards of {saved['world_size']} "
                          f"processes, but this run has {self.dist.world_size}",
                          hint=f"resume with --nproc {saved['world_size']}")
        path, _ = self.engine.load_checkpoint(str(folder / DS_FOLDER), tag=DS_TAG,
                                              load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise TpError(f"DeepSpeed could not read its checkpoint under {folder / DS_FOLDER}",
                          hint="use an earlier checkpoint of the run")
        return state


def _unique_params(module: nn.Module) -> list[nn.Parameter]:
    """Parameters in a fixed order, each once (tied weights appear under two keys)."""
    seen: set[int] = set()
    out = []
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _check_keys(own: dict[str, Any], state: dict[str, Tensor]) -> None:
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"weights do not fit the model: missing {missing[:12]}, "
                              f"unexpected {unexpected[:12]}",
                              hint="load them with the recipe they were trained with")
