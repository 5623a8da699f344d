"""`tp plugins new NAME`: write a third-party plugin distribution that works as written.

What it writes into DIR/NAME (a new folder, built in a temporary sibling and renamed into
place, so a failure leaves nothing behind):

    pyproject.toml          the `[project.entry-points.tp]` table, depends on tpcli
    README.md               install, test, use in a recipe, publish
    tp_NAME/plugin.py       the register hooks (lazy "module:Class" strings)
    tp_NAME/<module>.py     one file per kind, named after the registry name: a real, minimal
                            module with its pydantic Config and docstring
    tests/conftest.py       one line: tp's module contract over this distribution's modules
    tests/test_<module>.py  behaviour of each module (a loss that falls, round trips)
    tests/test_recipe.py    the example recipe resolves and uses the modules
    recipes/NAME-tiny/      recipe.yaml (+ a tiny vocabulary and corpus) using them

The templates are Python strings (`modules`, `data`, `project`, `tests` here), so they ship in
tpcli's wheel as code. The default kind is `encoder`; with several kinds each registry name
gets the kind as suffix (`my_thing_encoder`, `my_thing_target`) so the files differ.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tpcli.errors import TpError
from tpcli.scaffold import data, modules, project, tests

KINDS = ("embedding", "encoder", "target", "task", "tokenizer", "processor", "converter")
DEFAULT_KIND = "encoder"
MODEL_KINDS = ("embedding", "encoder", "target")
# PEP 508 distribution name
DIST_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
MODULE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
TEMPLATES = {"embedding": modules.EMBEDDING, "encoder": modules.ENCODER,
             "target": modules.TARGET, "tokenizer": data.TOKENIZER,
             "processor": data.PROCESSOR, "task": data.TASK, "converter": data.CONVERTER}
SYMBOL = {"embedding": "__CLASS__Embedding", "encoder": "__CLASS__Encoder",
          "target": "__CLASS__Target", "tokenizer": "__CLASS__Tokenizer",
          "processor": "__CLASS__Processor", "task": "__CLASS__Task", "converter": "CONVERTER"}


def names(dist: str, module_name: str | None = None) -> dict[str, str]:
    """The names derived from a distribution name: `my-thing` -> package `tp_my_thing`,
    registry name `my_thing`, class stem `MyThing`, plugin (entry point) `my-thing`."""
    if not DIST_NAME.match(dist):
        raise TpError(f"{dist!r} is not a valid distribution name",
                      hint="use letters, digits, '-', '_' and '.', starting and ending with a "
                      "letter or digit, e.g. tp plugins new my-encoder")
    norm = re.sub(r"[-_.]+", "_", dist).lower()
    if norm[0].isdigit():
        norm = f"tp_{norm}"
    package = norm if norm.startswith("tp_") else f"tp_{norm}"
    base = module_name if module_name is not None else (norm.removeprefix("tp_") or norm)
    if not MODULE_NAME.match(base) or base in ("plugin", "tests"):
        raise TpError(f"{base!r} cannot be a registry and module name",
                      hint="pass --module-name with lower-case letters, digits and '_', "
                      "starting with a letter (not 'plugin' or 'tests')")
    stem = "".join(part.capitalize() for part in base.split("_") if part)
    return {"dist": dist, "package": package, "name": base, "class": stem,
            "plugin": re.sub(r"[-_.]+", "-", dist).lower()}


def check_kinds(kinds: list[str]) -> list[str]:
    """The kinds asked for, de-duplicated in order; the default when none; an error naming
    the valid ones for an unknown one."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise TpError(f"unknown kind {unknown[0]!r} for tp plugins new",
                      hint=f"pass --kind one or more times, from: {', '.join(KINDS)}")
    return list(dict.fromkeys(kinds)) or [DEFAULT_KIND]


def render(text: str, subs: dict[str, str]) -> str:
    for key, value in subs.items():
        text = text.replace(key, value)
    return text


def plan(n: dict[str, str], kinds: list[str]) -> dict[str, str]:
    """Relative path -> file text of the whole distribution."""
    several = len(kinds) > 1
    mods = {k: (f"{n['name']}_{k}" if several else n["name"]) for k in kinds}
    base = {"__DIST__": n["dist"], "__PKG__": n["package"], "__PLUGIN__": n["plugin"]}
    pkg = n["package"]
    files = {f"{pkg}/__init__.py": render(project.INIT, base),
             "tests/conftest.py": project.CONFTEST}
    hooks: dict[str, list[str]] = {}
    for k in kinds:
        subs = {**base, "__NAME__": mods[k], "__CLASS__": n["class"], "__KIND__": k}
        symbol = render(SYMBOL[k], subs)
        files[f"{pkg}/{mods[k]}.py"] = render(TEMPLATES[k], subs)
        hook, call = project.HOOKS[k]
        line = render(call, {**subs, "__REF__": f"{pkg}.{mods[k]}:{symbol}"})
        if len(line) > 94:  # 100 columns with its indent: the reference on a line of its own
            head, _, ref = line.rpartition(", ")
            line = f"{head},\n             {ref}"
        hooks.setdefault(hook, []).append(line)
        test = tests.HEAD + (tests.TRAIN + tests.MODEL_TESTS[k] if k in MODEL_KINDS
                             else tests.OTHER_TESTS[k])
        uses_torch = "import torch\n" if "torch." in test.replace("import torch\n", "") else ""
        files[f"tests/test_{mods[k]}.py"] = render(test, {**subs, "__SYMBOL__": symbol,
                                                          "__TORCH__": uses_torch})
    files[f"{pkg}/plugin.py"] = project.PLUGIN_HEAD + "".join(
        f"\n\n@hookimpl\ndef {hook}(register: Callable[..., None]) -> None:\n"
        + "".join(f"    {c}\n" for c in calls) for hook, calls in hooks.items())
    files.update(_recipe(n, kinds, mods, base))
    return files


def _recipe(n: dict[str, str], kinds: list[str], mods: dict[str, str],
            base: dict[str, str]) -> dict[str, str]:
    """The example recipe, the recipe test and README.md: the plugin's model kinds (and its
    tokenizer or processor) in a tiny model, tp's built-in modules for the rest."""
    import yaml

    rname = f"{n['name'].replace('_', '-')}-tiny"
    m = {k: mods[k] for k in kinds}
    model = {
        "embedding": [m.get("embedding", "word"), "pos"],
        "encoder": ({"name": m["encoder"], "layers": 2, "ffn_size": 64} if "encoder" in m else
                    {"name": "transformer", "layers": 1, "heads": 2, "ffn_size": 64,
                     "mask": "causal"}),
        "target": [m.get("target", "lm")],
        "hidden_size": 32,
    }
    tokenizer = ({"name": m["tokenizer"]} if "tokenizer" in m else
                 {"name": "wordpiece", "vocab": "vocab.txt"})
    processor = {"name": m.get("processor", "lm"), "seq_length": 32}
    raw = {"model": model, "data": {"tokenizer": tokenizer, "processor": processor},
           "pretrain": {"steps": 20, "batch_size": 4, "lr": 1e-3, "log_every": 5}}
    text = (f"# A tiny model using {n['dist']}'s modules: "
            "tp recipes show / tp pretrain this folder\n"
            + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None))
    files = {f"recipes/{rname}/recipe.yaml": text, f"recipes/{rname}/corpus.txt": project.CORPUS}
    if "tokenizer" not in m:
        files[f"recipes/{rname}/vocab.txt"] = project.VOCAB
    asserts = [f"    assert {model['embedding']!r} == [\n"
               "        next(iter(e)) if isinstance(e, dict) else e for e in model['embedding']]",
               f"    assert model['encoder']['name'] == {model['encoder']['name']!r}",
               f"    assert {model['target'][0]!r} in str(model['target'])",
               f"    assert data['tokenizer']['name'] == {tokenizer['name']!r}",
               f"    assert data['processor']['name'] == {processor['name']!r}"]
    files["tests/test_recipe.py"] = render(tests.RECIPE_TEST, {
        **base, "__RECIPE__": rname, "__ASSERTS__": "\n".join(asserts)})
    table = "\n".join(f"- {k} `{mods[k]}` ({n['package']}/{mods[k]}.py)" for k in kinds)
    extra = "".join(
        render(project.TASK_USE, {"__TASK__": mods["task"]}) if k == "task" else
        render(project.CONVERTER_USE, {"__CONV__": mods["converter"]}) if k == "converter"
        else "" for k in kinds)
    files["README.md"] = render(project.README, {
        **base, "__TABLE__": table, "__RECIPE__": rname, "__RECIPE_YAML__": text,
        "__EXTRA__": extra})
    deps = ['"tpcli"'] + (['"tp-text"'] if "converter" in kinds else [])
    summary = ", ".join(f"{k} {mods[k]}" for k in kinds)
    files["pyproject.toml"] = render(project.PYPROJECT, {
        **base, "__DEPS__": ", ".join(deps), "__SUMMARY__": summary})
    return files


def new_plugin(dist: str, kinds: list[str], folder: Path | None = None,
               module_name: str | None = None) -> dict[str, Any]:
    """Write the distribution `dist` into `folder`/`dist` (default ./`dist`); return
    {dest, package, plugin, modules (kind -> name), files}. Nothing is written on an error."""
    n = names(dist, module_name)
    kinds = check_kinds(kinds)
    dest = (folder if folder is not None else Path.cwd()) / dist
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise TpError(f"{dest} already exists and is not an empty folder",
                      hint="choose another NAME or --dir, or remove that folder first")
    files = plan(n, kinds)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    except OSError as e:
        raise TpError(f"cannot write into {dest.parent}: {e.strerror or e}",
                      hint="choose a writable folder with --dir") from None
    try:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if dest.exists():
            dest.rmdir()  # empty (checked above): the rename replaces it
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    several = len(kinds) > 1
    return {"dest": str(dest), "package": n["package"], "plugin": n["plugin"],
            "modules": {k: (f"{n['name']}_{k}" if several else n["name"]) for k in kinds},
            "files": sorted(files)}
