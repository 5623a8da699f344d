"""Patch embedding (ViT): an image cut into non-overlapping patches, each projected to E wide,
with a learned class token in front.

    pixel_values (B, C, H, W) -> patches, row by row (B, N, C*p*p) -> Linear -> (B, N, E)
        -> [cls; patches] -> (B, 1 + N, E)

A convolution whose kernel equals its stride is one Linear applied to each patch's C*p*p pixels,
and that is how it runs: a reshape and one matmul (in bf16 on CPU, Conv2d's backward took six
times as long: benchmarks/vit_step.py --whatif). The weight stays a Conv2d's (E, C, p, p)
because HF's `patch_embeddings.projection` is one, so it converts as is. Patches are numbered row by row, N = (H/p) * (W/p): the order a position embedding and the
encoder's 2-D relative bias (`model.encoder.grid` = `grid` here) assume. Positions are not added
here: a `pos` embedding after this one in the recipe adds them (ViT); BEiT has them in attention.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from tpcli.data.batch import BatchKey
from tpcli.errors import TpError
from tpcli.model.module import BuildContext, ModuleConfig

Side = Annotated[int, Field(ge=1)]
Size = Side | tuple[Side, Side]  # one int: square; [h, w] otherwise


def pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """`16` -> (16, 16); `(32, 48)` stays."""
    return (size, size) if isinstance(size, int) else (size[0], size[1])


def recipe_path(ctx: BuildContext, name: str) -> str:
    """Where the recipe sets this module's options, e.g. `model.embedding.patch`."""
    if ctx.stream in ("stream_0", "stream_1"):
        return f"model.{ctx.stream}.embedding.{name}"
    return f"model.tgt_embedding.{name}" if ctx.stream == "tgt" else f"model.embedding.{name}"


class PatchConfig(ModuleConfig):
    """The options of `patch` and `masked_patch`."""

    image_size: Size = Field(224, description="image height and width in pixels: one int "
                             "(square) or [height, width]")
    patch_size: Size = Field(16, description="patch height and width in pixels: one int "
                             "(square) or [height, width]; must divide image_size")
    channels: int = Field(3, ge=1, description="colour channels of pixel_values (3: RGB)")
    class_token: bool = Field(True, description="prepend a learned class token ([CLS])")
    bias: bool = Field(True, description="a bias in the patch projection")

    @model_validator(mode="after")
    def _patches_tile_the_image(self) -> "PatchConfig":
        """An image size the patch size does not divide is a recipe error (caught when the
        recipe is validated, before any data is read)."""
        (h, w), (ph, pw) = pair(self.image_size), pair(self.patch_size)
        if h % ph or w % pw:
            raise ValueError(f"patch_size {ph}x{pw} does not divide image_size {h}x{w}; choose "
                             "sizes whose ratio is whole (224 / 16 = 14 patches a side)")
        return self


class PatchEmbedding(nn.Module):
    """Image -> (B, 1 + N, E) patch embeddings, the class token first (or (B, N, E) without)."""

    name: ClassVar[str] = "patch"  # the registry name, for the recipe paths in errors
    Config = PatchConfig

    def __init__(self, config: PatchConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.path = recipe_path(ctx, self.name)
        (h, w), (ph, pw) = pair(config.image_size), pair(config.patch_size)
        if h % ph or w % pw:
            raise TpError(
                f"embedding {self.name}: image_size {h}x{w} is not divisible by patch_size "
                f"{ph}x{pw}",
                hint=f"set {self.path}.image_size to a multiple of the patch size per side "
                f"(e.g. {(h // ph + 1) * ph}x{(w // pw + 1) * pw}) or change "
                f"{self.path}.patch_size")
        self.grid = (h // ph, w // pw)  # (rows, columns) of patches
        self.num_patches = self.grid[0] * self.grid[1]
        self.init_std = ctx.init_std
        self.projection = nn.Conv2d(config.channels, ctx.embed_dim, kernel_size=(ph, pw),
                                    stride=(ph, pw), bias=config.bias)
        self.cls_token = nn.Parameter(torch.zeros(ctx.embed_dim)) if config.class_token else None
        self.inputs: tuple[BatchKey, ...] = (BatchKey(
            "pixel_values", "float32", (config.channels, h, w),
            description="images, normalised, channels first"),)

    def reset_parameters_tp(self) -> None:
        """After the model's generic init (which knows no Conv2d): HF's normal(0, init_std) for
        the projection, and ViT's truncated normal for the class token."""
        nn.init.normal_(self.projection.weight, 0.0, self.init_std)
        if self.projection.bias is not None:
            nn.init.zeros_(self.projection.bias)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=self.init_std)

    def patches(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """pixel_values (B, C, H, W) -> (B, N, E), patches row by row."""
        pixels = inputs.get("pixel_values")
        if pixels is None:
            raise TpError(f"embedding {self.name} reads pixel_values, but the batch has none "
                          f"(it has {', '.join(sorted(inputs)) or 'nothing'})",
                          hint="use an image data processor, which produces pixel_values")
        want = self.inputs[0].shape
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != want:
            raise TpError(
                f"embedding {self.name}: pixel_values have shape {tuple(pixels.shape)}, "
                f"expected (batch, {', '.join(str(d) for d in want)})",
                hint=f"resize the images to {want[1]}x{want[2]} with {want[0]} channels in the "
                f"data processor, or set {self.path}.image_size and channels to the data's")
        weight = self.projection.weight  # (E, C, ph, pw): the Conv2d's
        b, c, h, w = pixels.shape
        (gh, gw), (ph, pw) = self.grid, weight.shape[2:]
        x = pixels.to(weight.dtype).reshape(b, c, gh, ph, gw, pw)
        x = x.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * ph * pw)  # (B, N, C*ph*pw)
        return F.linear(x, weight.reshape(weight.shape[0], -1), self.projection.bias)  # (B, N, E)

    def with_class_token(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, E) -> (B, 1 + N, E) with the class token first (unchanged without one)."""
        if self.cls_token is None:
            return x
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, E)
        return torch.cat((cls, x), dim=1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.with_class_token(self.patches(inputs))  # (B, 1 + N, E)
