"""The vocabulary projection shared by output targets (mlm, lm): own matrix until tied."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class TiedOutput:
    """Mixin for an nn.Module target: `decoder` (V, H) and an optional `bias` (V) as its own
    parameters (so state-dict keys stay `decoder.weight` / `bias`), until `tie_weights` makes it
    read the word embedding at forward time and drops its own matrix (no duplicated key)."""

    decoder: nn.Linear | None
    bias: nn.Parameter | None
    _get_weight: Callable[[], torch.Tensor] | None

    def init_output(self, hidden: int, vocab: int, bias: bool) -> None:
        self.decoder = nn.Linear(hidden, vocab, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab)) if bias else None
        self._get_weight = None

    def tie_weights(self, get_weight: Callable[[], torch.Tensor]) -> None:
        """Use the word embedding (V, H), read at forward time, as the output matrix."""
        self.decoder = None
        self._get_weight = get_weight

    def output_weight(self) -> torch.Tensor:
        if self._get_weight is not None:
            return self._get_weight()
        assert self.decoder is not None  # invariant: tie_weights sets one when it drops the other
        return self.decoder.weight

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., V)."""
        return F.linear(x, self.output_weight(), self.bias)
