"""The patch grid of an image: which patches BEiT masks (`blockwise_mask`) and each patch's
pixels as a vector (`patchify`).

Blockwise masking (BEiT, Bao et al. 2021, Algorithm 1) masks rectangles of patches rather than
scattered single patches: a lone masked patch is too easy to fill in from its neighbours, so the
model would learn interpolation instead of content. Each round draws a block of area s (in
patches) and aspect ratio r, log-uniform in [min_aspect, max_aspect], at a random position, and
masks it, until `count` patches are masked. As in the BEiT code base, a round tries at most
`ATTEMPTS` blocks and accepts one only if it adds at least one patch and at most the patches
still to mask, so the total never exceeds `count`.

Every random number comes from the `torch.Generator` passed in, so a processor that seeds it
from (seed, epoch, index) gets the same mask on resume.
"""

from __future__ import annotations

import math

import torch

from tpcli.errors import TpError

ATTEMPTS = 10  # blocks tried per round before giving up on adding more (BEiT's value)


def blockwise_mask(grid: tuple[int, int], count: int, g: torch.Generator,
                   min_patches: int = 16, max_patches: int | None = None,
                   min_aspect: float = 0.3, max_aspect: float | None = None) -> torch.Tensor:
    """(h*w,) bool, True on masked patches in row-major order: at most `count` of them, in
    blocks of `min_patches` to `max_patches` (default `count`) patches each, with aspect ratios
    between `min_aspect` and `max_aspect` (default 1 / min_aspect)."""
    h, w = grid
    _check(h, w, count, min_patches, max_patches, min_aspect, max_aspect)
    max_patches = count if max_patches is None else max_patches
    max_aspect = 1.0 / min_aspect if max_aspect is None else max_aspect
    log_aspect = (math.log(min_aspect), math.log(max_aspect))
    mask = torch.zeros(h, w, dtype=torch.bool)  # (h, w)
    masked = 0
    while masked < count:
        budget = min(count - masked, max_patches)
        added = _add_block(mask, budget, min_patches, log_aspect, g)
        if added == 0:  # ATTEMPTS blocks in a row fitted nowhere: the grid is as full as it gets
            break
        masked += added
    return mask.reshape(-1)  # (h*w,)


def _add_block(mask: torch.Tensor, budget: int, min_patches: int,
               log_aspect: tuple[float, float], g: torch.Generator) -> int:
    """Mask one block adding 1..`budget` new patches to `mask` (in place); the number added
    (0 when no attempt fitted)."""
    grid_h, grid_w = mask.shape
    for _ in range(ATTEMPTS):
        u = torch.rand(4, generator=g).tolist()  # area, aspect, top, left: one draw per attempt
        # near the end the budget may be below min_patches: the area is then drawn between the
        # two (as BEiT's random.uniform(a, b) does for a > b), and overlap can still make it fit
        area = min_patches + u[0] * (budget - min_patches)
        aspect = math.exp(log_aspect[0] + u[1] * (log_aspect[1] - log_aspect[0]))
        bh = int(round(math.sqrt(area * aspect)))
        bw = int(round(math.sqrt(area / aspect)))
        if not (0 < bh <= grid_h and 0 < bw <= grid_w):
            continue
        top = min(int(u[2] * (grid_h - bh + 1)), grid_h - bh)
        left = min(int(u[3] * (grid_w - bw + 1)), grid_w - bw)
        block = mask[top:top + bh, left:left + bw]  # a view: writing it writes `mask`
        new = bh * bw - int(block.sum())
        if 0 < new <= budget:
            block.fill_(True)
            return new
    return 0


def _check(h: int, w: int, count: int, min_patches: int, max_patches: int | None,
           min_aspect: float, max_aspect: float | None) -> None:
    """Refuse settings that cannot describe a mask, naming the setting."""
    problems = []
    if h <= 0 or w <= 0:
        problems.append(f"the patch grid {h}x{w} is empty")
    if not 0 <= count <= h * w:
        problems.append(f"{count} masked patches do not fit a {h}x{w} grid of {h * w}")
    if min_patches < 1:
        problems.append(f"min_patches={min_patches} (a block needs at least 1 patch)")
    if max_patches is not None and max_patches < min_patches:
        problems.append(f"max_patches={max_patches} is below min_patches={min_patches}")
    if not min_aspect > 0 or (max_aspect is not None and max_aspect < min_aspect):
        problems.append(f"the aspect range [{min_aspect}, {max_aspect}] is not a positive range")
    if problems:
        raise TpError("blockwise masking: " + "; ".join(problems),
                      hint="set the processor's mask options within the patch grid")


def patchify(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C): the patches row by row (the order of a Conv2d patchify
    flattened), each patch's pixels row by row with channels last (MAE's order, so a pixel
    head lines up with Hugging Face ViTMAE's `decoder_pred`)."""
    b, c, height, width = pixels.shape
    p = patch_size
    if height % p or width % p:
        raise TpError(f"an image of {height}x{width} pixels does not split into {p}x{p} patches",
                      hint="resize or crop images to a multiple of the patch size")
    x = pixels.reshape(b, c, height // p, p, width // p, p)  # (B, C, h, p, w, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
    return x.reshape(b, (height // p) * (width // p), p * p * c)  # (B, N, p*p*C)
