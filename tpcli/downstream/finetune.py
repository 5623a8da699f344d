"""`tp finetune` and `tp infer`: a registered task on top of a pre-trained model.

The task replaces the recipe's pre-training targets with its head (`Task.target`); the model is
initialised from `--init` strictly except for that head (every encoder weight must be there; the
report names the head weights that start fresh and the pre-training weights left unused). The
training loop is `tpcli.train.loop.train` with the `finetune` options and an `Evaluator` that
scores the dev sets every `eval_every` steps (default: each epoch), keeps the best checkpoint by
the task's metric (`RUN/best`), and stops early after `patience` evaluations without progress.
`--seeds N` repeats the run with seeds seed..seed+N-1 and reports mean and standard deviation.

Run folder: recipe.yaml (the task and its fitted label list inside `finetune.task`), init.json
(the initialisation report), eval.jsonl (every evaluation), results.json, predictions/<set>.jsonl
from the best checkpoint, checkpoints/, last, best.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch

from tpcli.errors import CheckpointError, ConfigError, DataError, Problem, TpError
from tpcli.files import write_text
from tpcli.downstream.evaluate import Evaluator, MemoryDataset, predict, write_jsonl
from tpcli.plugins import Plugins
from tpcli.plugins.requests import FinetuneRequest, InferRequest, TaskData
from tpcli.downstream.tasks import Splits, split_task_name
from tpcli.train import run_folder
from tpcli.train.loggers import with_loggers


# ----------------------------------------------------------------------------- the task


def task_section(spec: str | dict[str, Any] | None) -> dict[str, Any]:
    if spec is None:
        raise TpError("no task: tp finetune needs --task (or finetune.task in the recipe)",
                      hint="e.g. --task classification or --task glue/sst2; "
                      "`tp modules task` lists the tasks")
    section = {"name": spec} if isinstance(spec, str) else dict(spec)
    if not isinstance(section.get("name"), str):
        raise TpError(f"finetune.task needs a name, got {spec!r}",
                      hint="finetune.task: {name: classification, ...options}")
    return section


def make_task(section: dict[str, Any], plugins: Plugins) -> Any:
    """The task object of a `finetune.task` section ({name, ...options})."""
    from pydantic import ValidationError

    name, variant = split_task_name(section["name"])
    cls = plugins.registry.get("task", name)
    options = {k: v for k, v in section.items() if k != "name"}
    try:
        config = cls.Config(**options)
    except ValidationError as e:
        problems = [Problem(".".join(["finetune.task", *map(str, err["loc"])]), err["msg"])
                    for err in e.errors()]
        raise ConfigError(f"task {section['name']}", problems) from None
    return cls(config, variant)


def _override_paths(overrides: list[str]) -> dict[tuple[str, ...], str]:
    """Each command-line override's key path, e.g. ("finetune", "task", "pooling"), with its
    text (for messages)."""
    from tpcli.recipes.config import parse_override

    return {tuple(parse_override(text)[0]): text for text in overrides}


def chosen_task(request: FinetuneRequest, recipe: Any) -> dict[str, Any]:
    """The task section. Without --task: the recipe's `finetune.task`. With it: --task, plus
    the recipe's task options when that names the same task (or no task: a section only
    overrides made), plus every `finetune.task.OPTION=...` override in any case. An option the
    task does not have is then a validation error, never silently dropped."""
    saved = recipe.finetune.task
    if request.task is None:
        return task_section(saved)
    section = task_section(request.task)
    given = dict(saved) if isinstance(saved, dict) else {"name": saved}
    paths = _override_paths(request.overrides)
    named = [text for path, text in paths.items()
             if path in (("finetune", "task"), ("finetune", "task", "name"))]
    other = given.get("name")
    if named and other not in (None, section["name"]):
        raise TpError(f"two tasks: --task {section['name']} and {named[0]}",
                      hint="name the task once (--task NAME) and give its options as "
                      "finetune.task.OPTION=VALUE")
    overridden = {path[2] for path in paths if path[:2] == ("finetune", "task")
                  and len(path) == 3}
    same = other in (None, section["name"])  # the recipe's options are this task's
    options = {k: v for k, v in given.items()
               if k != "name" and (same or k in overridden)}
    return {**section, **options, "name": section["name"]}


def check_used(request: FinetuneRequest, recipe: Any, task: Any, name: str) -> None:
    """Refuse, before anything runs, options and overrides fine-tuning would not read: a user
    who set them expects them to change something."""
    paths = _override_paths(request.overrides)
    opts = recipe.finetune
    problems: list[str] = []
    for path, text in paths.items():
        if path[0] == "pretrain":
            problems.append(f"{text}: tp finetune does not read the pretrain section (set "
                            f"finetune.{'.'.join(path[1:])} instead)")
        elif path[:2] == ("model", "target") and task.target() is not None:
            problems.append(f"{text}: the task replaces the model's targets with its own head "
                            "(set the head's options as finetune.task.OPTION=VALUE; `tp modules "
                            "task NAME` lists them)")
        elif path == ("finetune", "epochs") and opts.steps is not None:
            problems.append(f"{text}: finetune.steps={opts.steps} decides the length of the "
                            "run (remove one of the two)")
        elif path == ("finetune", "init") and request.init not in (None, opts.init):
            problems.append(f"{text}: --init {request.init} gives the weights (give one)")
    unread = {"save_every": "fine-tuning saves a checkpoint at each evaluation (set "
              "finetune.eval_every instead)"}
    problems += [f"finetune.{k}={getattr(opts, k)}: {why}" for k, why in unread.items()
                 if k in opts.model_fields_set]
    if opts.metric is not None and opts.metric not in task.metrics:
        problems.append(f"finetune.metric={opts.metric!r} is not a metric of task {name} (it "
                        f"has {', '.join(task.metrics)})")
    if problems:
        raise TpError("options that fine-tuning would not use: " + "; ".join(problems),
                      hint="remove them, or set what the message names instead")


# ----------------------------------------------------------------------------- initialisation


def init_from(model: torch.nn.Module, ckpt: Path, head_sources: dict[str, str]
              ) -> dict[str, Any]:
    """Load a pre-trained checkpoint into a task model: strict for everything but the head
    (`targets.*`); head keys come from `head_sources` prefixes when shapes agree, else fresh.
    Returns the report: fresh, carried (head key <- checkpoint key) and unused keys."""
    from tpcli.train import checkpoint as ckpt_io

    state = ckpt_io.read_weights(ckpt)
    own = model.state_dict()
    body = ckpt_io.check_body(
        own, state, str(ckpt), hint="fine-tune with the recipe the checkpoint was trained with "
        "(omit the RECIPE argument to use the one saved in the checkpoint)")
    load = {k: state[k] for k in body}
    carried: dict[str, str] = {}
    for key in own:
        if not key.startswith("targets."):
            continue
        for prefix, source in head_sources.items():
            src = source + key[len(prefix):]
            if key.startswith(prefix) and src in state and state[src].shape == own[key].shape:
                load[key], carried[key] = state[src], src
    fresh = [k for k in own if k.startswith("targets.") and k not in load]
    used = set(load) | set(carried.values())
    model.load_state_dict({**own, **load}, strict=True)
    return {"checkpoint": str(ckpt), "fresh": fresh, "carried": carried,
            "unused": sorted(k for k in state if k not in used)}


def with_target(recipe: Any, target: dict[str, Any] | None, task_state: dict[str, Any],
                plugins: Plugins) -> Any:
    """The recipe with its targets replaced by the task's head and the fitted task saved in
    `finetune.task` (so `tp infer` rebuilds the same task from the checkpoint)."""
    from tpcli.recipes.config import build_recipe

    raw = copy.deepcopy(recipe.raw)
    if target is not None:  # None: the task trains the model's own target (text2text's lm)
        raw["model"]["target"] = target
    raw.setdefault("finetune", {})["task"] = task_state
    return build_recipe(raw, plugins.registry, name=recipe.name, path=recipe.path)


# ----------------------------------------------------------------------------- the runs


def _checkpoint(ref: str | None, plugins: Plugins, progress: bool) -> Path | None:
    """A checkpoint folder from a run / checkpoint folder or `zoo:NAME` (pulled, verified and
    converted to tp format on first use)."""
    from tpcli.train import checkpoint as ckpt_io
    from tpcli.zoo import resolve_init

    if not ref:
        return None
    return ckpt_io.find_checkpoint(Path(resolve_init(ref, plugins, progress)))


def with_checkpoint_tokenizer(recipe: Any, ckpt: Path, plugins: Plugins) -> Any:
    """The recipe with the checkpoint's tokenizer: the weights' vocabulary decides what the ids
    mean (RoBERTa's published weights come with their own 50,265-id dictionary, the recipe's
    pre-training tokenizer is GPT-2's BPE). File options point into the checkpoint."""
    from tpcli.recipes.config import build_recipe

    saved = run_folder.read_recipe(ckpt)
    tok = dict((saved.get("data") or {}).get("tokenizer") or {})
    if not tok or tok.get("name") is None or tok == recipe.raw["data"].get("tokenizer"):
        return recipe
    for key, value in tok.items():
        if isinstance(value, str) and (ckpt / value).exists():
            tok[key] = str((ckpt / value).resolve())
    raw = copy.deepcopy(recipe.raw)
    raw["data"]["tokenizer"] = tok
    return build_recipe(raw, plugins.registry, name=recipe.name, path=recipe.path)


def _recipe_and_init(request: FinetuneRequest, plugins: Plugins) -> tuple[Any, Path | None]:
    from tpcli.recipes.config import build_recipe
    from tpcli.recipes import load_recipe

    if request.recipe is not None:
        recipe = load_recipe(request.recipe, request.overrides, plugins)
        ref = request.init or recipe.finetune.init  # --init wins over the recipe's
        ckpt = _checkpoint(ref, plugins, request.progress)
        return (with_checkpoint_tokenizer(recipe, ckpt, plugins) if ckpt is not None
                else recipe), ckpt
    ckpt = _checkpoint(request.init, plugins, request.progress)
    if ckpt is None:
        raise TpError("tp finetune needs a RECIPE or --init CHECKPOINT",
                      hint="tp finetune bert-base --task classification --init runs/bert "
                      "--train train.tsv --dev dev.tsv --out runs/ft")
    raw = run_folder.read_recipe(ckpt)
    if request.task and isinstance(raw.get("finetune"), dict):
        # a new task replaces the saved one (and its fitted labels); the saved finetune options
        # (lr, epochs, ...) still apply, as they do without --task
        raw["finetune"].pop("task", None)
    return build_recipe(raw, plugins.registry, name=str(ckpt), path=ckpt,
                        overrides=request.overrides), ckpt


def run_finetune(request: FinetuneRequest) -> dict[str, Any]:
    """Fine-tune (one run per seed) and return the results (mean and std over seeds)."""
    from tpcli.data import build_tokenizer as load_tokenizer
    from tpcli.train import checkpoint as ckpt_io

    plugins = request.plugins
    assert plugins is not None  # set by tpcli.verbs.finetune
    recipe, ckpt = _recipe_and_init(request, plugins)
    recipe = with_loggers(recipe, "finetune", request.loggers, plugins)  # before any writing
    section = chosen_task(request, recipe)
    if split_task_name(section["name"])[1] == "all":
        return _run_all(request, section, plugins)
    task = make_task(section, plugins)
    if hasattr(task, "bind"):  # a task that reads the recipe (text2text's layout, the pooling)
        task.bind(recipe, plugins.registry)
    check_used(request, recipe, task, section["name"])
    tokenizer = (ckpt_io.load_tokenizer(ckpt, recipe, plugins) if ckpt is not None
                 else load_tokenizer(recipe, plugins))
    splits: Splits = task.load(request.data)
    if not splits.train:
        raise DataError("no training examples", hint="pass --train FILE (or the task's data)")
    if not splits.dev:
        raise DataError("no dev set to evaluate on",
                        hint="pass --dev FILE: the best checkpoint is chosen on it")
    task.fit(splits.train)
    for name, examples in splits.dev.items():
        task.check(name, examples)
    recipe = with_target(recipe, task.target(), {**section, **task.state()}, plugins)
    out = Path(request.out)
    run_folder.claim(out, resume=None)
    run_folder.prepare(out)
    seeds = [recipe.finetune.seed + i for i in range(request.seeds)]
    runs = [_one_run(request, recipe, task, splits, tokenizer, ckpt,
                     out / f"seed-{s}" if len(seeds) > 1 else out, s) for s in seeds]
    result = {"task": section["name"], "metric": runs[0]["metric"], "seeds": seeds,
              "runs": runs, "dev": _aggregate([r["dev"] for r in runs]), "out": str(out)}
    write_text(out / "results.json", json.dumps(result, indent=1))
    return result


def _run_all(request: FinetuneRequest, section: dict[str, Any], plugins: Plugins
             ) -> dict[str, Any]:
    """`glue/all`: every variant of the task, each in OUT/<variant>, and the task's summary
    row (the paper's table) when it has one."""
    import dataclasses

    name = split_task_name(section["name"])[0]
    cls = plugins.registry.get("task", name)
    variants = getattr(cls, "VARIANTS", None)
    if not variants:
        raise TpError(f"task {name} has no variants to run with {name}/all",
                      hint=f"name the task alone: --task {name}")
    out = Path(request.out)
    run_folder.claim(out, resume=None)
    run_folder.prepare(out)
    results = {v: run_finetune(dataclasses.replace(
        request, task={**section, "name": f"{name}/{v}"}, out=out / v)) for v in variants}
    summary = getattr(cls, "summary", None)
    columns, row = summary(results) if summary is not None else ([], [])
    combined = {"task": f"{name}/all", "tasks": results, "table": {"columns": columns,
                                                                  "row": row}, "out": str(out)}
    write_text(out / "results.json", json.dumps(combined, indent=1))
    return combined


def _aggregate(devs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per dev set and metric: the mean, and the sample standard deviation over seeds."""
    out: dict[str, dict[str, Any]] = {}
    for name in devs[0]:
        out[name] = {}
        for metric in devs[0][name]:
            vals = [d[name][metric] for d in devs]
            out[name][metric] = {"mean": statistics.fmean(vals),
                                 "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return out


def _one_run(request: FinetuneRequest, recipe: Any, task: Any, splits: Splits, tokenizer: Any,
             ckpt: Path | None, out: Path, seed: int) -> dict[str, Any]:
    from tpcli.model import build_model, vocabulary
    from tpcli.train import checkpoint as ckpt_io
    from tpcli.train.loop import Setup, train
    from tpcli.train.strategies import make_strategy
    from tpcli.train.strategy import Dist

    plugins = request.plugins
    assert plugins is not None
    opts = recipe.finetune
    own = getattr(task, "train_dataset", None)  # augmented on the fly (images), or encoded rows
    if own is not None:
        data = own(splits.train, seed)
    else:
        rows = task.encode(splits.train, tokenizer, opts.max_length)
        data = MemoryDataset(rows, task.batch_keys(rows, tokenizer), seed)
    per_epoch = max(1, math.ceil(len(data) / opts.batch_size))
    steps = opts.steps or max(1, math.ceil(opts.epochs * per_epoch))
    run_opts = opts.model_copy(update={"steps": steps, "seed": seed})
    torch.manual_seed(seed)
    model = build_model(recipe.model, plugins.registry, *vocabulary(tokenizer))
    report = (init_from(model, ckpt, task.head_sources()) if ckpt is not None else
              {"checkpoint": None, "fresh": list(model.state_dict()), "carried": {},
               "unused": []})
    dist = Dist(run_opts.device)
    try:
        strategy = make_strategy(run_opts, dist)
        run_folder.prepare(out)
        run_folder.write_recipe(out, recipe.raw)
        write_text(out / "init.json", json.dumps(report, indent=1))
        dev = {name: (exs, task.encode(exs, tokenizer, opts.max_length))
               for name, exs in splits.dev.items()}
        target = recipe.model.targets[0].name
        evaluator = Evaluator(task, target, dev, tokenizer, run_opts,
                              opts.eval_every or per_epoch, out, dist.device,
                              lambda step, m: plugins.hook.tp_on_log(step=step, metrics=m))
        torch.manual_seed(seed)  # the dropout stream of this seed
        summary = train(Setup(recipe, tokenizer, model, data,
                              out, plugins, request.progress, 0, None, dist, strategy,
                              run_opts, evaluator))
        best = ckpt_io.find_checkpoint(out / "best")
        ckpt_io.load_weights(model, ckpt_io.read_weights(best), str(best))
        model.to(dist.device)
        scores: dict[str, dict[str, float]] = {}
        sets = {**dev, **{name: (exs, task.encode(exs, tokenizer, opts.max_length,
                                                  with_labels=False))
                          for name, exs in splits.test.items()}}
        for name, (exs, enc) in sets.items():
            preds = predict(model, task, target, exs, enc, tokenizer, dist.device,
                            opts.eval_batch_size, opts.precision)
            write_jsonl(out / "predictions" / f"{name}.jsonl", preds)
            if name in dev:
                scores[name] = task.evaluate(preds, exs)
    finally:
        dist.close()
    return {"seed": seed, "steps": summary["steps"], "best_step": evaluator.best_step,
            "metric": evaluator.metric, "dev": scores, "fresh": report["fresh"],
            "carried": report["carried"], "unused": len(report["unused"]),
            "checkpoint": str(best)}


def infer_section(request: InferRequest, saved: Any, where: Path) -> dict[str, Any]:
    """The task `tp infer` runs: `--task NAME` (a task needing no fine-tuning, such as zero-shot
    classification with a pre-trained CLIP; the saved options and fitted state when it names the
    checkpoint's own task), else the checkpoint's `finetune.task`; then each
    `finetune.task.OPTION=VALUE` override, as `tp finetune` takes task options."""
    from tpcli.recipes.config import parse_override

    options: dict[str, Any] = {}
    for text in request.overrides:
        path, value = parse_override(text)
        if len(path) != 3 or path[:2] != ["finetune", "task"] or path[2] == "name":
            raise TpError(f"override {text}: tp infer takes the task's options only, as "
                          "finetune.task.OPTION=VALUE",
                          hint="name the task with --task NAME; `tp modules task NAME` lists "
                          "its options")
        options[path[2]] = value
    if request.task is None and saved is None:
        raise CheckpointError(f"{where} is not a fine-tuned checkpoint (its recipe has no "
                              "finetune.task)",
                              hint="run `tp finetune` first, and pass its run folder or its "
                              "best/ checkpoint; or name a task that needs no fine-tuning with "
                              "--task NAME (`tp modules task` lists them)")
    section = task_section(saved if request.task is None else request.task)
    if saved is not None and request.task is not None:
        own = task_section(saved)
        if own["name"] == section["name"]:  # the checkpoint's own task: its fitted state too
            section = own
    return {**section, **options}


def run_infer(request: InferRequest) -> dict[str, Any]:
    """Predictions of a fine-tuned checkpoint for every example of `request.input`, written to
    `request.out` as JSONL; the task's metrics too when the input has gold answers."""
    from tpcli.train.checkpoint import load_checkpoint

    plugins = request.plugins
    assert plugins is not None  # set by tpcli.verbs.infer
    loaded = load_checkpoint(Path(request.checkpoint), plugins)
    task = make_task(infer_section(request, loaded.recipe.finetune.task, loaded.path), plugins)
    if hasattr(task, "bind"):
        task.bind(loaded.recipe, plugins.registry)
    examples = task.load(TaskData(test=request.input)).test
    exs = next(iter(examples.values()))
    labelled = all(e.label is not None for e in exs)
    if labelled:
        task.check(request.input, exs)
    rows = task.encode(exs, loaded.tokenizer, loaded.recipe.finetune.max_length,
                       with_labels=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = loaded.model.to(device)
    target = loaded.recipe.model.targets[0].name
    preds = predict(model, task, target, exs, rows, loaded.tokenizer, device, request.batch_size)
    write = getattr(task, "write", None)  # a task with its own output format (embeddings: .npy)
    extra: dict[str, Any] = {}
    if write is not None:
        extra = write(preds, Path(request.out)) or {}
    else:
        write_jsonl(Path(request.out), preds)
    result: dict[str, Any] = {"examples": len(preds), "out": str(request.out), **extra}
    if labelled:
        result["metrics"] = task.evaluate(preds, exs)
    return result
