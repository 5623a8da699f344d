"""Masked patch embedding (BEiT): the patch embedding, with the patches that a `mim_mask`
marks replaced by one learned mask token before the class token goes in front.

    pixel_values (B, C, H, W) -> patches (B, N, E) -> masked ones := mask_token -> (B, 1 + N, E)

The mask is drawn by the data side (BEiT's blockwise masking) and travels as `mim_mask` (B, N)
bool, True = masked, patches row by row. Without it (fine-tuning, evaluation) this module is
exactly `patch`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from tp_vision.patch import PatchConfig, PatchEmbedding
from tpcli.data.batch import BatchKey
from tpcli.errors import TpError
from tpcli.model.module import BuildContext


class MaskedPatchEmbedding(PatchEmbedding):
    """`patch` + a learned mask token (E,) in place of the patches `mim_mask` marks."""

    name: ClassVar[str] = "masked_patch"
    Config = PatchConfig

    def __init__(self, config: PatchConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.mask_token = nn.Parameter(torch.zeros(ctx.embed_dim))
        self.inputs = self.inputs + (BatchKey(
            "mim_mask", "bool", (self.num_patches,), optional=True,
            description="True on the patches to replace by the mask token (row by row)"),)

    def reset_parameters_tp(self) -> None:
        """The patch embedding's init, and a truncated normal for the mask token as BEiT's
        authors do (HF starts it at zeros; both train)."""
        super().reset_parameters_tp()
        nn.init.trunc_normal_(self.mask_token, std=self.init_std)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.patches(inputs)  # (B, N, E)
        masked = inputs.get("mim_mask")
        if masked is not None:
            if tuple(masked.shape) != (x.shape[0], self.num_patches):
                raise TpError(
                    f"embedding {self.name}: mim_mask has shape {tuple(masked.shape)}, "
                    f"expected (batch, {self.num_patches}): one flag per patch of the "
                    f"{self.grid[0]}x{self.grid[1]} grid",
                    hint=f"make the masking processor's grid match {self.path}.image_size / "
                    "patch_size")
            token = self.mask_token.to(x.dtype)  # (E,)
            x = torch.where(masked.bool().unsqueeze(-1), token, x)  # (B, N, E)
        return self.with_class_token(x)  # (B, 1 + N, E)
