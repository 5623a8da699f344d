"""Data: the memory-mapped dataset format, the preprocess driver, masking and the loader.

This module holds the processor contract and the two builders every data path shares; it stays
cheap to import (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from tpcli.model.module import ModuleConfig

if TYPE_CHECKING:
    from tpcli.recipes.config import Recipe
    from tpcli.data.format import Reader
    from tpcli.model.module import Tokenizer
    from tpcli.plugins import Plugins

CorpusFormat = Literal["sentences", "documents", "tsv", "records"]


class Processor(Protocol):
    """What a registered data processor provides (see `tp_register_processors`).

    Built as ``cls(config)``. ``corpus_format`` says how ``tp preprocess`` reads the corpus:
    ``"sentences"`` (one sentence per line, blank line between documents), ``"documents"``
    (one document per line) or ``"tsv"`` (one ``label<TAB>text[<TAB>text_b]`` example per line;
    its fields are the document's sequences, label first): the core reads and tokenizes the text
    into a token dataset (`tpcli.data.format`). ``"records"``: the processor reads its corpus
    itself (an image folder, an audio manifest) with ``fields()`` (the stored arrays: name ->
    (dtype, shape), None for a size that varies) and ``records(corpus, tokenizer, workers)`` (an
    iterator of dicts of arrays), optionally ``contents()`` (JSON facts for meta.json: class
    names, files skipped), into an array dataset (`tpcli.data.arrays`).
    ``dataset(store, tokenizer, seed)`` returns a map-style dataset (see
    `tpcli.data.dataset.ExampleDataset`) over the stored examples, which declares its
    ``batch_keys()``. ``tokenizer`` is None for a recipe without one.
    """

    Config: ClassVar[type[ModuleConfig]]
    corpus_format: ClassVar[CorpusFormat]

    def dataset(self, store: "Reader", tokenizer: "Tokenizer", seed: int) -> Any: ...


def build_tokenizer(recipe: "Recipe", plugins: "Plugins") -> Any:
    """The recipe's tokenizer, its files resolved against the recipe folder; None for a recipe
    without one (a model of images or audio features)."""
    if recipe.tokenizer is None:
        return None
    cls = plugins.registry.get("tokenizer", recipe.tokenizer.name)
    return cls(recipe.tokenizer.options, recipe.base_dir)


def build_processor(recipe: "Recipe", plugins: "Plugins") -> Any:
    """The recipe's data processor, built from its validated options."""
    cls = plugins.registry.get("processor", recipe.processor.name)
    return cls(recipe.processor.options)
