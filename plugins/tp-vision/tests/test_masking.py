"""Blockwise masking (BEiT Algorithm 1) and patchify."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from tp_vision.masking import blockwise_mask, patchify
from tpcli.errors import TpError


def draws(n: int, seed: int = 0, grid: tuple[int, int] = (14, 14), count: int = 75,
          **kw: object) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    return [blockwise_mask(grid, count, g, **kw).reshape(grid).numpy() for _ in range(n)]


def in_masked_square(m: np.ndarray) -> float:
    """Fraction of masked patches that lie inside a fully masked 2x2 square."""
    square = m[:-1, :-1] & m[1:, :-1] & m[:-1, 1:] & m[1:, 1:]
    covered = np.zeros_like(m)
    for dy in (0, 1):
        for dx in (0, 1):
            covered[dy:dy + square.shape[0], dx:dx + square.shape[1]] |= square
    return float(covered[m].mean())


def test_beit_base_setting_masks_close_to_count_never_more() -> None:
    counts = [int(m.sum()) for m in draws(200)]
    assert max(counts) <= 75
    assert abs(np.mean(counts) - 75) < 3  # measured: 74.5
    assert min(counts) >= 60


def test_masked_regions_are_blocks_not_scattered_patches() -> None:
    masks = draws(100, seed=1)
    components = [ndimage.label(m)[1] for m in masks]
    # a scattered mask of 75 of 196 patches has ~25 components and ~17% of its patches inside
    # a masked 2x2 square; blocks of >= 16 patches give ~1.4 and ~99%
    assert np.mean(components) < 3
    assert np.mean([in_masked_square(m) for m in masks]) > 0.9
    fills = []
    for m in masks:
        labels, n = ndimage.label(m)
        for i, box in enumerate(ndimage.find_objects(labels), start=1):
            fills.append((labels[box] == i).mean())
    assert np.mean(fills) > 0.7  # measured 0.82: each component is mostly its bounding box


def test_same_generator_state_same_mask() -> None:
    a, b = draws(20, seed=5), draws(20, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = draws(20, seed=6)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_global_rng_is_untouched() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    draws(5)
    assert torch.equal(torch.rand(3), expected)


def test_small_grid() -> None:
    masks = draws(200, grid=(4, 4), count=6, min_patches=2)
    counts = [int(m.sum()) for m in masks]
    assert max(counts) <= 6 and np.mean(counts) > 5.5
    assert all(m.shape == (4, 4) for m in masks)


def test_max_patches_caps_each_block() -> None:
    g = torch.Generator().manual_seed(0)
    # one round with max_patches=4 on an empty grid masks one block of at most 4 patches
    for _ in range(50):
        m = blockwise_mask((8, 8), 4, g, min_patches=2, max_patches=4)
        assert 0 < int(m.sum()) <= 4


def test_bad_settings_are_tp_errors() -> None:
    g = torch.Generator()
    with pytest.raises(TpError, match="do not fit"):
        blockwise_mask((4, 4), 17, g)
    with pytest.raises(TpError, match="max_patches=2 is below min_patches=16"):
        blockwise_mask((14, 14), 75, g, max_patches=2)


def test_patchify_row_major_channels_last() -> None:
    pixels = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    out = patchify(pixels, 2)  # (2, 6, 12): a 2x3 grid of 2x2 patches
    assert out.shape == (2, 6, 12)
    # patch 4 is grid row 1, column 1: pixels rows 2..3, columns 2..3; channels last
    expected = pixels[1, :, 2:4, 2:4].permute(1, 2, 0).reshape(-1)
    assert torch.equal(out[1, 4], expected)
    with pytest.raises(TpError, match="does not split"):
        patchify(pixels, 4)
