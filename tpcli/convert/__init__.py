"""Moving weights between tp and Hugging Face `transformers`.

A plugin registers one `Converter` per HF `model_type` (see `tp_register_converters`): the key
map (rules from `tpcli.convert.keymap`, used in both directions) and the config translation.
`tpcli.convert.hf` (to_hf.py, from_hf.py, check.py) writes and reads the folders (`tp convert`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from tpcli.convert.keymap import (Concat, Drop, PadRows, Rename, Reshape, Rule, StateDict,
                                  Tied, Transpose, convert)
from tpcli.errors import TpError

__all__ = ["Converter", "Concat", "Drop", "PadRows", "Rename", "Reshape", "Rule", "Tied",
           "Transpose", "convert"]

HfConfig = dict[str, Any]


@dataclass(frozen=True)
class Converter:
    """How one HF architecture maps onto a tp recipe.

    rules: the key map of the full pre-training model (`hf_architecture`, e.g.
    BertForPreTraining). base_rules: the key map of the headless model (`base_architecture`,
    e.g. BertModel: no `bert.` prefix, no heads), used with `base=True`.
    config_rules: when the key map depends on the config (LLaMA's grouped-query attention splits
    the fused qkv into parts of unequal size): `(hf_config, base) -> rules`; it wins over
    `rules` / `base_rules` whenever the caller passes `hf_config`.
    config_to_recipe: HF config.json dict -> the recipe's model section.
    recipe_to_config: (validated tpcli.recipes.config.ModelSpec, vocab size) -> HF config.json dict.
    processor: HF config dict -> the recipe's `data.processor` section (name and options) of a
    checkpoint converted from HF (what pre-training it further would use).
    outputs: tp target name -> the HF output field holding the same logits (`tp convert
    --check`); a target not named here is compared with `logits`, one mapped to "" (a head the
    HF architecture lacks, e.g. ViLT's ITM classifier beside ViltForMaskedLM) is not compared.
    also_reads: other HF architectures whose published checkpoints hold this key map's weights
    (bert-base-uncased's config.json says BertForMaskedLM, its weights are BertForPreTraining's):
    read with `rules`, else with `base_rules`.
    full_architectures: other HF architectures this converter maps completely, its
    `config_rules` choosing the key map by the config's architecture (BEiT's classifier beside
    its masked-image model): read, written and `--check`ed as themselves.
    max_length: HF config dict -> the most tokens the model takes, written as the exported
    tokenizer's `model_max_length` (without it `truncation=True` does not truncate); default
    `max_position_embeddings` or `n_positions`, None when the config has neither.
    preprocessing: for a model that reads no text (images, audio features), what stands in for
    the tokenizer files: `from_hf(folder, hf_config) -> dict`, the recipe's data section read
    from the folder's preprocessor_config.json, and `to_hf(recipe, folder, hf_config)`, which
    writes it. None: the model reads text and its tokenizer files are converted. A model that
    reads features and writes text (S2T) also has `tokenizer_from_hf(folder, hf_config, dest)
    -> (tokenizer, tokenizer section) | None`, which writes the checkpoint's tokenizer.
    check_batch: `(ModelSpec, hf_config) -> (tp batch, HF keyword arguments)`, the fixed batch
    `--check` runs through both models; None: padded token ids (text models).
    task: HF config dict -> the `finetune.task` section of a converted fine-tuned model (an image
    classifier's task with its class names from `id2label`), so `tp infer` runs on it; None
    (or a None result): the checkpoint has no task."""

    name: str
    hf_architecture: str
    rules: Sequence[Rule]
    config_to_recipe: Callable[[HfConfig], dict[str, Any]]
    recipe_to_config: Callable[[Any, int], HfConfig] | None = None
    base_architecture: str | None = None
    base_rules: Sequence[Rule] = ()
    config_rules: Callable[[HfConfig, bool], Sequence[Rule]] | None = None
    processor: Callable[[HfConfig], dict[str, Any]] | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    also_reads: tuple[str, ...] = ()
    full_architectures: tuple[str, ...] = ()
    max_length: Callable[[HfConfig], int | None] | None = None
    preprocessing: Any = None
    check_batch: Callable[[Any, HfConfig], tuple[dict[str, torch.Tensor], dict[str, Any]]] | None = None
    task: Callable[[HfConfig], dict[str, Any] | None] | None = None

    def input_limit(self, hf_config: HfConfig) -> int | None:
        """The model's maximum input length (`max_length`, or the config's position count)."""
        if self.max_length is not None:
            return self.max_length(hf_config)
        value = hf_config.get("max_position_embeddings", hf_config.get("n_positions"))
        return value if isinstance(value, int) and value > 0 else None

    def rules_for(self, hf_config: HfConfig | None = None, base: bool = False) -> Sequence[Rule]:
        """The key map for this config (the static one when the map does not depend on it)."""
        if self.config_rules is not None:
            if hf_config is None:
                raise TpError(f"converter {self.name!r} needs the HF config to build its key map")
            return self.config_rules(hf_config, base)
        if not base:
            return self.rules
        if not self.base_rules:
            raise TpError(f"converter {self.name!r} has no key map for a headless model")
        return self.base_rules

    def hf_to_tp(self, hf_sd: Mapping[str, torch.Tensor], *, base: bool = False,
                 ignore: Iterable[str] = (), expected: Iterable[str] | None = None,
                 hf_config: HfConfig | None = None) -> StateDict:
        """An HF state dict -> tp keys (strict; see `tpcli.convert.keymap.convert`)."""
        return convert(hf_sd, self.rules_for(hf_config, base), "hf_to_tp", ignore=ignore,
                       expected=expected)

    def tp_to_hf(self, tp_sd: Mapping[str, torch.Tensor], *, base: bool = False,
                 ignore: Iterable[str] = (), expected: Iterable[str] | None = None,
                 hf_config: HfConfig | None = None) -> StateDict:
        """A tp state dict -> HF keys (tied HF keys share one tensor)."""
        return convert(tp_sd, self.rules_for(hf_config, base), "tp_to_hf", ignore=ignore,
                       expected=expected)

    def tied_keys(self, hf_config: HfConfig | None = None, base: bool = False) -> list[str]:
        """HF keys that only repeat another key's tensor: written once, as `transformers` saves
        them (its `_tied_weights_keys`)."""
        return [r.hf for r in self.rules_for(hf_config, base) if isinstance(r, Tied)]
