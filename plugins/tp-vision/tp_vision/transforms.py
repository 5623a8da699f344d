"""Image transforms: the evaluation transform (pixel-equal to Hugging Face's ViT / BEiT image
processors) and the train-time augmentations of DeiT / BEiT fine-tuning (Inception crop, flip,
RandAugment, Mixup / CutMix with label smoothing).

Every random draw of a train transform comes from the `torch.Generator` the caller passes (seeded
from (seed, epoch, index)), never from torch's, numpy's or Python's global generators: the same
generator state gives bit-identical tensors, so a resumed run sees the same augmented examples.
Images travel as (H, W, 3) uint8 arrays and become (3, H, W) float32 tensors at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from tp_vision.images import RESAMPLE, centre_crop, resize, shorter_side_size, to_rgb
from tp_vision.randaugment import RandAugment
from tpcli.errors import DataError

Pair = tuple[int, int]
Triple = tuple[float, float, float]
SQUARE_224 = {"height": 224, "width": 224}
HF_TYPES = {  # image_processor_type -> its class defaults (transformers 5), for absent keys
    "ViTImageProcessor": {"resample": 2, "size": SQUARE_224, "do_center_crop": False},
    "BeitImageProcessor": {"resample": 3, "size": SQUARE_224, "do_center_crop": False,
                           "crop_size": SQUARE_224},
}
HF_NAMES = {"ViTFeatureExtractor": "ViTImageProcessor",
            "BeitFeatureExtractor": "BeitImageProcessor"}
CODES = {int(v): k for k, v in RESAMPLE.items()}  # HF's resample int -> our name


def to_tensor(image: np.ndarray, rescale: float | None, mean: Triple | None,
              std: Triple | None) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in HF's arithmetic: rescaled in float64 then cast to
    float32, normalised in float32 as (x - mean) / std."""
    x = image.transpose(2, 0, 1)  # (3, H, W)
    x = (x.astype(np.float64) * rescale).astype(np.float32) if rescale is not None \
        else x.astype(np.float32)
    if mean is not None and std is not None:
        m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        x = (x - m[:, None, None]) / s[:, None, None]
    return torch.from_numpy(np.ascontiguousarray(x))


def check_resample(name: str) -> None:
    if name not in RESAMPLE:
        raise ValueError(f"resample must be one of {', '.join(RESAMPLE)}, not {name!r}")


def train_tensor(image: np.ndarray, mean: Triple, std: Triple) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 normalised in one float32 pass, x * (1 / 255 / std)
    - mean / std: about half `to_tensor`'s time (17 against 30 us at 28 px), whose float64
    rescale only evaluation needs (to equal HF's pixels bit for bit)."""
    m, s = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    scale = (1 / 255 / s).astype(np.float32)[:, None, None]
    shift = (-m / s).astype(np.float32)[:, None, None]
    x = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)  # (3, H, W), new
    x *= scale
    x += shift
    return torch.from_numpy(x)


def as_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """A PIL image (any mode) or an (H, W), (H, W, 1) or (H, W, 3) uint8 array as (H, W, 3)."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    channels = image.shape[2] if image.ndim == 3 else 1
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or channels not in (1, 3):
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    if channels == 3:
        return image
    return np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)


@dataclass(frozen=True)
class EvalTransform:
    """The evaluation transform of an image classifier: resize, centre crop, rescale, normalise.

    `resize` is an exact (h, w), or an int N for the shorter side to N keeping the aspect (the
    longer side truncated, as torchvision and HF do), or None. Resizing is Pillow's on the uint8
    image (antialiased), then the crop (zero padding when the image is smaller, as HF pads),
    then the rescale in float64 and the normalisation in float32: the same steps as HF's
    ViTImageProcessorPil / BeitImageProcessorPil, so the pixels are equal to theirs."""

    resize: Pair | int | None = (224, 224)
    resample: str = "bilinear"
    crop: Pair | None = None
    rescale: float | None = 1 / 255
    mean: Triple | None = (0.5, 0.5, 0.5)
    std: Triple | None = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        for key in ("resize", "crop", "mean", "std"):  # lists from YAML or JSON are tuples here
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        check_resample(self.resample)
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")

    def __call__(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        """(H, W, 3) uint8 array or PIL image -> (3, h, w) float32."""
        x = as_rgb_array(image)
        if self.resize is not None:
            size = self.resize if isinstance(self.resize, tuple) \
                else shorter_side_size(x.shape[0], x.shape[1], self.resize)
            x = resize(x, size, self.resample)
        if self.crop is not None:
            x = centre_crop(x, self.crop)
        return to_tensor(x, self.rescale, self.mean, self.std)  # (3, h, w)

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> EvalTransform:
        """The transform of a ViT or BEiT `preprocessor_config.json` (as a dict); keys it lacks
        take that processor class's defaults. DataError for what the PIL backend would do that
        this transform does not (another processor type, BEiT's label reduction, padding)."""
        kind = hf_type(config)
        c = {**HF_TYPES[kind], **config}
        for key in ("do_reduce_labels", "do_pad"):
            if c.get(key):
                raise DataError(f"preprocessor_config.json sets {key}=true, which tp's image "
                                "transform does not do", hint=f"set {key} to false (it is for "
                                "segmentation maps, not image classification)")
        mean, std = triple(c.get("image_mean", 0.5)), triple(c.get("image_std", 0.5))
        return cls(
            resize=hf_size(c["size"], "size") if c.get("do_resize", True) else None,
            resample=CODES[int(c["resample"])],
            crop=hf_crop(c.get("crop_size", 224)) if c.get("do_center_crop") else None,
            rescale=float(c.get("rescale_factor", 1 / 255)) if c.get("do_rescale", True) else None,
            mean=mean if c.get("do_normalize", True) else None,
            std=std if c.get("do_normalize", True) else None,
        )

    def to_hf(self, image_processor_type: str = "ViTImageProcessor") -> dict[str, Any]:
        """A `preprocessor_config.json` dict that `transformers.AutoImageProcessor` loads back
        into a processor computing this transform."""
        kind = HF_NAMES.get(image_processor_type, image_processor_type.removesuffix("Pil"))
        if kind not in HF_TYPES:
            raise ValueError(f"image_processor_type must be one of {', '.join(HF_TYPES)}")
        size, crop = self.resize or (224, 224), self.crop or (224, 224)
        out: dict[str, Any] = {
            "image_processor_type": kind,
            "do_resize": self.resize is not None,
            "size": {"height": size[0], "width": size[1]} if isinstance(size, tuple)
            else {"shortest_edge": size},
            "resample": int(RESAMPLE[self.resample]),
            "do_center_crop": self.crop is not None,
            "crop_size": {"height": crop[0], "width": crop[1]},
            "do_rescale": self.rescale is not None,
            "rescale_factor": self.rescale if self.rescale is not None else 1 / 255,
            "do_normalize": self.mean is not None,
            "image_mean": list(self.mean or (0.5, 0.5, 0.5)),
            "image_std": list(self.std or (0.5, 0.5, 0.5)),
        }
        if kind == "BeitImageProcessor":
            out["do_reduce_labels"] = False
        return out


def hf_type(config: dict[str, Any]) -> str:
    """The processor class a preprocessor config names, without the `Pil`/`Fast` suffix."""
    name = config.get("image_processor_type") or config.get("feature_extractor_type") or ""
    name = HF_NAMES.get(name, name.removesuffix("Pil").removesuffix("Fast"))
    if name not in HF_TYPES:
        raise DataError(f"preprocessor_config.json names image processor {name or '(none)'!r}, "
                        "which tp's evaluation transform does not read",
                        hint=f"tp reads {' and '.join(HF_TYPES)} configs")
    return name


def hf_size(size: Any, key: str) -> Pair | int:
    """HF's size: {shortest_edge} -> N; {height, width} -> (h, w); an int -> (N, N) (ViT and
    BEiT default to a square). Read in the PIL backend's order of precedence."""
    if isinstance(size, int):
        return (size, size)
    given = {k for k, v in size.items() if v} if isinstance(size, dict) else set()
    if "shortest_edge" in given and not given & {"longest_edge", "max_height", "max_width"}:
        return int(size["shortest_edge"])
    if {"height", "width"} <= given and not given & {"shortest_edge", "max_height", "max_width"}:
        return (int(size["height"]), int(size["width"]))
    raise DataError(f"preprocessor_config.json has {key}={size!r}, which tp does not read",
                    hint=f"give {key} as {{\"height\": H, \"width\": W}} or "
                    "{\"shortest_edge\": N}")


def hf_crop(size: Any) -> Pair:
    crop = hf_size(size, "crop_size")
    if isinstance(crop, int):
        raise DataError(f"preprocessor_config.json has crop_size={size!r}",
                        hint="give crop_size as {\"height\": H, \"width\": W}")
    return crop


def triple(value: float | list[float]) -> Triple:
    v = [float(value)] * 3 if isinstance(value, (int, float)) else [float(x) for x in value]
    if len(v) != 3:
        raise DataError(f"preprocessor_config.json has a mean or std of {len(v)} values",
                        hint="give one value per RGB channel (3)")
    return (v[0], v[1], v[2])


# ---- train-time augmentation: every draw from the caller's generator `g` -------------------------

def uniform(g: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    """One float64 draw in [low, high) from `g`."""
    return low + (high - low) * torch.rand((), generator=g, dtype=torch.float64).item()


def randint(g: torch.Generator, high: int) -> int:
    """One integer in [0, high) from `g`."""
    return int(torch.randint(high, (), generator=g).item())


def crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
             g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the Inception crop, as torchvision's RandomResizedCrop draws it: up
    to 10 tries of an area fraction in `scale` and a log-uniform aspect (w / h) in `ratio`; the
    first box that fits is placed uniformly; if none fits, the centre crop of the whole image
    clamped to the ratio range."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * uniform(g, *scale)
        aspect = math.exp(uniform(g, log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = randint(g, height - h + 1)
            left = randint(g, width - w + 1)
            return top, left, h, w
    aspect = width / height
    if aspect < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif aspect > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: np.ndarray, size: int, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), *, g: torch.Generator,
                        resample: str = "bicubic") -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: the `crop_box` region, resized by Pillow."""
    top, left, h, w = crop_box(image.shape[0], image.shape[1], scale, ratio, g)
    return resize(np.ascontiguousarray(image[top:top + h, left:left + w]), (size, size), resample)


def hflip(image: np.ndarray, p: float, g: torch.Generator) -> np.ndarray:
    """The image mirrored left-right with probability p (one draw from `g` either way, so the
    draws after it do not depend on p)."""
    flip = uniform(g) < p
    return np.ascontiguousarray(image[:, ::-1]) if flip else image


@dataclass(frozen=True)
class TrainTransform:
    """DeiT / BEiT fine-tuning augmentation: Inception crop to `size` (area fraction in `scale`,
    aspect in `ratio`; scale=None: the whole image resized to size x size instead), horizontal
    flip with probability `hflip`, RandAugment (num_ops, magnitude) or None, then rescale to
    [0, 1] and normalise. A function of the image and the generator's state only."""

    size: int = 224
    scale: tuple[float, float] | None = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    randaugment: tuple[int, int] | None = (2, 9)
    mean: Triple = (0.5, 0.5, 0.5)
    std: Triple = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        check_resample(self.interpolation)
        for key in ("scale", "ratio", "randaugment", "mean", "std"):  # lists from YAML / JSON
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        scale = self.scale or (1.0, 1.0)
        if not (0 < scale[0] <= scale[1] <= 1 and 0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], "
                             f"got scale={self.scale}, ratio={self.ratio}")
        if self.randaugment is not None:
            RandAugment(*self.randaugment)  # its checks now, not at the first image

    def __call__(self, image: np.ndarray, g: torch.Generator) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, size, size) float32."""
        x = as_rgb_array(image)
        if self.scale is None:  # no random crop: the whole image, resized (no draw from g)
            x = resize(x, (self.size, self.size), self.interpolation)
        else:
            x = random_resized_crop(x, self.size, self.scale, self.ratio, g=g,
                                    resample=self.interpolation)
        x = hflip(x, self.hflip, g)
        if self.randaugment is not None:
            x = RandAugment(*self.randaugment)(x, g)
        return train_tensor(x, self.mean, self.std)  # (3, size, size)


# ---- Mixup / CutMix ----------------------------------------------------------------------------

def gamma(shape: float, g: torch.Generator) -> float:
    """One Gamma(shape, 1) draw from `g` (Marsaglia and Tsang's method; torch's own samplers
    take no generator)."""
    if shape < 1:  # Gamma(a) = Gamma(a + 1) * U^(1/a)
        return gamma(shape + 1, g) * (1.0 - uniform(g)) ** (1.0 / shape)
    d = shape - 1 / 3
    c = 1 / math.sqrt(9 * d)
    while True:
        x = torch.randn((), generator=g, dtype=torch.float64).item()
        v = (1 + c * x) ** 3
        if v > 0 and math.log(1.0 - uniform(g)) < 0.5 * x * x + d - d * v + d * math.log(v):
            return d * v


def beta(a: float, b: float, g: torch.Generator) -> float:
    """One Beta(a, b) draw from `g`."""
    x, y = gamma(a, g), gamma(b, g)
    return x / (x + y)


def smooth_one_hot(label: int, classes: int, smoothing: float) -> torch.Tensor:
    """(classes,) float32: 1 - smoothing + smoothing / classes at `label`, smoothing / classes
    elsewhere; sums to 1."""
    off = smoothing / classes
    out = torch.full((classes,), off, dtype=torch.float32)
    out[label] = 1.0 - smoothing + off
    return out


def cutmix_box(height: int, width: int, lam: float, g: torch.Generator,
               ) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): a box of sides sqrt(1 - lam) of the image's, centred uniformly and
    clipped at the borders (so its area can be smaller than 1 - lam of the image's)."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = randint(g, height), randint(g, width)
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
    return y0, y1, x0, x1


def mix(a: torch.Tensor, label_a: int, b: torch.Tensor, label_b: int, classes: int,
        g: torch.Generator, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5, prob: float = 1.0, smoothing: float = 0.1,
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix of example `a` (3, H, W) with its partner `b` (chosen by the caller with
    the same generator), and the soft target (classes,) float32.

    With probability `prob` the pair is mixed (else `a` is returned as is with the smoothed one-hot
    target of `label_a`): by CutMix with probability `switch_prob` when both alphas are > 0 (else
    by whichever is > 0). Mixup draws lam ~ Beta(mixup_alpha, mixup_alpha) and returns
    lam * a + (1 - lam) * b. CutMix draws lam ~ Beta(cutmix_alpha, cutmix_alpha), pastes b's
    `cutmix_box` into a, and corrects lam to the share of a's pixels actually kept (the box is
    clipped at the borders), as timm does. The target is lam * smooth(label_a) + (1 - lam) *
    smooth(label_b) with `smooth_one_hot(.., smoothing)`, so it sums to 1. Per example, so a
    function of (seed, epoch, index); DeiT and BEiT fine-tune with mixup 0.8, cutmix 1.0,
    switch 0.5, smoothing 0.1 (timm's Mixup mixes a batch with its reverse instead)."""
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError("mixup_alpha and cutmix_alpha must be >= 0")
    target_a = smooth_one_hot(label_a, classes, smoothing)
    if uniform(g) >= prob or (mixup_alpha == 0 and cutmix_alpha == 0):
        return a, target_a
    cutmix = cutmix_alpha > 0 and (mixup_alpha == 0 or uniform(g) < switch_prob)
    lam = beta(cutmix_alpha, cutmix_alpha, g) if cutmix else beta(mixup_alpha, mixup_alpha, g)
    if cutmix:
        y0, y1, x0, x1 = cutmix_box(a.shape[-2], a.shape[-1], lam, g)
        out = a.clone()
        out[:, y0:y1, x0:x1] = b[:, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (a.shape[-2] * a.shape[-1])
    else:
        out = a * lam + b * (1.0 - lam)
    target = target_a * lam + smooth_one_hot(label_b, classes, smoothing) * (1.0 - lam)
    return out, target
