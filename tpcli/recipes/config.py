"""Recipes: YAML/JSON loading, the paper's vocabulary, `a.b.c=value` overrides, validation.

A recipe is a folder holding `recipe.yaml` with the sections `model`, `data`, `pretrain` and
(optional) `finetune`.
The model section speaks the paper's words and accepts its JSON as written::

    embedding: [word, pos, seg]          # or {word: {}, pos: {max_length: 512}, seg: {}}
    encoder: transformer                 # or {name: transformer, layers: 12}
    target: [mlm, sp]                    # or {mlm: {weight: 1.0}, sp: {}}

Lists and bare names are first normalised to mappings (so `model.embedding.pos.max_length=1024`
and `model.encoder.layers=6` are valid overrides), overrides are applied, and then every module is
looked up in the registry and its options checked against its `Config`. All problems are
collected and raised together as one `ConfigError`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tpcli.errors import ConfigError, Problem, RegistryError, TpError, clip
from tpcli.recipes.options import FinetuneOptions, ModelOptions, PretrainOptions  # importable here
from tpcli.plugins.registry import LIST_COMMAND, Registry, closest, unknown_name_message

STACK_KEYS = ("embedding", "encoder", "pooling")
# model-wide options a stream of a dual-stream model may set for itself (CLIP: a 512-wide text
# stream beside a 768-wide image stream, the image stream's embeddings normalised, the text's not)
STREAM_OPTION_KEYS = ("hidden_size", "norm_eps", "embedding_norm", "dropout")
MODULE_LIST_KEYS = ("embedding", "tgt_embedding", "target")  # several modules, in order
MODULE_ONE_KEYS = ("encoder", "decoder", "pooling")  # one module
KIND_OF = {
    "embedding": "embedding",
    "tgt_embedding": "embedding",
    "encoder": "encoder",
    "decoder": "decoder",
    "pooling": "pooling",
    "target": "target",
}
SECTIONS = ("model", "data", "pretrain", "finetune")


@dataclass
class ModuleSpec:
    kind: str
    name: str
    options: Any  # the module's validated Config instance


@dataclass
class StackSpec:
    embedding: list[ModuleSpec]
    encoder: ModuleSpec | None
    pooling: ModuleSpec | None = None
    options: dict[str, Any] = field(default_factory=dict)  # this stream's STREAM_OPTION_KEYS


@dataclass
class ModelSpec:
    options: ModelOptions
    stacks: dict[str, StackSpec]  # {"": stack} or {"stream_0": ..., "stream_1": ...}
    tgt_embedding: list[ModuleSpec] = field(default_factory=list)
    decoder: ModuleSpec | None = None
    targets: list[ModuleSpec] = field(default_factory=list)

    @property
    def dual(self) -> bool:
        return "stream_0" in self.stacks


@dataclass
class Recipe:
    name: str
    path: Path | None  # the recipe folder (relative paths in options resolve against it)
    raw: dict[str, Any]  # normalised, overrides applied: what was validated, saved with runs
    model: ModelSpec
    tokenizer: ModuleSpec | None  # None: a model without text (images, audio features)
    processor: ModuleSpec
    pretrain: PretrainOptions
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)

    @property
    def base_dir(self) -> Path:
        return self.path if self.path is not None else Path.cwd()


# ---------------------------------------------------------------- loading and normalising


def read_recipe_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TpError(f"cannot read recipe {path}: {e.strerror}") from e
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise TpError(f"recipe {path} is not valid YAML/JSON: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TpError(f"recipe {path} must be a mapping with sections {', '.join(SECTIONS)}")
    return data


def _as_named(value: Any) -> Any:
    """`"transformer"` -> `{"name": "transformer"}`; a mapping is kept."""
    return {"name": value} if isinstance(value, str) else value


def _as_ordered(value: Any) -> Any:
    """`["word", {"pos": {...}}]` / `"word"` -> `{"word": {}, "pos": {...}}`."""
    if isinstance(value, str):
        return {value: {}}
    if isinstance(value, list):
        out: dict[str, Any] = {}
        for item in value:
            if isinstance(item, str):
                name, opts = item, {}
            elif isinstance(item, dict) and "name" in item:
                opts = dict(item)
                name = str(opts.pop("name"))
            elif isinstance(item, dict) and len(item) == 1:
                (k, v), = item.items()
                name, opts = str(k), (v if v is not None else {})
            else:
                return value  # left for validation to report
            if name in out:
                return value  # a module listed twice: left for validation to report
            out[name] = opts
        return out
    if isinstance(value, dict):
        return {k: (v if v is not None else {}) for k, v in value.items()}
    return value


def _item_name(item: Any) -> Any:
    """The module name of one list item (`word`, `{pos: {...}}`, `{name: pos, ...}`)."""
    if isinstance(item, dict):
        return item.get("name", next(iter(item), None))
    return item


def _normalise_stack(section: dict[str, Any]) -> None:
    for key in MODULE_LIST_KEYS:
        if key in section:
            section[key] = _as_ordered(section[key])
    for key in MODULE_ONE_KEYS:
        if key in section:
            section[key] = _as_named(section[key])


def normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """The paper's shorthand to the canonical mapping form (idempotent)."""
    raw = copy.deepcopy(raw)
    model = raw.get("model")
    if isinstance(model, dict):
        _normalise_stack(model)
        for stream in ("stream_0", "stream_1"):
            if isinstance(model.get(stream), dict):
                _normalise_stack(model[stream])
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("tokenizer", "processor"):
            if key in data:
                data[key] = _as_named(data[key])
    return raw


MAX_OVERRIDE_DEPTH = 16  # recipes nest a few levels (model.encoder.layers); more is a typo
MAX_SHOWN = 60  # characters of an override echoed back in an error


def shown(text: str) -> str:
    """An override as errors quote it: a pasted 100k-character line is not echoed whole."""
    return repr(text) if len(text) <= MAX_SHOWN else repr(clip(text, MAX_SHOWN))


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text or text.startswith("="):
        raise TpError(
            f"override {shown(text)}: not of the form a.b.c=value",
            hint="e.g. pretrain.lr=2e-4 or model.encoder.layers=6",
        )
    key, _, value = text.partition("=")
    path = key.strip().split(".")
    if len(path) > MAX_OVERRIDE_DEPTH or any(not p for p in path):
        why = (f"{len(path)} levels deep (recipes nest at most {MAX_OVERRIDE_DEPTH})"
               if len(path) > MAX_OVERRIDE_DEPTH else "an empty name between dots")
        raise TpError(f"override {shown(text)}: its key has {why}",
                      hint="write the dotted path of one option, e.g. model.encoder.layers=6 "
                      "(list them with `tp modules`)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    except (ValueError, RecursionError) as e:  # an integer of thousands of digits, [[[[...]]]]
        raise TpError(f"override {shown(text)}: its value cannot be read as a number or YAML "
                      f"({type(e).__name__}: {str(e)[:120]})",
                      hint="give a plain value, e.g. pretrain.steps=1000") from None
    for cast in (int, float):  # YAML 1.1 reads 2e-4 as a string
        if isinstance(parsed, str):
            try:
                parsed = cast(parsed)
            except ValueError:
                pass
    return path, parsed


def apply_overrides(
    raw: dict[str, Any], overrides: list[str], problems: list[Problem] | None = None
) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a normalised recipe. A bad override raises a TpError, or
    is appended to `problems` when given (so it is shown with the validation problems)."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        try:
            _apply_one(raw, text)
        except TpError as e:
            if problems is None:
                raise
            problems.append(Problem("", e.message + (f" (hint: {e.hint})" if e.hint else "")))
    return raw


def _apply_one(raw: dict[str, Any], text: str) -> None:
    path, value = parse_override(text)
    node = raw
    for i, part in enumerate(path[:-1]):
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            where = ".".join(path[: i + 1])
            if nxt is not None:
                raise TpError(f"override {shown(text)}: {where} is {str(nxt)[:80]!r}, not a section "
                              "with options")
            parent = path[i - 1] if i else ""
            if parent in MODULE_LIST_KEYS:  # an option override must not add a module silently
                have = [str(k) for k in node]
                guess = closest(part, have)
                raise TpError(
                    f"override {shown(text)}: the recipe has no {KIND_OF[parent]} {part!r}"
                    + (f"; did you mean {guess!r}?" if guess else "")
                    + f" (it has: {', '.join(have) or 'none'})",
                    hint=f"to add it, override the list: {'.'.join(path[:i])}=[...]",
                )
            nxt = node[part] = {}
        node = nxt
    node[path[-1]] = value


# ---------------------------------------------------------------- validation


def _pydantic_problems(prefix: str, err: ValidationError, cls: Any, listing: str) -> list[Problem]:
    out = []
    fields = list(getattr(cls, "model_fields", {}))
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        path = f"{prefix}.{loc}" if loc else prefix
        key = str(e["loc"][-1]) if e["loc"] else ""
        if e["type"] == "extra_forbidden":
            msg = f"unknown option {clip(key)!r}"
            guess = closest(key, fields)
            if guess:
                msg += f"; did you mean {guess!r}?"
            msg += f" (options: {', '.join(fields) or 'none'}; see `{listing}`)"
        elif not e["loc"]:  # a check across options (a model validator): the input is all of them
            msg = e["msg"].removeprefix("Value error, ")
        else:
            msg = f"{e.get('input')!r} is not valid: {e['msg'].removeprefix('Value error, ')}"
            if "literal" in e["type"] and "expected" in e.get("ctx", {}):
                msg = f"{e.get('input')!r} is not one of {e['ctx']['expected']}"
        out.append(Problem(path, msg))
    return out


def validate_options(
    cls: Any, values: Any, path: str, listing: str, problems: list[Problem]
) -> Any:
    if not isinstance(values, dict):
        problems.append(Problem(path, f"expected a mapping of options, got {values!r}"))
        return None
    try:
        return cls(**values)
    except ValidationError as e:
        problems.extend(_pydantic_problems(path, e, cls, listing))
        return None


def _module(
    registry: Registry, kind: str, name: str, opts: Any, path: str, problems: list[Problem]
) -> ModuleSpec | None:
    if not registry.has(kind, name):
        problems.append(Problem(path, unknown_name_message(kind, name, registry.names(kind))))
        return None
    try:  # the Config lives in the module's file: a broken plugin is one problem, not a crash
        cfg_cls = registry.entry(kind, name).config_cls
    except RegistryError as e:
        problems.append(Problem(path, e.message))
        return None
    listing = f"{LIST_COMMAND[kind]} {name}"
    options = validate_options(cfg_cls, opts, path, listing, problems) if cfg_cls else None
    if cfg_cls is None and opts:
        problems.append(Problem(path, f"{kind} {name!r} takes no options"))
    return ModuleSpec(kind, name, options)


def _modules_list(
    registry: Registry, section: dict[str, Any], key: str, path: str, problems: list[Problem]
) -> list[ModuleSpec]:
    value = section.get(key)
    if value is None:
        return []
    if not isinstance(value, dict):
        names = [_item_name(v) for v in (value if isinstance(value, list) else [])]
        twice = sorted({str(n) for n in names if names.count(n) > 1})
        msg = (f"{', '.join(map(repr, twice))} listed twice; a module appears once per component"
               if twice else f"expected a list of module names, got {value!r}")
        problems.append(Problem(f"{path}.{key}", msg))
        return []
    specs = []
    for name, opts in value.items():
        spec = _module(registry, KIND_OF[key], name, opts, f"{path}.{key}.{name}", problems)
        if spec:
            specs.append(spec)
    return specs


def _module_one(
    registry: Registry, section: dict[str, Any], key: str, path: str, problems: list[Problem]
) -> ModuleSpec | None:
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        problems.append(Problem(f"{path}.{key}", f"expected a module name, got {value!r}"))
        return None
    opts = {k: v for k, v in value.items() if k != "name"}
    return _module(registry, KIND_OF[key], value["name"], opts, f"{path}.{key}", problems)


def _stack(
    registry: Registry, section: dict[str, Any], path: str, problems: list[Problem],
    model_values: dict[str, Any] | None = None,
) -> StackSpec:
    """One stack; `model_values` (the model-wide options, for a stream of a dual-stream model)
    allows the STREAM_OPTION_KEYS, which override them for this stream."""
    allowed = STACK_KEYS + (STREAM_OPTION_KEYS if model_values is not None else ())
    for key in section:
        if key not in allowed:
            keys = ", ".join(allowed)
            problems.append(Problem(f"{path}.{key}", f"unknown key; a stream has {keys}"))
    if not section.get("embedding"):
        problems.append(Problem(f"{path}.embedding", "missing: name at least one embedding"))
    own = {k: section[k] for k in STREAM_OPTION_KEYS if k in section}
    if own and model_values is not None:  # checked as the model-wide values are
        before = len(problems)
        validate_options(ModelOptions, {**model_values, **own}, path, "tp modules model",
                         problems)
        problems[before:] = [p for p in problems[before:]
                             if p.path.split(".")[-1] in own]  # the model's own are reported once
    return StackSpec(
        _modules_list(registry, section, "embedding", path, problems),
        _module_one(registry, section, "encoder", path, problems),
        _module_one(registry, section, "pooling", path, problems),
        own,
    )


def _model(registry: Registry, model: dict[str, Any], problems: list[Problem]) -> ModelSpec:
    module_keys = set(KIND_OF) | {"stream_0", "stream_1"}
    option_values = {k: v for k, v in model.items() if k not in module_keys}
    options = validate_options(ModelOptions, option_values, "model", "tp modules model", problems)
    dual = "stream_0" in model or "stream_1" in model
    stacks: dict[str, StackSpec] = {}
    if dual:
        for key in ("embedding", "encoder", "pooling"):
            if key in model:
                problems.append(Problem(f"model.{key}", "a dual-stream model puts it in stream_0/1"))
        for stream in ("stream_0", "stream_1"):
            sec = model.get(stream)
            if not isinstance(sec, dict):
                problems.append(Problem(f"model.{stream}", "missing: a dual-stream model has both"))
                continue
            stacks[stream] = _stack(registry, sec, f"model.{stream}", problems, option_values)
        if (model.get("tie_streams") is True and len(stacks) == 2
                and stacks["stream_0"].options != stacks["stream_1"].options):
            problems.append(Problem("model.tie_streams", "tied streams are one stack, so they "
                                    "cannot set different hidden_size / norm_eps / "
                                    "embedding_norm / dropout; set them on the model instead"))
    else:
        stack_sec = {k: model[k] for k in STACK_KEYS if k in model}
        stacks[""] = _stack(registry, stack_sec, "model", problems)
        if model.get("stream_norms") is True:
            problems.append(Problem("model.stream_norms", "only a dual-stream model (stream_0 "
                                    "and stream_1) has streams to normalise; remove it"))
    tgt_emb = _modules_list(registry, model, "tgt_embedding", "model", problems)
    decoder = _module_one(registry, model, "decoder", "model", problems)
    if ("decoder" in model) != ("tgt_embedding" in model):
        problems.append(Problem("model", "decoder and tgt_embedding come together"))
    if not model.get("target"):
        problems.append(Problem("model.target", "missing: name at least one target"))
    targets = _modules_list(registry, model, "target", "model", problems)
    return ModelSpec(options or ModelOptions(), stacks, tgt_emb, decoder, targets)


def build_recipe(
    raw: dict[str, Any],
    registry: Registry,
    *,
    name: str = "recipe",
    path: Path | None = None,
    overrides: list[str] | None = None,
) -> Recipe:
    """Normalise, apply overrides, validate everything; raise one ConfigError with all problems."""
    problems: list[Problem] = []
    raw = normalise(apply_overrides(normalise(raw), overrides or [], problems))
    for key in raw:
        if key not in SECTIONS:
            guess = closest(str(key), list(SECTIONS))
            hint = f"; did you mean {guess!r}?" if guess else ""
            sections = ", ".join(SECTIONS)
            problems.append(Problem(str(key), f"unknown section{hint} (sections: {sections})"))
    model_sec = raw.get("model")
    if not isinstance(model_sec, dict):
        problems.append(Problem("model", "missing: the model section names the modules"))
        model_sec = {}
    model = _model(registry, model_sec, problems)
    data = raw.get("data") or {}
    if not isinstance(data, dict):
        problems.append(Problem("data", f"expected a mapping, got {data!r}"))
        data = {}
    for key in data:
        if key not in ("tokenizer", "processor"):
            problems.append(Problem(f"data.{key}", "unknown key; data has tokenizer, processor"))
    tok = proc = None
    for key, kind in (("tokenizer", "tokenizer"), ("processor", "processor")):
        if key == "tokenizer" and data.get(key) is None:
            continue  # optional: a recipe without text has no tokenizer
        if key not in data:
            problems.append(Problem(f"data.{key}", f"missing: name a {kind} ({LIST_COMMAND[kind]})"))
            continue
        spec = None
        value = data[key]
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            opts = {k: v for k, v in value.items() if k != "name"}
            spec = _module(registry, kind, value["name"], opts, f"data.{key}", problems)
        else:
            problems.append(Problem(f"data.{key}", f"expected a {kind} name, got {value!r}"))
        tok, proc = (spec, proc) if key == "tokenizer" else (tok, spec)
    pretrain_vals = raw.get("pretrain") or {}
    pretrain = validate_options(
        PretrainOptions, pretrain_vals, "pretrain", "tp modules pretrain", problems
    )
    finetune = validate_options(
        FinetuneOptions, raw.get("finetune") or {}, "finetune", "tp modules finetune", problems
    )
    if problems:
        raise ConfigError(f"recipe {name}", problems)
    # no problems above
    assert proc is not None and pretrain is not None and finetune is not None
    return Recipe(name, path, raw, model, tok, proc, pretrain, finetune)
