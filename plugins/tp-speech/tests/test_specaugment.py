"""SpecAugment: mask counts and width bounds, masked values, determinism in the generator, and
the width distribution (uniform over [0, W], the time cap at p * frames)."""

from __future__ import annotations

import math
from typing import Iterator

import pytest
import torch
from pydantic import ValidationError

from tp_speech.specaugment import SpecAugmentConfig, draw_masks, spec_augment
from tpcli.errors import TpError


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Framing, FFTs and small matmuls: on a machine shared with other jobs a second torch thread
    only waits (the fbank tests: 9 s with one thread, 57 s with two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def features(frames: int = 300, channels: int = 80) -> torch.Tensor:
    """Values in [10, 11): none equals a mask value of 0 or their mean by chance."""
    return 10 + torch.rand(frames, channels, generator=torch.Generator().manual_seed(99))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_defaults_are_the_librispeech_policy() -> None:
    c = SpecAugmentConfig()
    assert (c.freq_masks, c.freq_width, c.time_masks, c.time_width) == (2, 27, 2, 100)
    assert c.time_ratio == 1.0 and c.mask_value == 0.0


@pytest.mark.parametrize("frames", [300, 120, 40, 1])
def test_masked_values_are_exactly_the_masks(frames: int) -> None:
    """Over 200 seeds: 2 frequency masks of width <= 27 and 2 time masks of width <=
    min(100, frames), inside the utterance; the output is mask_value exactly on their union
    and the input everywhere else; the input is not changed."""
    x = features(frames)
    before = x.clone()
    for seed in range(200):
        masks = draw_masks(frames, 80, gen(seed))
        assert [m.axis for m in masks] == [1, 1, 0, 0]
        for axis, start, width in masks:
            size, cap = (80, 27) if axis == 1 else (frames, min(100, frames))
            assert 0 <= width <= cap and 0 <= start and start + width <= size
        out = spec_augment(x, gen(seed))
        expected = torch.zeros(frames, 80, dtype=torch.bool)
        for axis, start, width in masks:
            if axis == 0:
                expected[start:start + width] = True
            else:
                expected[:, start:start + width] = True
        assert torch.equal(out == 0.0, expected)
        assert torch.equal(out[~expected], x[~expected])
    assert torch.equal(x, before)


def test_the_same_seed_gives_the_same_masks() -> None:
    """Same generator seed, same output (bit for bit); the generator's state moves on, so the
    next call masks differently; other seeds give other masks."""
    x = features()
    assert torch.equal(spec_augment(x, gen(7)), spec_augment(x, gen(7)))
    g = gen(7)
    first, second = spec_augment(x, g), spec_augment(x, g)
    assert not torch.equal(first, second)
    outputs = {tuple(draw_masks(300, 80, gen(seed))) for seed in range(50)}
    assert len(outputs) == 50


def test_widths_are_uniform_over_zero_to_the_bound() -> None:
    """5000 draws of widths: every value 0..W occurs (both ends included, as in the paper),
    with means W/2 within 3 standard errors; the time width is capped at floor(p * frames)."""
    draws = 5000
    config = SpecAugmentConfig(freq_masks=1, time_masks=1, freq_width=10, time_width=100,
                               time_ratio=0.2)
    g = gen(0)
    freq, time = [], []
    for _ in range(draws):
        f, t = draw_masks(200, 80, g, config)
        freq.append(f.width)
        time.append(t.width)
    assert set(freq) == set(range(11))
    assert set(time) == set(range(41))  # floor(0.2 * 200) = 40 < 100
    for widths, bound in ((freq, 10), (time, 40)):
        mean = sum(widths) / draws
        stderr = math.sqrt(((bound + 1) ** 2 - 1) / 12 / draws)
        assert abs(mean - bound / 2) < 3 * stderr


def test_mask_value_none_is_the_utterances_mean() -> None:
    x = features(50, 20)
    out = spec_augment(x, gen(3), SpecAugmentConfig(mask_value=None, freq_width=5,
                                                     time_width=10))
    masks = draw_masks(50, 20, gen(3), SpecAugmentConfig(freq_width=5, time_width=10))
    masked = torch.zeros(50, 20, dtype=torch.bool)
    for axis, start, width in masks:
        if axis == 0:
            masked[start:start + width] = True
        else:
            masked[:, start:start + width] = True
    assert masked.any()
    assert torch.all(out[masked] == x.mean()) and torch.equal(out[~masked], x[~masked])


def test_no_masks_and_zero_widths_change_nothing() -> None:
    x = features(30, 8)
    for config in (SpecAugmentConfig(freq_masks=0, time_masks=0),
                   SpecAugmentConfig(freq_width=0, time_width=0),
                   SpecAugmentConfig(freq_masks=0, time_ratio=0.0)):
        assert torch.equal(spec_augment(x, gen(1), config), x)


def test_a_bound_wider_than_the_features_is_capped() -> None:
    """freq_width 27 over 8 channels: a mask may cover all 8, never more."""
    widths = {m.width for s in range(300) for m in draw_masks(30, 8, gen(s)) if m.axis == 1}
    assert widths == set(range(9))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(TpError, match=r"\(T, F\)"):
        spec_augment(torch.zeros(2, 30, 80), gen(0))
    with pytest.raises(ValidationError):
        SpecAugmentConfig(time_ratio=1.5)
    with pytest.raises(ValidationError):
        SpecAugmentConfig(freq_masks=-1)
