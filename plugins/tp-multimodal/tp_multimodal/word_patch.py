"""ViLT's joined embedding: text tokens and image patches as ONE sequence for one transformer.

    text:  input_ids (B, T) -> word + position + token type -> LayerNorm -> + modality[0]
    image: pixel_values (B, C, H', W') -> patches (B, N, E) (a Conv2d's weight, kernel = stride)
           [class token; patches] + [table[0]; positions interpolated to each image's grid]
           -> + modality[1]
    out:   [text; class token; patches] (B, T + 1 + N, E)

The semantics are HF `ViltEmbeddings`'. The image need not be the configured size: a batch of
images padded to a common size (ViltImageProcessor's `pixel_mask`, 1 = real pixel) is cut into
the (H'/p) x (W'/p) patches that fit, a patch counts as real when its top-left pixel is, and each
image's position table (learned for `image_size / patch_size` patches a side) is resized with
bilinear interpolation (corners aligned) to that image's real rows x columns of patches, the
padding patches getting zeros. An image fully real at the configured size takes the table as is.

The sequence is longer than input_ids, so this module says which of its positions are real
(`output_mask`): attention_mask, then the class token, then the real patches. Padding patches
stay in the sequence, masked: the encoder's outputs at the text and class positions are then
exactly HF's, whose `visual_embed` gathers the real patches first and fills the rest of each row
with randomly chosen (masked) padding patches.

`max_image_length` (HF's option, ViLT pre-training's 200): HF samples that many of an image's
real patches with torch.multinomial whenever it has more, in training and evaluation alike.
tp samples only in training (a random choice of that many real patches per image stays
unmasked, the rest is masked like padding: the same attention as HF's, over a sequence of the
full length) and keeps every real patch in evaluation, where HF's outputs would change from run
to run; with at most `max_image_length` real patches per image (ViLT's 384 x 384 / 32 = 144 <
200) both keep them all and agree exactly.

No dropout here: the stack's embedding dropout (`model.dropout`) falls on the joined sequence
(HF drops out the two parts before it adds the modality embedding; ViLT trains with 0.0).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from tp_vision.patch import Size, pair, recipe_path
from tpcli.data.batch import BatchKey
from tpcli.errors import TpError
from tpcli.model.module import BuildContext, ModuleConfig


class WordPatchConfig(ModuleConfig):
    """Options of `word_patch` (HF ViltConfig's names in the descriptions)."""

    max_length: int = Field(40, ge=1, description="text positions learned: the most tokens a "
                            "row may have (HF max_position_embeddings)")
    segments: int = Field(2, ge=1, description="token types of the text (HF type_vocab_size); "
                          "token_type_ids index them, all 0 without")
    modalities: int = Field(2, ge=2, description="modality types: 0 text, 1 image (HF "
                            "modality_type_vocab_size)")
    image_size: Size = Field(384, description="image height and width the position table is "
                             "learned for: one int (square) or [height, width] (HF image_size)")
    patch_size: Size = Field(32, description="patch height and width in pixels: one int or "
                             "[height, width]; must divide image_size (HF patch_size)")
    channels: int = Field(3, ge=1, description="colour channels of pixel_values (HF "
                          "num_channels)")
    max_image_length: int = Field(-1, ge=-1, description="training only: keep at most this "
                                  "many real patches per image, chosen at random (HF "
                                  "max_image_length; -1: all; evaluation keeps all)")

    @model_validator(mode="after")
    def _patches_tile_the_image(self) -> "WordPatchConfig":
        (h, w), (ph, pw) = pair(self.image_size), pair(self.patch_size)
        if h % ph or w % pw:
            raise ValueError(f"patch_size {ph}x{pw} does not divide image_size {h}x{w}")
        if self.max_image_length == 0:
            raise ValueError("max_image_length 0 keeps no patch; use -1 for all")
        return self


class WordPatchEmbedding(nn.Module):
    """input_ids (B, T) + pixel_values (B, C, H', W') -> (B, T + 1 + N, E), text first."""

    name: ClassVar[str] = "word_patch"
    Config = WordPatchConfig

    def __init__(self, config: WordPatchConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.path = recipe_path(ctx, self.name)
        e, (h, w), (ph, pw) = ctx.embed_dim, pair(config.image_size), pair(config.patch_size)
        self.grid = (h // ph, w // pw)  # the position table's patches (rows, columns)
        self.init_std = ctx.init_std
        pad = ctx.pad_id
        padding_idx = pad if pad is not None and 0 <= pad < ctx.vocab_size else None
        self.word = nn.Embedding(ctx.vocab_size, e, padding_idx=padding_idx)
        self.text_pos = nn.Embedding(config.max_length, e)
        self.segment = nn.Embedding(config.segments, e)
        self.text_norm = nn.LayerNorm(e, eps=ctx.norm_eps)
        self.projection = nn.Conv2d(config.channels, e, kernel_size=(ph, pw), stride=(ph, pw))
        self.cls_token = nn.Parameter(torch.zeros(e))
        self.image_pos = nn.Parameter(torch.zeros(1 + self.grid[0] * self.grid[1], e))
        self.modality = nn.Embedding(config.modalities, e)
        self.inputs: tuple[BatchKey, ...] = (
            BatchKey("input_ids", "int64", ("T",), pad=pad if pad is not None else 0,
                     mask="attention_mask", unit="tokens", high=ctx.vocab_size,
                     description="token ids of the text, the sequence's first part"),
            BatchKey("token_type_ids", "int64", ("T",), pad=0, high=config.segments,
                     optional=True, description="token type of each text token (all 0 "
                     "without)"),
            BatchKey("pixel_values", "float32", (config.channels, h, w),
                     description="images, normalised, channels first"),
            BatchKey("pixel_mask", "int64", (h, w), low=0, high=2, optional=True,
                     description="1 = a real pixel, 0 = padding of an image smaller than the "
                     "batch's (ViltImageProcessor's pixel_mask; all real without)"),
        )

    @property
    def word_weight(self) -> torch.Tensor:
        """(V, E): the vocabulary matrix an MLM head ties to."""
        return self.word.weight

    def reset_parameters_tp(self) -> None:
        """After the model's generic init (which knows no Conv2d or bare Parameter): normal(0,
        init_std) for the projection, truncated normal for the class token and positions."""
        nn.init.normal_(self.projection.weight, 0.0, self.init_std)
        nn.init.zeros_(self.projection.bias)
        nn.init.trunc_normal_(self.cls_token, std=self.init_std)
        nn.init.trunc_normal_(self.image_pos, std=self.init_std)

    # -- inputs

    def _pixels(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        for key in ("input_ids", "pixel_values"):
            if key not in inputs:
                raise TpError(f"embedding {self.name} reads input_ids and pixel_values, but the "
                              f"batch has no {key} (it has "
                              f"{', '.join(sorted(inputs)) or 'nothing'})",
                              hint="use an image-text data processor, which produces both")
        pixels = inputs["pixel_values"]
        c, (ph, pw) = self.config.channels, pair(self.config.patch_size)
        if pixels.dim() != 4 or pixels.shape[1] != c or pixels.shape[2] < ph \
                or pixels.shape[3] < pw:
            raise TpError(f"embedding {self.name}: pixel_values have shape "
                          f"{tuple(pixels.shape)}, expected (batch, {c}, height >= {ph}, "
                          f"width >= {pw})", hint=f"set {self.path}.channels and patch_size "
                          "to the data's")
        return pixels

    def _patch_mask(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, gh, gw) bool: a patch is real when its top-left pixel is (HF's nearest resize
        of pixel_mask to the patch grid)."""
        pixels = self._pixels(inputs)
        (ph, pw) = pair(self.config.patch_size)
        gh, gw = pixels.shape[2] // ph, pixels.shape[3] // pw
        mask = inputs.get("pixel_mask")
        if mask is None:
            return torch.ones(pixels.shape[0], gh, gw, dtype=torch.bool, device=pixels.device)
        if mask.shape != (pixels.shape[0], *pixels.shape[2:]):
            raise TpError(f"embedding {self.name}: pixel_mask has shape {tuple(mask.shape)}, "
                          f"pixel_values {tuple(pixels.shape)}: expected (batch, height, width)",
                          hint="the data processor must give one mask pixel per image pixel")
        small = F.interpolate(mask[:, None].float(), size=(gh, gw))  # (B, 1, gh, gw), nearest
        return small[:, 0] > 0.5

    def output_mask(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T + 1 + N) bool, True = real: the text's attention_mask (all real without), the
        class token, the real patches (in training, at most `max_image_length` of them)."""
        ids = inputs.get("input_ids")
        patches = self._patch_mask(inputs).flatten(1)  # (B, N)
        limit = self.config.max_image_length
        if self.training and limit > 0 and patches.shape[1] > limit:
            patches = patches & sampled(patches, limit)
        text = inputs.get("attention_mask")
        text = text.bool() if text is not None else torch.ones_like(ids, dtype=torch.bool)
        cls = torch.ones(patches.shape[0], 1, dtype=torch.bool, device=patches.device)
        return torch.cat((text, cls, patches), dim=1)  # (B, T + 1 + N)

    # -- the two parts

    def text(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, E): word + position + token type, LayerNorm (BERT's embeddings)."""
        ids = inputs["input_ids"]
        t = ids.shape[1]
        if t > self.config.max_length:
            raise TpError(f"embedding {self.name}: {t} text tokens, more than the "
                          f"{self.config.max_length} positions learned",
                          hint=f"truncate the text to {self.config.max_length} tokens in the "
                          f"data processor, or raise {self.path}.max_length")
        types = inputs.get("token_type_ids")
        if types is None:
            types = torch.zeros_like(ids)
        x = self.word(ids) + self.segment(types) + self.text_pos.weight[:t]  # (B, T, E)
        return self.text_norm(x)

    def table(self, size: tuple[int, int]) -> torch.Tensor:
        """(1, E, h, w): the patch position table resized to h x w patches (bilinear, corners
        aligned, as HF), or as learned at its own size."""
        table = self.image_pos[1:].t().reshape(1, -1, *self.grid)  # (1, E, rows, columns)
        if size == self.grid:
            return table
        return F.interpolate(table, size=size, mode="bilinear", align_corners=True)

    def positions(self, mask: torch.Tensor | None, grid: tuple[int, int]) -> torch.Tensor:
        """-> (B | 1, gh * gw, E) for a (gh, gw) grid of patches: the table resized to each
        image's real rows x columns of patches (counted, as HF does, down the first column
        and along the first row of `mask` (B, gh, gw)), zeros over padding patches; without a
        mask, every image is real all over and shares one table (no host sync)."""
        if mask is None:
            return self.table(grid).flatten(2).transpose(1, 2)  # (1, N, E)
        b, (gh, gw) = mask.shape[0], grid
        rows = mask[:, :, 0].sum(dim=1).clamp(min=1).tolist()  # real patch rows per image
        cols = mask[:, 0, :].sum(dim=1).clamp(min=1).tolist()
        out = self.image_pos.new_zeros(b, self.image_pos.shape[1], gh, gw)  # (B, E, gh, gw)
        sizes = list(zip(rows, cols))
        for size in set(sizes):
            grown = self.table(size)  # (1, E, h, w)
            for i in (i for i, s in enumerate(sizes) if s == size):
                out[i, :, :size[0], :size[1]] = grown[0]
        return out.flatten(2).transpose(1, 2)  # (B, N, E)

    def image(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 1 + N, E): class token and patches, with their positions."""
        pixels = self._pixels(inputs)
        weight = self.projection.weight  # (E, C, ph, pw)
        ph, pw = weight.shape[2:]
        b, c = pixels.shape[:2]
        gh, gw = pixels.shape[2] // ph, pixels.shape[3] // pw
        x = pixels[:, :, :gh * ph, :gw * pw].to(weight.dtype).reshape(b, c, gh, ph, gw, pw)
        x = x.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * ph * pw)  # (B, N, C*ph*pw)
        x = F.linear(x, weight.reshape(weight.shape[0], -1), self.projection.bias)  # (B, N, E)
        mask = self._patch_mask(inputs) if inputs.get("pixel_mask") is not None else None
        x = x + self.positions(mask, (gh, gw)).to(x.dtype)
        cls = (self.cls_token + self.image_pos[0]).to(x.dtype).expand(b, 1, -1)  # (B, 1, E)
        return torch.cat((cls, x), dim=1)  # (B, 1 + N, E)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        text = self.text(inputs)  # (B, T, E)
        image = self.image(inputs)  # (B, 1 + N, E)
        kinds = self.modality.weight  # (modalities, E)
        return torch.cat((text + kinds[0], image + kinds[1].to(image.dtype)), dim=1)


def sampled(real: torch.Tensor, limit: int) -> torch.Tensor:
    """(B, N) bool: `limit` of each row's real positions at random (all when it has fewer)."""
    scores = torch.rand(real.shape, device=real.device).masked_fill(~real, 2.0)  # real first
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, N): each position's place in the draw
    return rank < limit
