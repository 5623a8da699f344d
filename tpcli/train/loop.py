"""The training loop: one readable function, `train`, and the set-up around it (`run_pretrain`).

Exact resume: the data order is a function of (seed, epoch) only, masking of (seed, epoch,
index), and the RNG states (of every rank) are checkpointed, so a run killed and resumed produces
the same losses as one that never stopped.

Distributed: the same loop runs on every rank under torchrun; a `Strategy` (single, ddp, fsdp,
deepspeed) owns the model's placement, the optimizer and their checkpoints. Every optimizer step
consumes `batch_size` examples of one global permutation; rank r reads only the r-th slice of each
micro-batch. Only rank 0 logs and calls the observer hooks; loss and metrics are averaged and
tokens/s summed over ranks, in one all-reduce per log window.
"""

from __future__ import annotations

import math
import sys
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tpcli.data.batch import count_units
from tpcli.errors import Interrupted, Terminated, TpError
from tpcli.plugins import Plugins
from tpcli.recipes.resolved import resolved
from tpcli.train import checkpoint as ckpt_io
from tpcli.train import run_folder
from tpcli.train.batches import Batches, BucketSampler, DataPosition, Sampler
from tpcli.train.loggers import attached_loggers, with_loggers
from tpcli.train.host_memory import keep_freed_memory
from tpcli.train.perf import FlopMeter, peak_flops, slow_precision
from tpcli.train.strategies import make_strategy, resolved_name
from tpcli.train.strategy import Dist, Strategy
from tpcli.plugins.requests import PretrainRequest


def drop_full_masks(host: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The host batch's items less each `*attention_mask` that marks every token real: the model
    then takes its unpadded attention path without reading the mask on the device (a sync)."""
    return [(k, v) for k, v in host.items()
            if not (k.endswith("attention_mask") and bool(v.all()))]


def _autocast(device: torch.device, precision: str) -> Any:
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's device
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # checkpoints before per-rank states: all devices
            torch.cuda.set_rng_state_all(cuda)
        else:
            torch.cuda.set_rng_state(cuda)


def _micro_batch(opts: Any, world: int) -> int:
    """Examples per micro-batch over all ranks; each rank reads 1/world of them."""
    if opts.batch_size % (opts.grad_accum * world):
        ranks = f" x {world} processes" if world > 1 else ""
        raise TpError(f"pretrain.batch_size={opts.batch_size} is not divisible by "
                      f"pretrain.grad_accum={opts.grad_accum}{ranks}",
                      hint="choose a batch size that is a multiple of grad_accum"
                      + (" times the number of processes" if world > 1 else ""))
    return opts.batch_size // opts.grad_accum


def _diverged(loss: float, step: int) -> TpError:
    return TpError(f"loss became {loss} at step {step}; training stopped and the last good "
                   "checkpoint was kept",
                   hint="lower pretrain.lr, use pretrain.precision=fp32 or bf16, or raise "
                   "pretrain.warmup_ratio, then --resume")


class _Silent:
    """The observer hooks of ranks other than 0: every call does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda **kwargs: None


@dataclass
class Setup:
    """Everything `train` needs, built by `run_pretrain`."""

    recipe: Any
    tokenizer: Any
    model: torch.nn.Module  # weights already loaded when resuming
    dataset: Any
    out: Path
    plugins: Plugins
    progress: bool
    start_step: int = 0
    resume_from: Path | None = None  # the checkpoint folder whose trainer state to restore
    dist: Dist = field(default_factory=Dist)
    strategy: Strategy | None = None  # made by _start, before the run folder is written
    opts: Any = None  # the options section (default: the recipe's pretrain)
    evaluator: Any = None  # fine-tuning: `due(step)`, `__call__(model, step, save) -> stop`


def train(s: Setup) -> dict[str, Any]:
    """`_train`, with RUN/status.json saying running / finished / stopped / failed (`tp runs`)."""
    opts = s.opts or s.recipe.pretrain
    with run_folder.marked(s.out, s.start_step, opts.steps, s.dist.is_main), \
            attached_loggers(opts.loggers, s.plugins, s.dist.is_main):
        return _train(s)


def _train(s: Setup) -> dict[str, Any]:
    opts, dist = s.opts or s.recipe.pretrain, s.dist
    micro = _micro_batch(opts, dist.world_size)
    params = sum(p.numel() for p in s.model.parameters())
    strategy = s.strategy or make_strategy(opts, dist)
    model = strategy.setup(s.model)
    if dist.device.type == "cpu":  # no page faults for the buffers each step frees and re-makes
        keep_freed_memory()
    # measured before the RNG state is restored: it draws random matrices
    meter = FlopMeter(peak_flops(dist.device, opts.precision))
    note = slow_precision(dist.device, opts.precision)
    if note is not None and dist.is_main:
        print(note, file=sys.stderr, flush=True)
    pos = DataPosition()
    if s.resume_from is not None:
        extra = strategy.load_trainer_state(s.resume_from)
        pos = DataPosition(**extra["data"])
        rngs = extra.get("rng_ranks") or [extra["rng"]]
        if dist.rank < len(rngs):
            _set_rng_state(rngs[dist.rank])
    if opts.batch_units is not None:  # variable batches of similar lengths (speech)
        sampler: Sampler = BucketSampler(s.dataset, opts.seed, pos, dist.rank, dist.world_size,
                                         units=opts.batch_units, cap=micro // dist.world_size)
    else:
        sampler = Sampler(s.dataset, opts.seed, pos, dist.rank, dist.world_size)
    batches = Batches(sampler, micro, data_workers(opts), pin_memory=dist.device.type == "cuda")
    declared = s.dataset.batch_keys()  # what tokens/s counts: tokens, patches, frames, ...
    unit = count_units({}, declared)[0]
    if opts.compile:
        from tpcli.layers.output import keep_eager_under_compile

        keep_eager_under_compile()
    step_fn = torch.compile(model) if opts.compile else model
    hook = s.plugins.hook if dist.is_main else _Silent()
    hook.tp_on_train_start(run={
        "out": str(s.out), "steps": opts.steps, "start_step": s.start_step, "params": params,
        "recipe": s.recipe.raw, "progress": s.progress, "strategy": strategy.name,
        "world_size": dist.world_size, "resolved": resolved(s.recipe),
    })
    model.train()
    window_loss = torch.zeros((), device=dist.device)
    sums: dict[str, torch.Tensor] = {}
    window_tokens, window_steps, t_window, t0 = 0, 0, time.perf_counter(), time.perf_counter()
    last_loss = float("nan")

    def save(done: int, pointer: str | None = None) -> Path:
        # never checkpoint weights that a non-finite loss already reached (one sync per save)
        unlogged = dist.all_reduce_sum(window_loss.double().reshape(1)).item()
        if not math.isfinite(unlogged):
            raise _diverged(unlogged, done)
        extra = {"data": asdict(batches.pos), "rng": _rng_state(), "step": done,
                 "rng_ranks": dist.gather_object(_rng_state())}
        path = ckpt_io.save_checkpoint(s.out, done, strategy, dist, extra, s.recipe.raw,
                                       s.tokenizer, opts.keep_last, pointer)
        hook.tp_on_checkpoint(step=done, path=str(path))
        return path

    with batches:  # its workers stop however training ends
        for step in range(s.start_step, opts.steps):
            for i in range(opts.grad_accum):
                host = batches.next()  # this rank's slice: micro / world examples
                window_tokens += count_units(host, declared)[1]  # on the host: no device sync
                batch = {k: v.to(dist.device, non_blocking=True) for k, v in drop_full_masks(host)}
                with strategy.accumulate(i == opts.grad_accum - 1), \
                        meter.count(step == s.start_step), _autocast(dist.device, opts.precision):
                    out = step_fn(batch)
                    strategy.backward(out.loss / opts.grad_accum)
                window_loss += out.loss.detach() / opts.grad_accum
                for k, v in out.metrics.items():
                    sums[k] = sums.get(k, 0) + v.detach().float() / opts.grad_accum
            grad_norm = strategy.step()
            window_steps += 1
            done = step + 1
            hook.tp_on_step(step=done, seconds=time.perf_counter() - t0)
            if done % opts.log_every == 0 or done == opts.steps:
                # the only host-device sync of the loop, and its only all-reduce: once per window
                keys = sorted(sums)
                stats = torch.stack([window_loss.double(), *(sums[k].double() for k in keys),
                                     torch.tensor(float(window_tokens), device=dist.device,
                                                  dtype=torch.float64)])
                stats = dist.all_reduce_sum(stats).tolist()  # loss, metrics, tokens over ranks
                elapsed = time.perf_counter() - t_window
                last_loss = stats[0] / dist.world_size / window_steps
                if not math.isfinite(last_loss):
                    raise _diverged(last_loss, done)
                metrics = {"loss": last_loss, "lr": strategy.lr(), "grad_norm": float(grad_norm),
                           f"{unit}_per_s": stats[-1] / elapsed,
                           "steps_per_s": window_steps / elapsed,
                           "elapsed_s": time.perf_counter() - t0}
                metrics |= {k: v / dist.world_size / window_steps for k, v in zip(keys, stats[1:])}
                metrics |= meter.mfu(window_steps / elapsed)  # per chip: this rank's FLOPs
                hook.tp_on_log(step=done, metrics=metrics)
                window_loss.zero_()
                sums, window_tokens, window_steps, t_window = {}, 0, 0, time.perf_counter()
            if s.evaluator is not None:
                if s.evaluator.due(done):  # evaluates, saves the best, says when to stop early
                    model.eval()
                    stop = s.evaluator(s.model, done, save)
                    model.train()
                    if stop:
                        break
            elif done % opts.save_every == 0 or done == opts.steps:
                save(done)
    summary = {"steps": done if opts.steps > s.start_step else opts.steps, "loss": last_loss,
               "out": str(s.out),
               "checkpoint": str(s.out / "last"), "seconds": round(time.perf_counter() - t0, 2)}
    hook.tp_on_train_end(summary=summary)
    return summary


def data_workers(opts: Any) -> int:
    """Processes that load batches ahead (`data_workers`; default: one where a second CPU core
    can run it, none on one core)."""
    if opts.data_workers is not None:
        return opts.data_workers
    return 1 if (os.cpu_count() or 1) > 1 else 0


def run_pretrain(request: PretrainRequest) -> dict[str, Any]:
    """Set up a new run or resume one, then `train`. Under torchrun every rank runs this.

    Everything that can be checked is checked before the run folder is written: the arguments,
    the recipe, the strategy, the dataset, and one forward pass of the model on a real example.
    Ctrl-C and SIGTERM become an `Interrupted` that says which checkpoint was kept and the
    command that continues."""
    plugins = request.plugins
    assert plugins is not None  # set by tpcli.verbs.pretrain
    dist: Dist | None = None
    out: Path | None = request.resume or request.out
    try:
        recipe, data, out, ckpt = _open_run(request, plugins)
        dist = Dist(recipe.pretrain.device)
        return _start(request, plugins, recipe, data, out, ckpt, dist)
    except KeyboardInterrupt as e:
        raise _interrupted(out, e) from None
    finally:
        if dist is not None:
            dist.close()


def _interrupted(out: Path | None, e: KeyboardInterrupt) -> Interrupted:
    signame = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
    found = run_folder.checkpoints(out) if out is not None else []
    if found:
        return Interrupted(f"tp pretrain stopped by {signame}; run {out} keeps its checkpoints up "
                           f"to {found[-1].name}",
                           hint=f"continue with `tp pretrain --resume {out}`")
    return Interrupted(f"tp pretrain stopped by {signame} before its first checkpoint",
                       hint="run the same command again: a run folder without a checkpoint is "
                       "taken over")


def _open_run(request: PretrainRequest, plugins: Plugins) -> tuple[Any, Path, Path, Path | None]:
    """The recipe, dataset, run folder and (resuming) checkpoint; nothing is written yet."""
    from tpcli.recipes.config import build_recipe
    from tpcli.recipes import load_recipe

    if request.resume is not None:
        _refuse_with_resume(request)
        run_dir, ckpt = run_folder.resolve_resume(Path(request.resume))
        info = run_folder.read_info(run_dir)
        raw = run_folder.read_recipe(ckpt)
        recipe = build_recipe(raw, plugins.registry, name=info.get("recipe", "run"),
                              path=Path(info["recipe_dir"]) if info.get("recipe_dir") else None,
                              overrides=request.overrides)
        recipe = with_loggers(recipe, "pretrain", request.loggers, plugins)
        return recipe, Path(request.data or info["data"]), run_dir, ckpt
    if request.recipe is None or request.data is None or request.out is None:
        raise TpError("tp pretrain needs a RECIPE, --data and --out (or --resume RUN)",
                      hint="tp pretrain recipes/bert-base --data data/bert --out runs/bert")
    recipe = with_loggers(load_recipe(request.recipe, request.overrides, plugins), "pretrain",
                          request.loggers, plugins)
    run_folder.claim(Path(request.out))
    return recipe, Path(request.data), Path(request.out), None


def _refuse_with_resume(request: PretrainRequest) -> None:
    """A resumed run trains the recipe saved in its folder: a RECIPE or --out next to --resume
    would be ignored, so either is an error."""
    if request.recipe is not None:
        raise TpError(f"both a recipe ({request.recipe}) and --resume were given: a resumed run "
                      "trains the recipe saved in its run folder",
                      hint=f"drop {request.recipe!r}; change options with overrides, e.g. "
                      f"`tp pretrain --resume {request.resume} pretrain.steps=2000`")
    if request.out is not None and Path(request.out).resolve() != Path(request.resume).resolve():
        raise TpError(f"--out {request.out} was given with --resume {request.resume}: a resumed "
                      "run writes into the folder it resumes",
                      hint="drop --out (or copy the run folder and resume the copy)")


def check_inputs(model: Any, keys: tuple[Any, ...]) -> None:
    """A TpError when the model's embeddings read a batch key the data does not provide (a
    `patch` embedding over a text processor), or a fixed shape other than the data's, naming
    the key and what the data has."""
    reads = model.inputs()
    have = {k.name for k in keys} | {k.mask for k in keys if k.mask}
    missing = [k.name for k in reads if not k.optional and k.name not in have]
    given = {k.name: k for k in keys}
    for k in reads:  # fixed shapes both sides declare must agree (an image size)
        data = given.get(k.name)
        if data is not None and not k.varying and not data.varying and data.shape != k.shape:
            raise TpError(f"the model reads {k.name!r} of shape {k.shape} per example, but the "
                          f"data's examples have {data.shape}",
                          hint="make the embedding's options (model.embedding) and the "
                          "processor's (data.processor) give the same shape, e.g. one image size")
    if missing:
        raise TpError(f"the model's embeddings read {', '.join(repr(m) for m in missing)}, which "
                      f"the data's examples do not have (they have {', '.join(sorted(have))})",
                      hint="choose a processor (data.processor) that produces those keys, or "
                      "embeddings that read what it produces (`tp modules embedding`)")


PREFLIGHT_SAMPLE = 64  # examples looked at (spread over the dataset) to find a longest one


def _preflight(model: torch.nn.Module, dataset: Any) -> None:
    """One forward pass on the largest of a sample of examples, before anything is written: a
    sequence longer than the model takes, or inputs a module cannot read, fail here and not at
    step 1. Eval mode, no grad, and the RNG state restored: the run that follows is unchanged."""
    n = len(dataset)
    if n == 0:
        raise TpError("the dataset holds no training examples",
                      hint="preprocess a larger corpus or lower the processor's seq_length")
    check_inputs(model, dataset.batch_keys())
    rng = torch.get_rng_state()
    was_training = model.training
    try:
        picks = sorted({round(i * (n - 1) / max(1, PREFLIGHT_SAMPLE - 1))
                        for i in range(min(n, PREFLIGHT_SAMPLE))})
        examples = [dataset[i] for i in picks]
        largest = max(examples, key=lambda ex: sum(v.numel() for v in ex.values()))
        model.eval()
        with torch.no_grad():
            model(dataset.collate([largest]))
    finally:
        model.train(was_training)
        torch.set_rng_state(rng)


def _load_init(model: torch.nn.Module, ref: str, plugins: Plugins, progress: bool,
               dist: Dist) -> None:
    """`pretrain.init`: the weights a new run starts from (a run, a checkpoint, zoo:NAME)."""
    from tpcli.zoo import resolve_init

    init = ckpt_io.find_checkpoint(Path(resolve_init(ref, plugins, progress)))
    loaded = ckpt_io.load_init(model, ckpt_io.read_weights(init), str(init))
    if dist.is_main:
        fresh = f"; fresh: {', '.join(loaded['fresh'])}" if loaded["fresh"] else ""
        print(f"init: weights from {init}{fresh}", file=sys.stderr)


def _start(request: PretrainRequest, plugins: Plugins, recipe: Any, data: Path, out: Path,
           ckpt: Path | None, dist: Dist) -> dict[str, Any]:
    from tpcli.data import build_tokenizer as load_tokenizer
    from tpcli.data.loader import make_dataset
    from tpcli.model import build_model, vocabulary

    start = 0
    if ckpt is not None:
        info = ckpt_io.read_info(ckpt)
        start = int(info["step"])
        ckpt_io.check_resumable(info, resolved_name(recipe.pretrain, dist.world_size),
                                dist.world_size, ckpt)
        if start >= recipe.pretrain.steps:
            raise TpError(f"run {out} already finished step {start} of {recipe.pretrain.steps}",
                          hint=f"train longer with `tp pretrain --resume {out} "
                          f"pretrain.steps={start * 2}`")
    # a strategy that cannot run (DeepSpeed missing, a DeepSpeed JSON contradicting the recipe)
    # fails here, before anything is written into the run folder
    strategy = make_strategy(recipe.pretrain, dist)
    torch.manual_seed(recipe.pretrain.seed)  # the same initial weights on every rank
    tokenizer = load_tokenizer(recipe, plugins)
    dataset = make_dataset(data, recipe, tokenizer, recipe.pretrain.seed, plugins)
    model = build_model(recipe.model, plugins.registry, *vocabulary(tokenizer))
    if ckpt is not None:
        ckpt_io.load_weights(model, ckpt_io.read_weights(ckpt), str(ckpt))
    elif recipe.pretrain.init:
        _load_init(model, recipe.pretrain.init, plugins, request.progress, dist)
    _preflight(model, dataset)
    if dist.rank > 0:  # dropout differs across ranks (rank 0 keeps the one-process stream)
        torch.manual_seed(recipe.pretrain.seed + 1_000_003 * dist.rank)
    dist.barrier()  # every rank has checked the run folder before rank 0 writes it
    if dist.is_main:
        if ckpt is None:
            run_folder.create(out, recipe, data, request.overrides, recipe.pretrain.steps)
        else:
            run_folder.record_resume(out, recipe, ckpt, start, recipe.pretrain.steps, request.overrides)
    dist.barrier()
    return train(Setup(recipe, tokenizer, model, dataset, out, plugins, request.progress,
                       start, ckpt, dist, strategy))
