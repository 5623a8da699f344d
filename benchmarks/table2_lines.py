"""The paper's Table 2, measured: the lines of code each model added to tp.

TencentPretrain's paper (Table 2) counts the lines a toolkit needs to add a model once BERT is
there: Hugging Face Transformers +696 (RoBERTa), +688 (GPT-2), +1008 (T5); TencentPretrain +0 for
all three, because those models are new combinations of modules it already has. This script
measures the same thing for tp, from the installed registry and the built-in recipes::

    python benchmarks/table2_lines.py            # markdown table on stdout

The rule (what counts as a model's code):

* A model is its built-in recipe (recipes/NAME/recipe.yaml). The recipe is configuration: 0 lines.
  Python files inside the recipe folder, if any, are that model's code and all count.
* The recipe names modules (embeddings, encoder, target embeddings, decoder, targets, pooling).
  Each is looked up in the registry and its source file found (registry entry -> class ->
  `inspect.getsourcefile`). The lines of a module's file count for a model when the module is
  *model-specific*: neither the base recipe (bert-base) nor the toolkit's catalogue of generic
  modules (`GENERIC` below: the modules the issue lists as tp's building blocks, each usable by
  many models) has it. So a model that is a new combination of existing modules adds 0 lines; a
  module registered only to make one model work is counted against that model, in full.
* Converters (`convert_*.py`), tokenizers and data processors are not model code (HF's numbers
  count modeling files only); core layers shared by every module are not either.
* Lines of code: a line counts when it holds a Python token other than a comment, a docstring (a
  string that is a statement of its own) or layout (newlines, indentation); a multi-line token
  counts every line it spans. Measured with the `tokenize` module.

A second column shows, for information, the lines of the generic modules a model uses beyond
BERT's (e.g. GPT-2's `lm` target): code the model relies on but shares with other models.
"""

from __future__ import annotations

import argparse
import inspect
import io
import os
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BASE = "bert-base"
# The rows of the table, in the order; built-in recipes not listed here follow.
ROWS = ("bert-base", "roberta-base", "gpt2", "t5-small", "xlm-roberta-base", "bart-base",
        "albert-base", "llama-style", "elmo", "infersent", "cove", "bert-large", "roberta-large",
        "t5-base", "vit-base", "s2t-small", "vilt-b32", "clip-vit-b16")
# The paper's Table 2 (lines added once BERT exists): HF Transformers, TencentPretrain. Its ViT,
# S2T and ViLT rows count one new module each in TencentPretrain (patch, speech, word_patch).
PAPER = {"roberta-base": (696, 0), "gpt2": (688, 0), "t5-small": (1008, 0),
         "vit-base": (493, 59), "s2t-small": (824, 51), "vilt-b32": (618, 15)}
# The generic modules of tp: (kind, name). Issue 3's list of text building blocks, plus the other
# modalities' modules of the paper's Table 1 that several tp models share (patch: ViT and CLIP's
# image tower; masked_patch and mim: the BEiT family). Not among them, so counted against their
# model, as the paper counts them: `speech` (S2T, +51 in TencentPretrain), `word_patch` (ViLT,
# +15) with ViLT's `itm` target (TencentPretrain reuses `cls` for image-text matching), and
# CLIP's `clr` target (the paper has no CLIP row).
GENERIC: frozenset[tuple[str, str]] = frozenset(
    [("embedding", n) for n in ("word", "pos", "seg", "sinusoidalpos", "patch", "masked_patch")]
    + [("encoder", n) for n in ("transformer", "lstm", "gru", "birnn", "bilstm")]
    + [("decoder", n) for n in ("transformer", "lstm")]
    + [("target", n) for n in ("mlm", "sp", "lm", "bilm", "cls", "mim")]
    + [("pooling", n) for n in ("first", "last", "mean", "max")]
)
_LAYOUT = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
           tokenize.ENCODING, tokenize.ENDMARKER}
_STATEMENT_START = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING}


def count_code_lines(source: str) -> int:
    """Lines holding code: comments, docstrings, blank lines and pure layout excluded."""
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    lines: set[int] = set()
    prev = tokenize.NEWLINE  # the file starts a statement
    for i, tok in enumerate(tokens):
        if tok.type in _LAYOUT:
            if tok.type != tokenize.COMMENT and tok.type != tokenize.NL:
                prev = tok.type
            continue
        if tok.type == tokenize.STRING and prev in _STATEMENT_START:
            following = next((t for t in tokens[i + 1:] if t.type not in
                              (tokenize.COMMENT, tokenize.NL)), None)
            if following is None or following.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                prev = tok.type
                continue  # a string statement on its own: a docstring
        lines.update(range(tok.start[0], tok.end[0] + 1))
        prev = tok.type
    return len(lines)


def file_code_lines(path: str | Path) -> int:
    return count_code_lines(Path(path).read_text(encoding="utf-8"))


@dataclass
class Row:
    recipe: str
    status: str = ""  # "" when measured, else why not
    modules: list[tuple[str, str]] = field(default_factory=list)  # (kind, name) in recipe order
    specific: dict[str, int] = field(default_factory=dict)  # file -> lines counted for the model
    shared: dict[str, int] = field(default_factory=dict)  # generic files beyond BERT's -> lines

    @property
    def added(self) -> int | None:
        return None if self.status else sum(self.specific.values())


def recipe_modules(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of every module a recipe's model section names, in order, without validating
    (so a recipe whose modules are not registered yet still lists them)."""
    from tpcli.recipes.config import KIND_OF, MODULE_LIST_KEYS, normalise

    model = normalise(raw).get("model") or {}
    streams = [model[s] for s in ("stream_0", "stream_1") if isinstance(model.get(s), dict)]
    sections = [model, *streams]
    out: list[tuple[str, str]] = []
    for sec in sections:
        for key, kind in KIND_OF.items():
            value = sec.get(key)
            if value is None:
                continue
            names = list(value) if key in MODULE_LIST_KEYS and isinstance(value, dict) else (
                [value.get("name")] if isinstance(value, dict) else [])
            for name in names:
                if isinstance(name, str) and (kind, name) not in out:
                    out.append((kind, name))
    return out


def module_file(registry: Any, kind: str, name: str) -> str:
    cls = registry.get(kind, name)
    return str(Path(inspect.getsourcefile(cls) or "").resolve())


def measure(plugins: Any | None = None) -> list[Row]:
    """One Row per table row (ROWS, then any other built-in recipe)."""
    from tpcli.recipes.config import read_recipe_file
    from tpcli.plugins import get_plugins
    from tpcli.recipes import RECIPE_FILE, builtin_recipes

    plugins = plugins or get_plugins()
    registry = plugins.registry
    folders = builtin_recipes(plugins)
    if BASE not in folders:
        raise SystemExit(f"the base recipe {BASE!r} is not installed")
    base = set(recipe_modules(read_recipe_file(folders[BASE] / RECIPE_FILE)))
    names = list(ROWS) + [n for n in folders if n not in ROWS]
    rows: list[Row] = []
    for name in names:
        row = Row(name)
        rows.append(row)
        if name not in folders:
            row.status = "(no recipe yet)"
            continue
        row.modules = recipe_modules(read_recipe_file(folders[name] / RECIPE_FILE))
        missing = [f"{k} {n}" for k, n in row.modules if not registry.has(k, n)]
        if missing:
            row.status = f"(needs unregistered {', '.join(missing)})"
            continue
        for py in sorted(folders[name].rglob("*.py")):
            row.specific[str(py.resolve())] = file_code_lines(py)
        for kind, mod in row.modules:
            if (kind, mod) in base:
                continue
            path = module_file(registry, kind, mod)
            target = row.shared if (kind, mod) in GENERIC else row.specific
            target[path] = file_code_lines(path)
    return rows


def _short(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def render(rows: list[Row]) -> str:
    out = ["| model (recipe) | HF Transformers (paper) | TencentPretrain (paper) | tp (measured) "
           "| generic modules beyond BERT, shared (lines) |",
           "|---|---|---|---|---|"]
    for row in rows:
        hf, tencent = PAPER.get(row.recipe, (None, None))
        paper_hf = f"+{hf}" if hf is not None else "-"
        paper_tp = f"+{tencent}" if tencent is not None else "-"
        if row.status:
            ours, shared = row.status, "-"
        else:
            if row.recipe == BASE:
                ours = "(base)"
            else:
                files = ", ".join(f"{_short(p)} {n}" for p, n in row.specific.items())
                ours = f"+{row.added}" + (f" ({files})" if files else "")
            shared = ", ".join(f"{_short(p)} {n}" for p, n in row.shared.items()) or "-"
        out.append(f"| {row.recipe} | {paper_hf} | {paper_tp} | {ours} | {shared} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args(argv)
    print(render(measure()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
