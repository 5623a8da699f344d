"""Layer scale (CaiT, BEiT): a learned per-channel factor on a residual branch.

    x = x + scale * branch(x),  scale (H,) starting at a small value (0.1, 1e-5)

Starting each branch near zero makes a deep stack start near the identity, which is what lets
BEiT-large and CaiT train stably; the factors then grow where the branch is useful.
"""

from __future__ import annotations

import torch
from torch import nn


class LayerScale(nn.Module):
    """x * weight, one learned factor per channel. # (..., H) -> (..., H)"""

    def __init__(self, size: int, init: float) -> None:
        super().__init__()
        self.init = init
        self.weight = nn.Parameter(torch.full((size,), float(init)))

    def reset_parameters_tp(self) -> None:
        """Back to the initial value (the model's generic init knows only Linear and friends)."""
        with torch.no_grad():
            self.weight.fill_(self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight
