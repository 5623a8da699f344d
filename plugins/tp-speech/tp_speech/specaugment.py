"""SpecAugment's frequency and time masks (Park et al. 2019), drawn from a torch.Generator.

Masking bands of filterbank channels and runs of frames makes an ASR model read speech from
context instead of from any one band or moment: cheap, applied to features at load time, and
the augmentation every S2T LibriSpeech recipe trains with.

Semantics (fairseq's SpecAugmentTransform, ESPnet's mask_along_axis, the paper's): each of
`freq_masks` masks draws a width f uniformly in [0, freq_width] and a first channel uniformly
among those where f channels fit; each of `time_masks` masks does the same over frames, its width
capped at time_ratio * frames (the paper's p: a short utterance loses at most that share per
mask). Masks may overlap; a width of 0 masks nothing. Masked values are set to `mask_value`
(0: after utterance CMVN, the mean), or to the utterance's mean when it is None (fairseq).
Widths are inclusive of the bound, as in the paper (fairseq and ESPnet draw below it).

Time warping (the policy's W) is left out: fairseq's S2T recipes set it to 0, and the paper
calls it the most expensive and least influential of the three.

Every draw comes from the generator passed in, a fixed number of draws per call, so a processor
that seeds the generator from (seed, epoch, index) gets the same masks on resume.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from pydantic import Field

from tpcli.errors import TpError
from tpcli.model.module import ModuleConfig


class SpecAugmentConfig(ModuleConfig):
    """SpecAugment's masks; the defaults are the paper's LibriSpeech double policy (LD) without
    time warping, as fairseq's S2T LibriSpeech recipe uses it."""

    freq_masks: int = Field(2, ge=0, description="frequency masks per utterance (m_F)")
    freq_width: int = Field(27, ge=0, description="largest frequency mask, in channels (F)")
    time_masks: int = Field(2, ge=0, description="time masks per utterance (m_T)")
    time_width: int = Field(100, ge=0, description="largest time mask, in frames (T)")
    time_ratio: float = Field(1.0, ge=0.0, le=1.0, description="largest time mask as a share "
                              "of the utterance's frames (p)")
    mask_value: float | None = Field(0.0, description="value of masked features; null: the "
                                     "utterance's mean (fairseq's choice without CMVN)")


class Mask(NamedTuple):
    """One mask: `width` frames (axis 0) or channels (axis 1) from `start`."""

    axis: int
    start: int
    width: int


def draw_masks(frames: int, channels: int, generator: torch.Generator,
               config: SpecAugmentConfig | None = None) -> list[Mask]:
    """The masks of a (frames, channels) utterance: frequency masks first, then time masks,
    two draws each (width, then start) from `generator`."""
    config = config or SpecAugmentConfig()
    masks = []
    freq_cap = min(config.freq_width, channels)
    for _ in range(config.freq_masks):
        masks.append(_draw(1, channels, freq_cap, generator))
    time_cap = min(config.time_width, math.floor(config.time_ratio * frames))
    for _ in range(config.time_masks):
        masks.append(_draw(0, frames, time_cap, generator))
    return masks


def _draw(axis: int, size: int, cap: int, generator: torch.Generator) -> Mask:
    width = int(torch.randint(0, cap + 1, (), generator=generator))
    start = int(torch.randint(0, size - width + 1, (), generator=generator))
    return Mask(axis, start, width)


def spec_augment(features: torch.Tensor, generator: torch.Generator,
                 config: SpecAugmentConfig | None = None) -> torch.Tensor:
    """A masked copy of one utterance's features (T, F); `features` is not changed. The same
    generator state gives the same masks."""
    config = config or SpecAugmentConfig()
    if features.dim() != 2:
        raise TpError(f"spec_augment takes one utterance's features (T, F), got shape "
                      f"{tuple(features.shape)}", hint="apply it per example, before batching")
    out = features.clone()
    value = features.mean() if config.mask_value is None else config.mask_value
    for axis, start, width in draw_masks(*features.shape, generator, config):
        if axis == 0:
            out[start:start + width] = value
        else:
            out[:, start:start + width] = value
    return out
