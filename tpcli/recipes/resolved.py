"""A recipe as it will run (`tp recipes show`), and a built-in recipe copied to edit
(`tp recipes cp`): torchtune's `tune validate` / `tune cp`, which users of recipes know.

`resolved(recipe)` is the validated recipe with every default filled in: each module's options
as its Config holds them, the model-wide, pretrain and finetune sections whole; `build_recipe`
reads it back to the same options (tested for every built-in recipe). It is a view, not a recipe
to run: some modules treat an option the recipe writes differently from its default (a
tokenizer checks a special token it is given against its vocabulary), so a recipe to edit and
run is `tp recipes cp`'s copy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tpcli.errors import TpError
from tpcli.plugins import Plugins
from tpcli.recipes import RECIPE_FILE, builtin_recipes, load_recipe, resolve_recipe
from tpcli.recipes.config import ModuleSpec, Recipe, StackSpec, read_recipe_file
from tpcli.plugins.registry import closest


def _options(spec: ModuleSpec | None) -> dict[str, Any]:
    """A module's validated options, every default filled in (JSON-able values)."""
    if spec is None or spec.options is None:
        return {}
    return spec.options.model_dump(mode="json")


def _stack(stack: StackSpec) -> dict[str, Any]:
    out: dict[str, Any] = dict(stack.options)
    out["embedding"] = {m.name: _options(m) for m in stack.embedding}
    for key, spec in (("encoder", stack.encoder), ("pooling", stack.pooling)):
        if spec is not None:
            out[key] = {"name": spec.name, **_options(spec)}
    return out


def resolved(recipe: Recipe) -> dict[str, Any]:
    """The recipe as it will run: every section, every module's options with their defaults."""
    spec = recipe.model
    model: dict[str, Any] = spec.options.model_dump(mode="json")
    if spec.dual:
        for name, stack in spec.stacks.items():
            model[name] = _stack(stack)
    else:
        model.update(_stack(spec.stacks[""]))
    if spec.decoder is not None:
        model["tgt_embedding"] = {m.name: _options(m) for m in spec.tgt_embedding}
        model["decoder"] = {"name": spec.decoder.name, **_options(spec.decoder)}
    model["target"] = {t.name: _options(t) for t in spec.targets}
    data: dict[str, Any] = {}
    if recipe.tokenizer is not None:
        data["tokenizer"] = {"name": recipe.tokenizer.name, **_options(recipe.tokenizer)}
    data["processor"] = {"name": recipe.processor.name, **_options(recipe.processor)}
    return {"model": model, "data": data, "pretrain": _section(recipe.pretrain),
            "finetune": _section(recipe.finetune)}


def _section(options: Any) -> dict[str, Any]:
    """A pretrain / finetune section whole, less the options that only mean something where
    written (`written_only`: DeepSpeed's under another strategy) and were not."""
    skip = {f for f in options.written_only if f not in options.model_fields_set}
    return {k: v for k, v in options.model_dump(mode="json").items() if k not in skip}


def parameter_count(recipe: Recipe, plugins: Plugins) -> int:
    """Parameters of the recipe's model (shared ones once), built on the meta device: no memory,
    no initialisation. The vocabulary is the recipe's tokenizer's."""
    import torch

    from tpcli.data import build_tokenizer
    from tpcli.model import build_model, count_params, vocabulary

    vocab, special = vocabulary(build_tokenizer(recipe, plugins))
    with torch.device("meta"):
        model = build_model(recipe.model, plugins.registry, vocab, special)
    return count_params(model)


def show(ref: str, overrides: list[str], plugins: Plugins) -> dict[str, Any]:
    """`tp recipes show`: {name, source, recipe (resolved, the files it reads named by the
    absolute paths that are read), parameters}."""
    recipe = load_recipe(ref, overrides, plugins)
    source = resolve_recipe(ref, plugins)[2].resolve()  # the file read (a folder's recipe.yaml)
    return {"name": recipe.name, "source": str(source),
            "recipe": _absolute(resolved(recipe), recipe.base_dir),
            "parameters": parameter_count(recipe, plugins)}


def _absolute(value: Any, folder: Path) -> Any:
    """`value` with every string that names a file relative to `folder` made absolute."""
    if isinstance(value, dict):
        return {k: _absolute(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_absolute(v, folder) for v in value]
    return str((folder / value).resolve()) if _relative_files(value, folder) else value


def _relative_files(value: Any, folder: Path) -> set[str]:
    """The strings of a raw recipe that name a file relative to `folder` (a tokenizer's
    `../_tokenizers/...`): a copy elsewhere must name them absolutely."""
    if isinstance(value, dict):
        return set().union(*(_relative_files(v, folder) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_relative_files(v, folder) for v in value))
    if (isinstance(value, str) and value and not os.path.isabs(value) and ":" not in value
            and "\n" not in value and (folder / value).is_file()):
        return {value}
    return set()


def copy_recipe(name: str, dest: Path, plugins: Plugins) -> dict[str, Any]:
    """`tp recipes cp NAME DEST`: the built-in recipe's folder copied to DEST (created; an
    existing non-empty DEST is refused), files it names relative to its folder rewritten as
    absolute paths, so `tp pretrain DEST` runs it as it was. Written to a temporary folder
    beside DEST and renamed: nothing half-copied is left."""
    builtins = builtin_recipes(plugins)
    if name not in builtins:
        guess = closest(name, list(builtins))
        raise TpError(f"no built-in recipe named {name!r}"
                      + (f"; did you mean {guess!r}?" if guess else ""),
                      hint=f"built-in recipes: {', '.join(builtins)} (`tp recipes`)")
    src = builtins[name]
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise TpError(f"{dest} already exists and is not an empty folder",
                      hint="name a new folder: tp recipes cp copies the whole recipe folder "
                      "into it")
    text = (src / RECIPE_FILE).read_text(encoding="utf-8")
    rewritten = sorted(_relative_files(read_recipe_file(src / RECIPE_FILE), src))
    for rel in rewritten:  # in the text, so the recipe's comments stay
        text = text.replace(rel, str((src / rel).resolve()))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    except OSError as e:
        raise TpError(f"cannot create {dest}: {e.strerror}",
                      hint="name a folder in a place you can write to") from e
    try:
        files = []
        for f in sorted(src.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.suffix != ".pyc":
                shutil.copy2(f, tmp / f.name)
                files.append(f.name)
        (tmp / RECIPE_FILE).write_text(text, encoding="utf-8")
        if dest.exists():
            dest.rmdir()  # empty: checked above
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    load_recipe(str(dest), [], plugins)  # the copy validates as the original did
    return {"name": name, "source": str(src), "dest": str(dest), "files": files,
            "rewritten": rewritten}
