"""Moving weights between tp and Hugging Face `transformers`.

A plugin registers one `Converter` per HF `model_type` (see `tp_register_converters`): the key
map (rules from `tpcli.convert.keymap`, used in both directions) and the config translation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from tpcli.convert.keymap import (Concat, Drop, Rename, Rule, StateDict, Tied, Transpose,
                                  convert)
from tpcli.errors import TpError

__all__ = ["Converter", "Concat", "Drop", "Rename", "Rule", "Tied", "Transpose", "convert"]


@dataclass(frozen=True)
class Converter:
    """How one HF architecture maps onto a tp recipe.

    rules: the key map of the full pre-training model (`hf_architecture`, e.g.
    BertForPreTraining). base_rules: the key map of the headless model (`base_architecture`,
    e.g. BertModel: no `bert.` prefix, no heads), used with `base=True`.
    config_to_recipe: HF config.json dict -> the recipe's model section.
    recipe_to_config: (validated tpcli.config.ModelSpec, vocab size) -> HF config.json dict."""

    name: str
    hf_architecture: str
    rules: Sequence[Rule]
    config_to_recipe: Callable[[dict[str, Any]], dict[str, Any]]
    recipe_to_config: Callable[[Any, int], dict[str, Any]] | None = None
    base_architecture: str | None = None
    base_rules: Sequence[Rule] = ()

    def _rules(self, base: bool) -> Sequence[Rule]:
        if not base:
            return self.rules
        if not self.base_rules:
            raise TpError(f"converter {self.name!r} has no key map for a headless model")
        return self.base_rules

    def hf_to_tp(self, hf_sd: Mapping[str, torch.Tensor], *, base: bool = False,
                 ignore: Iterable[str] = (), expected: Iterable[str] | None = None) -> StateDict:
        """An HF state dict -> tp keys (strict; see `tpcli.convert.keymap.convert`)."""
        return convert(hf_sd, self._rules(base), "hf_to_tp", ignore=ignore, expected=expected)

    def tp_to_hf(self, tp_sd: Mapping[str, torch.Tensor], *, base: bool = False,
                 ignore: Iterable[str] = (), expected: Iterable[str] | None = None) -> StateDict:
        """A tp state dict -> HF keys (tied HF keys share one tensor)."""
        return convert(tp_sd, self._rules(base), "tp_to_hf", ignore=ignore, expected=expected)
