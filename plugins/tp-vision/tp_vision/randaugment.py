"""RandAugment (Cubuk et al., 2020) on Pillow, every draw from the caller's `torch.Generator`.

The op set and magnitude scale are torchvision's `RandAugment`: `num_ops` ops drawn uniformly
(with replacement) from OPS, each at `magnitude` of `num_magnitude_bins` - 1 steps (9 of 30 by
default), with a random sign for the geometric and enhancement ops. timm's `rand-m9-mstd0.5`
(DeiT) counts magnitude out of 10 and jitters it: `num_magnitude_bins=11, magnitude_std=0.5`
comes close (its op list differs a little: timm adds invert and solarize-add, and posterizes
harder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from tp_vision.images import RESAMPLE

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Style:
    """How the geometric ops fill and resample."""

    fill: RGB = (0, 0, 0)
    resample: str = "nearest"


def affine(img: Image.Image, data: tuple[float, ...], style: Style) -> Image.Image:
    """Pillow's affine map: output pixel (x, y) reads input (a x + b y + c, d x + e y + f)."""
    return img.transform(img.size, Image.Transform.AFFINE, data, resample=RESAMPLE[style.resample],
                         fillcolor=style.fill)


def enhance(kind: type) -> Callable[[Image.Image, float, Style], Image.Image]:
    """An ImageEnhance op at factor 1 + 0.9 m (m in [-1, 1]: 0.1 .. 1.9)."""
    return lambda img, m, style: kind(img).enhance(1.0 + 0.9 * m)


def shift(side: int, m: float) -> int:
    """Whole pixels a translation moves: up to 150/331 of the side (torchvision's largest)."""
    return int(150 / 331 * side * m)


def posterize_bits(m: float) -> int:
    """Bits kept by posterize: 8 at m = 0 down to 4 at m = 1 (torchvision's table)."""
    return 8 - int(round(4 * m))


def solarize_threshold(m: float) -> float:
    """Solarize inverts pixels >= this: 256 at m = 0 (none, where torchvision's 255 inverts
    white) down to 0 at m = 1 (all)."""
    return 256.0 * (1.0 - m)


# name -> (op(image, m, style), signed). m is the magnitude as a fraction of the largest in
# [0, 1] (negated for a signed op half of the time); the largest are torchvision's.
OPS: dict[str, tuple[Callable[[Image.Image, float, Style], Image.Image], bool]] = {
    "identity": (lambda img, m, s: img, False),
    "shear_x": (lambda img, m, s: affine(img, (1, 0.3 * m, 0, 0, 1, 0), s), True),
    "shear_y": (lambda img, m, s: affine(img, (1, 0, 0, 0.3 * m, 1, 0), s), True),
    "translate_x": (lambda img, m, s: affine(img, (1, 0, shift(img.width, m), 0, 1, 0), s), True),
    "translate_y": (lambda img, m, s: affine(img, (1, 0, 0, 0, 1, shift(img.height, m)), s), True),
    "rotate": (lambda img, m, s: img.rotate(30.0 * m, resample=RESAMPLE[s.resample],
                                            fillcolor=s.fill), True),
    "brightness": (enhance(ImageEnhance.Brightness), True),
    "color": (enhance(ImageEnhance.Color), True),
    "contrast": (enhance(ImageEnhance.Contrast), True),
    "sharpness": (enhance(ImageEnhance.Sharpness), True),
    "posterize": (lambda img, m, s: ImageOps.posterize(img, posterize_bits(m)), False),
    "solarize": (lambda img, m, s: ImageOps.solarize(img, solarize_threshold(m)), False),
    "autocontrast": (lambda img, m, s: ImageOps.autocontrast(img), False),
    "equalize": (lambda img, m, s: ImageOps.equalize(img), False),
}


def apply_op(image: np.ndarray, name: str, m: float, style: Style = Style()) -> np.ndarray:
    """One op at signed magnitude fraction m in [-1, 1] on an (H, W, 3) uint8 array."""
    op, _ = OPS[name]
    return np.array(op(Image.fromarray(image), m, style))


@dataclass(frozen=True)
class RandAugment:
    """`num_ops` random ops at `magnitude` (of num_magnitude_bins - 1 steps); with
    magnitude_std > 0 each op's magnitude is jittered by a normal draw of that std and clipped
    to the scale. Geometric ops fill with `fill` and resample with `interpolation`."""

    num_ops: int = 2
    magnitude: float = 9
    num_magnitude_bins: int = 31
    magnitude_std: float = 0.0
    fill: RGB = (0, 0, 0)
    interpolation: str = "nearest"

    def __post_init__(self) -> None:
        top = self.num_magnitude_bins - 1
        if self.num_ops < 0 or not 0 <= self.magnitude <= top or top < 1:
            raise ValueError(f"RandAugment needs num_ops >= 0 and 0 <= magnitude <= {top}, got "
                             f"num_ops={self.num_ops}, magnitude={self.magnitude}")
        if self.interpolation not in RESAMPLE:
            raise ValueError(f"interpolation must be one of {', '.join(RESAMPLE)}")

    def __call__(self, image: np.ndarray, g: torch.Generator) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W, 3) uint8."""
        img, style, names = Image.fromarray(image), Style(self.fill, self.interpolation), list(OPS)
        top = self.num_magnitude_bins - 1
        for _ in range(self.num_ops):
            op, signed = OPS[names[int(torch.randint(len(names), (), generator=g))]]
            level = self.magnitude
            if self.magnitude_std > 0:
                jitter = torch.randn((), generator=g, dtype=torch.float64).item()
                level = min(max(level + self.magnitude_std * jitter, 0.0), top)
            m = level / top
            if signed and torch.randint(2, (), generator=g).item():
                m = -m
            img = op(img, m, style)
        return np.array(img)
