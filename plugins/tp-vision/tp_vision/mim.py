"""Masked image modelling target (BEiT; MAE / SimMIM-style pixel regression as an option).

    tokens: hidden (B, 1 + N, H) -> the N patch positions -> the masked ones (M, H)
            -> LayerNorm -> Linear (V, H) -> cross-entropy against `mim_labels` (-100 = visible)
    pixels: the masked positions (M, H) -> LayerNorm -> Linear (p*p*C, H) -> MSE against the
            masked patches of `pixel_values` (optionally normalised per patch, MAE's norm_pix)

The patch positions are the LAST N positions of the hidden states, N being the width of the
labels (or mask): the class token (and anything else an embedding puts in front) is skipped
without the target knowing the image size. Only ~40% of the patches are masked (BEiT masks 75
of 196), so the head runs on the masked rows only, and in training the encoder's last layer
too (`read_positions`: the masked patches, counted from the end).

Weights line up with Hugging Face `BeitForMaskedImageModeling`: `norm` is its `layernorm`,
`head` its `lm_head`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tp_vision.masking import patchify
from tpcli.data.batch import IGNORE, BatchKey
from tpcli.errors import TpError
from tpcli.layers import output
from tpcli.model.module import (BuildContext, Features, LastPositions, TargetConfig,
                                TargetOutput)

PIX_EPS = 1e-6  # MAE's epsilon in the per-patch pixel normalisation


class MimTarget(nn.Module):
    """Masked image modelling over visual tokens (`acc`, `count` of masked patches) or, with
    objective=pixels, regression of the masked patches' pixels (`count`)."""

    class Config(TargetConfig):
        objective: Literal["tokens", "pixels"] = Field(
            "tokens", description="predict each masked patch's visual token (BEiT) or its "
                                  "pixels (MAE / SimMIM-style regression)")
        vocab_size: int | None = Field(
            None, gt=0, description="visual vocabulary size (default: the tokenizer's, e.g. "
                                    "the kmeans codebook's K); tokens objective")
        norm: bool = Field(True, description="LayerNorm before the head (BEiT's `layernorm`; "
                                             "off if the encoder already ends with a norm)")
        patch_size: int = Field(16, gt=0, description="patch side in pixels; pixels objective")
        channels: int = Field(3, gt=0, description="image channels; pixels objective")
        norm_pixels: bool = Field(False, description="regress each patch normalised by its own "
                                                     "mean and variance (MAE's norm_pix_loss)")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        h = ctx.hidden_size
        if config.objective == "tokens":
            out = config.vocab_size or ctx.vocab_size
            self.inputs: tuple[BatchKey, ...] = (
                # N patches, named "T" like a sequence: the image size is not the target's to know
                BatchKey("mim_labels", "int64", ("T",), pad=IGNORE, low=0, high=out,
                         description="visual token of each masked patch, -100 elsewhere"),)
        else:
            out = config.patch_size * config.patch_size * config.channels
            self.inputs = (
                BatchKey("pixel_values", "float32", (config.channels, "H", "W"),
                         description="the normalised image whose masked patches are regressed"),
                BatchKey("mim_mask", "bool", ("T",), pad=False,
                         description="True on the masked patches, row-major"),)
        self.norm = nn.LayerNorm(h, eps=ctx.norm_eps) if config.norm else nn.Identity()
        self.head = nn.Linear(h, out)

    def patch_states(self, features: Features, n: int) -> torch.Tensor:
        """(B, N, H): the last `n` positions of the hidden states (the class token skipped)."""
        hidden = features.hidden
        if hidden is None:
            raise TpError("target mim needs hidden states from the encoder")
        if n > hidden.shape[1]:
            raise TpError(f"target mim got {n} patch labels per image but the encoder's output "
                          f"has only {hidden.shape[1]} positions",
                          hint="the processor's patch grid must match the patch embedding's")
        return hidden[:, hidden.shape[1] - n:]  # (B, N, H)

    def read_positions(self, batch: dict[str, torch.Tensor]) -> LastPositions | None:
        """The masked patches, the only hidden states the loss reads, counted from the end of
        the sequence (the class token in front is not read): the model's last layer then
        computes no others. None without labels (or mask)."""
        if self.config.objective == "pixels":
            mask = batch.get("mim_mask")
            return None if mask is None else LastPositions(mask.bool())
        labels = batch.get("mim_labels")
        return None if labels is None else LastPositions(labels != IGNORE)

    def forward(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        if self.config.objective == "pixels":
            return self._pixels(features, batch)
        labels = batch.get("mim_labels")
        if labels is None:
            raise TpError("target mim needs `mim_labels` (the visual token of each masked patch, "
                          "-100 elsewhere) in the batch",
                          hint="use a data processor that masks patches and tokenizes images")
        hidden = self.patch_states(features, labels.shape[1])  # (B, N, H)
        flat = labels.reshape(-1)  # (B*N,)
        rows = (flat != IGNORE).nonzero().squeeze(1)  # (M,) the masked patches
        targets = flat.index_select(0, rows)  # (M,)
        x = self.norm(hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows))  # (M, H)
        # the (M, V) logits are never held whole: see tpcli.layers.output.linear_cross_entropy
        total, correct = output.linear_cross_entropy(x, self.head.weight, self.head.bias,
                                                     targets)
        m = targets.numel()
        with torch.no_grad():
            count = torch.tensor(float(m), device=x.device)
            acc = correct.float() / count.clamp(min=1.0)
        return TargetOutput(total / max(m, 1), {"acc": acc, "count": count})

    def _pixels(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        mask, pixels = batch.get("mim_mask"), batch.get("pixel_values")
        if mask is None or pixels is None:
            raise TpError("target mim (objective pixels) needs `pixel_values` and `mim_mask` "
                          "(True on the masked patches) in the batch",
                          hint="use a data processor that masks patches of images")
        target = patchify(pixels, self.config.patch_size)  # (B, N, p*p*C)
        if target.shape[1:] != (mask.shape[1], self.head.out_features):
            raise TpError(f"target mim: the images make {target.shape[1]} patches of "
                          f"{target.shape[2]} values, but the mask has {mask.shape[1]} patches "
                          f"and the head predicts {self.head.out_features} values",
                          hint="set the target's patch_size and channels to the images'")
        hidden = self.patch_states(features, mask.shape[1])  # (B, N, H)
        target = target[mask].float()  # (M, p*p*C)
        if self.config.norm_pixels:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + PIX_EPS).sqrt()
        pred = self.head(self.norm(hidden[mask]))  # (M, p*p*C)
        m = target.shape[0]
        # the mean over every masked value; a batch without masked patches gives 0, not NaN
        loss = F.mse_loss(pred.float(), target, reduction="sum") / max(target.numel(), 1)
        return TargetOutput(loss, {"count": torch.tensor(float(m), device=pred.device)})

    def predict(self, features: Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, N, V) token logits (or (B, N, p*p*C) pixels) at every patch position; N from
        `mim_labels` / `mim_mask` when the batch has them, else all positions but the first."""
        key = batch.get("mim_labels", batch.get("mim_mask"))
        hidden = features.hidden
        n = key.shape[1] if key is not None else (hidden.shape[1] - 1 if hidden is not None else 0)
        return self.head(self.norm(self.patch_states(features, n)))

    @classmethod
    def contract_labels(cls, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The module contract's sample batch (T positions) as an image batch: T - 1 patches
        after a class token, every other one at most masked, images of 1 x (T - 1) patches of
        the default size."""
        labels = batch["mim_labels"][:, 1:].clone()  # (B, N)
        labels[:, 1::2] = IGNORE
        b, n = labels.shape
        defaults = cls.Config.model_fields
        p, c = defaults["patch_size"].default, defaults["channels"].default
        g = torch.Generator().manual_seed(0)
        pixels = torch.randn(b, c, p, p * n, generator=g)  # (B, C, p, N*p): a 1 x N patch grid
        return {**batch, "mim_labels": labels, "mim_mask": labels != IGNORE, "pixel_values": pixels}
