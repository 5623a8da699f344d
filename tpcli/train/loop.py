"""The training loop: one readable function, `train`, and the set-up around it (`run_pretrain`).

Exact resume: the data order is a function of (seed, epoch) only, masking of (seed, epoch,
index), and the RNG states are checkpointed, so a run killed and resumed produces the same losses
as one that never stopped.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from tpcli.errors import TpError
from tpcli.plugins import Plugins
from tpcli.train import checkpoint as ckpt_io
from tpcli.train.optim import make_optimizer, make_scheduler
from tpcli.train.perf import FlopMeter, peak_flops
from tpcli.verbs import PretrainRequest


@dataclass
class DataPosition:
    """Where the sampler stands: epoch and offset into that epoch's permutation."""

    epoch: int = 0
    offset: int = 0


class Sampler:
    """Deterministic, resumable shuffling: epoch e visits randperm(n, seed=(seed, e))."""

    def __init__(self, dataset: Any, seed: int, pos: DataPosition) -> None:
        self.dataset, self.seed, self.pos = dataset, seed, pos
        self.n = len(dataset)
        if self.n == 0:
            raise TpError("the dataset holds no training examples",
                          hint="preprocess a larger corpus or lower the processor's seq_length")
        self._perm = self._permutation(pos.epoch)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return torch.randperm(self.n, generator=g)

    def next_batch(self, size: int) -> dict[str, torch.Tensor]:
        examples = []
        while len(examples) < size:
            if self.pos.offset >= self.n:
                self.pos = DataPosition(self.pos.epoch + 1, 0)
                self._perm = self._permutation(self.pos.epoch)
            examples.append(self.dataset[int(self._perm[self.pos.offset])])
            self.pos.offset += 1
        return self.dataset.collate(examples)


def _device(opts: Any) -> torch.device:
    if opts.device == "cuda" or (opts.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TpError("pretrain.device=cuda but no CUDA device is available",
                          hint="use pretrain.device=cpu or auto")
        return torch.device("cuda")
    return torch.device("cpu")


def _autocast(device: torch.device, precision: str) -> Any:
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Setup:
    """Everything `train` needs, built by `run_pretrain`."""

    recipe: Any
    tokenizer: Any
    model: torch.nn.Module
    dataset: Any
    out: Path
    plugins: Plugins
    progress: bool
    start_step: int = 0
    trainer_state: dict[str, Any] | None = None


def train(s: Setup) -> dict[str, Any]:
    opts = s.recipe.pretrain
    device = _device(opts)
    model = s.model.to(device)
    optimizer = make_optimizer(model, opts)
    scheduler = make_scheduler(optimizer, opts)
    # measured before the RNG state is restored: it draws random matrices
    meter = FlopMeter(peak_flops(device, opts.precision))
    pos = DataPosition()
    if s.trainer_state is not None:
        optimizer.load_state_dict(s.trainer_state["optimizer"])
        scheduler.load_state_dict(s.trainer_state["scheduler"])
        pos = DataPosition(**s.trainer_state["data"])
        _set_rng_state(s.trainer_state["rng"])
    if opts.batch_size % opts.grad_accum:
        raise TpError(f"pretrain.batch_size={opts.batch_size} is not divisible by "
                      f"pretrain.grad_accum={opts.grad_accum}",
                      hint="choose a batch size that is a multiple of grad_accum")
    micro = opts.batch_size // opts.grad_accum
    sampler = Sampler(s.dataset, opts.seed, pos)
    step_fn = torch.compile(model) if opts.compile else model
    hook = s.plugins.hook
    hook.tp_on_train_start(run={
        "out": str(s.out), "steps": opts.steps, "start_step": s.start_step,
        "params": sum(p.numel() for p in model.parameters()), "recipe": s.recipe.raw,
        "progress": s.progress,
    })
    model.train()
    window_loss = torch.zeros((), device=device)
    sums: dict[str, torch.Tensor] = {}
    window_tokens, window_steps, t_window, t0 = 0, 0, time.perf_counter(), time.perf_counter()
    last_loss = float("nan")
    for step in range(s.start_step, opts.steps):
        for _ in range(opts.grad_accum):
            host = sampler.next_batch(micro)
            mask = host.get("attention_mask")  # counted on the host: no device sync
            window_tokens += int(mask.sum()) if mask is not None else host["input_ids"].numel()
            batch = {k: v.to(device, non_blocking=True) for k, v in host.items()}
            with meter.count(step == s.start_step), _autocast(device, opts.precision):
                out = step_fn(batch)
                (out.loss / opts.grad_accum).backward()
            window_loss += out.loss.detach() / opts.grad_accum
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0) + v.detach().float() / opts.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), opts.grad_clip if opts.grad_clip > 0 else math.inf)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window_steps += 1
        done = step + 1
        if done % opts.log_every == 0 or done == opts.steps:
            # the only host-device sync of the loop: once per log window
            elapsed = time.perf_counter() - t_window
            last_loss = float(window_loss) / window_steps
            if not math.isfinite(last_loss):
                raise TpError(f"loss became {last_loss} at step {done}; training stopped and the "
                              "last good checkpoint was kept",
                              hint="lower pretrain.lr, use pretrain.precision=fp32 or bf16, or "
                              "raise pretrain.warmup_ratio, then --resume")
            metrics = {"loss": last_loss, "lr": scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm), "tokens_per_s": window_tokens / elapsed,
                       "steps_per_s": window_steps / elapsed, "elapsed_s": time.perf_counter() - t0}
            metrics |= {k: float(v) / window_steps for k, v in sums.items()}
            metrics |= meter.mfu(window_steps / elapsed)
            hook.tp_on_log(step=done, metrics=metrics)
            window_loss.zero_()
            sums, window_tokens, window_steps, t_window = {}, 0, 0, time.perf_counter()
        if done % opts.save_every == 0 or done == opts.steps:
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "data": asdict(sampler.pos), "rng": _rng_state(), "step": done}
            path = ckpt_io.write_checkpoint(s.out, done, model, state, s.recipe.raw, s.tokenizer,
                                            opts.keep_last)
            hook.tp_on_checkpoint(step=done, path=str(path))
    summary = {"steps": opts.steps, "loss": last_loss, "out": str(s.out),
               "checkpoint": str(s.out / "last"), "seconds": round(time.perf_counter() - t0, 2)}
    hook.tp_on_train_end(summary=summary)
    return summary


def run_pretrain(request: PretrainRequest) -> dict[str, Any]:
    """Set up a new run or resume one, then `train`."""
    from tpcli.api import load_tokenizer
    from tpcli.config import build_recipe
    from tpcli.data.loader import make_dataset
    from tpcli.model import build_model
    from tpcli.recipes import load_recipe

    plugins = request.plugins
    assert plugins is not None  # set by tpcli.verbs.pretrain
    trainer_state = None
    start = 0
    if request.resume is not None:
        run_dir = Path(request.resume)
        if not (run_dir / "recipe.yaml").is_file() or not (run_dir / "run.json").is_file():
            raise TpError(f"{run_dir} is not a tp run folder (no recipe.yaml/run.json)",
                          hint="pass the --out folder of an earlier `tp pretrain`")
        ckpt = ckpt_io.find_checkpoint(run_dir)
        info = json.loads((run_dir / "run.json").read_text())
        raw = yaml.safe_load((ckpt / "recipe.yaml").read_text())
        recipe = build_recipe(raw, plugins.registry, name=info.get("recipe", "run"),
                              path=Path(info["recipe_dir"]) if info.get("recipe_dir") else None,
                              overrides=request.overrides)
        data = Path(request.data or info["data"])
        trainer_state = ckpt_io.read_trainer_state(ckpt)
        start = int(trainer_state["step"])
        out = run_dir
    else:
        if request.recipe is None or request.data is None or request.out is None:
            raise TpError("tp pretrain needs a RECIPE, --data and --out (or --resume RUN)",
                          hint="tp pretrain recipes/bert-base --data data/bert --out runs/bert")
        recipe = load_recipe(request.recipe, request.overrides, plugins)
        data, out = Path(request.data), Path(request.out)
        if out.exists() and any(out.iterdir()):
            raise TpError(f"run folder {out} already exists",
                          hint=f"continue it with `tp pretrain --resume {out}`, or choose "
                          "another --out")
    torch.manual_seed(recipe.pretrain.seed)
    tokenizer = load_tokenizer(recipe, plugins)
    dataset = make_dataset(data, recipe, tokenizer, recipe.pretrain.seed)
    model = build_model(recipe.model, plugins.registry, tokenizer.vocab_size,
                        tokenizer.special_ids)
    if request.resume is not None:
        ckpt_io.load_weights(model, ckpt_io.read_weights(ckpt), str(ckpt))
        if start >= recipe.pretrain.steps:
            raise TpError(f"run {out} already finished step {start} of {recipe.pretrain.steps}",
                          hint=f"train longer with `tp pretrain --resume {out} "
                          f"pretrain.steps={start * 2}`")
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.raw, sort_keys=False))
        (out / "run.json").write_text(json.dumps({
            "recipe": recipe.name, "recipe_dir": str(recipe.base_dir), "data": str(data.resolve()),
            "overrides": request.overrides}, indent=1))
    return train(Setup(recipe, tokenizer, model, dataset, out, plugins, request.progress,
                       start, trainer_state))
