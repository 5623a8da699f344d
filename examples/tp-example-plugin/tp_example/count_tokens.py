"""`tp count-tokens RECIPE --corpus FILE`: a verb this plugin adds to `tp`.

How many tokens a recipe's tokenizer makes of a corpus, and how many of them are unknown: what
one checks before choosing `max_length` or a vocabulary. Written as any Typer command; tp runs
it under its own error handling (a TpError is one paragraph and exit 1, `--debug` shows the
traceback).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

BATCH = 1024  # lines per encode_batch call


def count_tokens(
    recipe: str = typer.Argument(..., help="recipe folder, file or built-in name"),
    corpus: Path = typer.Option(..., "--corpus", help="a text file, one example a line"),
    overrides: Optional[list[str]] = typer.Argument(None, help="a.b.c=value recipe overrides"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Count the tokens RECIPE's tokenizer makes of a text file: lines, tokens, tokens a line
    (mean and longest), and unknown tokens."""
    from tpcli.data import build_tokenizer
    from tpcli.errors import DataError, TpError
    from tpcli.plugins import get_plugins
    from tpcli.recipes import load_recipe

    plugins = get_plugins()
    loaded = load_recipe(recipe, list(overrides or []), plugins)
    tokenizer = build_tokenizer(loaded, plugins)
    if tokenizer is None:
        raise TpError(f"recipe {loaded.name} has no tokenizer: its model reads no text",
                      hint="name a recipe with data.tokenizer (e.g. bert-base)")
    if not corpus.is_file():
        raise DataError(f"corpus {corpus} is not a file", hint="pass a text file with --corpus")
    unk = tokenizer.special_ids.get("unk")
    lines = tokens = unknown = longest = 0
    with open(corpus, encoding="utf-8") as f:
        batch: list[str] = []
        for line in [*f, None]:
            if line is not None and line.strip():
                batch.append(line.rstrip("\n"))
            if batch and (line is None or len(batch) == BATCH):
                for ids in tokenizer.encode_batch(batch):
                    lines, tokens = lines + 1, tokens + len(ids)
                    longest = max(longest, len(ids))
                    unknown += sum(1 for i in ids if i == unk) if unk is not None else 0
                batch = []
    result = {"recipe": loaded.name, "lines": lines, "tokens": tokens,
              "mean": tokens / lines if lines else 0.0, "longest": longest, "unknown": unknown}
    if as_json:
        print(json.dumps(result))
        return
    print(f"{lines:,} lines, {tokens:,} tokens ({result['mean']:.1f} a line, longest {longest:,}), "
          f"{unknown:,} unknown ({100 * unknown / max(tokens, 1):.2f}%)")
