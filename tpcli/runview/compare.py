"""`tp runs compare`: the recipe keys that differ between runs, and their results side by side.

Each run's recipe.yaml (the recipe it trained, overrides applied) is flattened to dotted keys
(`pretrain.lr`, `model.encoder.layers`); lists are compared whole. A key only some runs write
counts as differing (the others show it absent, None in JSON).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tpcli.runview.read import Run, recipe_of

ABSENT = "(absent)"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": [1, 2]}; an empty mapping is kept as a
    value (`model.embedding.word: {}`) so its presence still counts."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def differing(recipes: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """(key, [value per run]) for each flattened key whose values are not all equal, in the
    order keys first appear; a run that lacks the key gives ABSENT."""
    flat = [flatten(r) for r in recipes]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    rows = []
    for key in keys:
        values = [f.get(key, ABSENT) for f in flat]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, values))
    return rows


def results(run: Run) -> dict[str, Any]:
    """A run's results for the side-by-side view."""
    out: dict[str, Any] = {"steps": run.steps, "total": run.total, "final loss": run.loss,
                           "state": run.state}
    if run.best is not None:
        out[f"best {run.best['metric']}"] = run.best["value"]
        out["best step"] = run.best["step"]
    return out


def compare(runs: list[Run]) -> dict[str, Any]:
    """{"runs": [paths], "differ": {key: [values]}, "results": {name: [values]}}."""
    diff = differing([recipe_of(Path(r.path)) for r in runs])
    per_run = [results(r) for r in runs]
    names: list[str] = []
    for res in per_run:
        names += [k for k in res if k not in names]
    return {"runs": [r.path for r in runs],
            "differ": {k: [None if v == ABSENT else v for v in vs] for k, vs in diff},
            "results": {n: [res.get(n) for res in per_run] for n in names}}
