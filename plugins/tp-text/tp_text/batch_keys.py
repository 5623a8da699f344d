"""The batch keys of text examples, declared by tp-text's naming convention.

tp's core assumes no key names; a dataset or task declares its keys (`tpcli.data.batch.BatchKey`).
Text examples follow one convention, so their declaration is derived from the names:

- ``*input_ids`` (T,): token ids, padded with the pad id; collate adds ``*attention_mask``;
  the unprefixed ``input_ids`` is what tokens/s counts.
- ``*labels`` (T,) or (): padded with -100 (not predicted).
- anything else (``segment_ids``, ``position_ids``, ``block_ids``, ``prefix_lengths``,
  ``choice_starts``, ...): padded with 0.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from tpcli.data.batch import IGNORE, BatchKey
from tpcli.data.dataset import ExampleDataset


def text_keys(example: Mapping[str, torch.Tensor], pad_id: int,
              vocab_size: int | None = None) -> tuple[BatchKey, ...]:
    """The declaration of `example`'s keys (one example: the shapes are read from it)."""
    keys = []
    for name, value in example.items():
        dtype = str(value.dtype).removeprefix("torch.")
        shape: tuple[int | str, ...] = ("T",) + tuple(value.shape[1:]) if value.dim() else ()
        if name.endswith("input_ids"):
            keys.append(BatchKey(name, dtype, shape, pad=pad_id,
                                 mask=name[: -len("input_ids")] + "attention_mask",
                                 unit="tokens" if name == "input_ids" else None,
                                 high=vocab_size))
        elif name.endswith("labels"):
            keys.append(BatchKey(name, dtype, shape, pad=IGNORE))
        else:
            keys.append(BatchKey(name, dtype, shape, pad=0))
    keys.sort(key=lambda k: k.name != "input_ids")  # the counted key first
    return tuple(keys)


class TextDataset(ExampleDataset):
    """An ExampleDataset of text examples: its batch keys follow the naming convention above
    (read from its first example once)."""

    _keys: tuple[BatchKey, ...] | None = None

    def batch_keys(self) -> tuple[BatchKey, ...]:
        if self._keys is None:
            vocab = getattr(self, "vocab_size", None)
            self._keys = text_keys(self[0], self.pad_id, vocab)
        return self._keys


def task_keys(rows: list[dict[str, torch.Tensor]], tokenizer: Any) -> tuple[BatchKey, ...]:
    """A text task's batch keys (`Task.batch_keys`): by convention, from its first row."""
    pad = int(tokenizer.special_ids.get("pad", 0))
    return text_keys(rows[0], pad, tokenizer.vocab_size) if rows else ()
