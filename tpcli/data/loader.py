"""From a preprocessed dataset folder to the recipe's training dataset.

The dataset's meta.json records the tokenizer (fingerprint) and processor that made it; a
recipe with another vocabulary or another processor is refused here, before any training step,
because its ids would silently mean other tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tpcli.recipes.config import Recipe
from tpcli.plugins import Plugins
from tpcli.data.arrays import open_store
from tpcli.errors import DataError


def _describe_tokenizer(info: dict[str, Any]) -> str:
    options = info.get("options") or {}
    source = options.get("vocab") or options.get("tokenizer_json")
    name = info.get("name", "?")
    if name is None:
        return "no tokenizer"
    return f"{name} ({source})" if source else str(name)


def check_compatible(meta: dict[str, Any], folder: Path, recipe: Recipe, tokenizer: Any) -> None:
    """DataError unless the dataset was made with the recipe's tokenizer and processor."""
    fix = f"re-run `tp preprocess` with this recipe to rebuild {folder}, or use the recipe it was made with"
    made_tok = meta.get("tokenizer") or {}
    made_fp = made_tok.get("fingerprint")
    mine = {"name": recipe.tokenizer.name if recipe.tokenizer else None,
            "options": recipe.tokenizer.options.model_dump()
            if recipe.tokenizer and recipe.tokenizer.options else {}}
    fingerprint = tokenizer.fingerprint() if tokenizer is not None else None
    if made_fp != fingerprint:
        raise DataError(
            f"dataset {folder} was tokenized with {_describe_tokenizer(made_tok)} (fingerprint "
            f"{str(made_fp)[:12]}), but recipe {recipe.name} uses {_describe_tokenizer(mine)} "
            f"(fingerprint {str(fingerprint)[:12]}): the token ids would not match",
            hint=fix,
        )
    made_proc = (meta.get("processor") or {}).get("name")
    if made_proc != recipe.processor.name:
        raise DataError(
            f"dataset {folder} was made for the {made_proc!r} processor, but recipe "
            f"{recipe.name} uses {recipe.processor.name!r}",
            hint=fix,
        )


def make_dataset(data_dir: Path, recipe: Recipe, tokenizer: Any, seed: int, plugins: Plugins
                 ) -> Any:
    """The recipe processor's map-style dataset over `data_dir`.

    It has `__len__`, `__getitem__(i)` (one unpadded example: dict of tensors), `set_epoch(e)`
    and `collate(examples)`; examples depend only on (seed, epoch, i)."""
    from tpcli.data import build_processor

    folder = Path(data_dir)
    store = open_store(folder)
    check_compatible(store.meta, folder, recipe, tokenizer)
    processor = build_processor(recipe, plugins)  # the run's plugins: in-process ones included
    dataset = processor.dataset(store, tokenizer, seed)
    if len(dataset) == 0:
        raise DataError(f"dataset {folder} yields no training examples",
                        hint="preprocess a larger corpus")
    return dataset
