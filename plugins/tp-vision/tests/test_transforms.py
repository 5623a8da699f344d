"""tp_vision.transforms and randaugment: pixel parity with HF's image processors on real
photographs, exact determinism in the caller's generator, and each augmentation's semantics."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import transformers
from PIL import Image
from scipy import stats

from tp_vision.images import decode
from tp_vision.randaugment import OPS, RandAugment, apply_op, posterize_bits, solarize_threshold
from tp_vision.transforms import (EvalTransform, TrainTransform, beta, crop_box, hflip, mix,
                                  random_resized_crop)
from tpcli.errors import DataError

IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
CONFIGS = {  # name -> (HF class, config)
    "vit-default": (transformers.ViTImageProcessorPil, {}),
    "beit-default": (transformers.BeitImageProcessorPil, {}),  # 224 exact, bicubic, no crop
    "beit-256-crop-224": (transformers.BeitImageProcessorPil, {
        "size": {"shortest_edge": 256}, "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224}}),
    "vit-160x96-imagenet": (transformers.ViTImageProcessorPil, {
        "size": {"height": 160, "width": 96}, **IMAGENET}),
    "vit-edge-100-padded-crop-lanczos": (transformers.ViTImageProcessorPil, {
        "size": {"shortest_edge": 100}, "resample": 1, "do_center_crop": True,
        "crop_size": {"height": 120, "width": 90}, "do_normalize": False}),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """skimage's photographs as (H, W, 3) uint8; camera (greyscale) through a PNG and decode."""
    path = tmp_path_factory.mktemp("photos") / "camera.png"
    Image.fromarray(skimage.data.camera()).save(path)
    return {"astronaut": skimage.data.astronaut(), "chelsea": skimage.data.chelsea(),
            "coffee": skimage.data.coffee(), "camera": decode(path)}


@pytest.mark.parametrize("name", CONFIGS)
def test_pixels_equal_hf_image_processors(photos: dict[str, np.ndarray], name: str) -> None:
    cls, config = CONFIGS[name]
    hf = cls(**config)
    transform = EvalTransform.from_hf(hf.to_dict())
    for photo, image in photos.items():
        expected = torch.from_numpy(hf(image, return_tensors="np")["pixel_values"][0])
        got = transform(image)
        assert got.dtype == torch.float32 and got.shape == expected.shape, photo
        assert (got - expected).abs().max().item() <= 1e-6, photo
    pil = Image.fromarray(photos["chelsea"])  # a PIL image in gives the same
    assert torch.equal(transform(pil), transform(photos["chelsea"]))


@pytest.mark.parametrize("name,kind", [("beit-256-crop-224", "BeitImageProcessor"),
                                       ("vit-160x96-imagenet", "ViTImageProcessor"),
                                       ("vit-edge-100-padded-crop-lanczos", "ViTImageProcessor")])
def test_to_hf_loads_back_into_the_same_transform(tmp_path: Path, photos: dict[str, np.ndarray],
                                                  name: str, kind: str) -> None:
    transform = EvalTransform.from_hf(CONFIGS[name][0](**CONFIGS[name][1]).to_dict())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(transform.to_hf(kind)))
    hf = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert type(hf).__name__ == kind + "Pil"
    image = photos["coffee"]
    expected = torch.from_numpy(hf(image, return_tensors="np")["pixel_values"][0])
    assert (transform(image) - expected).abs().max().item() <= 1e-6
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert EvalTransform.from_hf(saved) == transform


def test_from_hf_defaults_and_legacy_configs() -> None:
    beit = EvalTransform.from_hf({"image_processor_type": "BeitImageProcessor"})
    assert beit == EvalTransform(resize=(224, 224), resample="bicubic", crop=None)
    legacy = EvalTransform.from_hf({"feature_extractor_type": "ViTFeatureExtractor", "size": 384,
                                    "resample": 3, "do_normalize": False})
    assert legacy == EvalTransform(resize=(384, 384), resample="bicubic", mean=None, std=None)


def test_from_hf_refuses_what_it_cannot_do() -> None:
    with pytest.raises(DataError, match="do_reduce_labels=true") as e:
        EvalTransform.from_hf({"image_processor_type": "BeitImageProcessor",
                               "do_reduce_labels": True})
    assert "false" in (e.value.hint or "")
    with pytest.raises(DataError, match="'CLIPImageProcessor'") as e:
        EvalTransform.from_hf({"image_processor_type": "CLIPImageProcessor"})
    assert "ViTImageProcessor" in (e.value.hint or "")
    with pytest.raises(DataError, match="longest_edge"):
        EvalTransform.from_hf({"image_processor_type": "ViTImageProcessor",
                               "size": {"shortest_edge": 10, "longest_edge": 20}})


# ---- train-time -------------------------------------------------------------------------

def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_train_transform_is_a_function_of_the_generator_only(photos: dict[str, np.ndarray]) -> None:
    t = TrainTransform(size=32, randaugment=(2, 9))
    image = photos["chelsea"]
    global_state = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    a, b, c = t(image, gen(0)), t(image, gen(0)), t(image, gen(1))
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), global_state[0])  # no global RNG was touched
    assert np.array_equal(np.random.get_state()[1], global_state[1])
    assert random.getstate() == global_state[2]
    outs = [t(image, gen(s)) for s in range(8)]
    assert len({o.sum().item() for o in outs}) == 8
    plain = TrainTransform(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, randaugment=None,
                           mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(photos["astronaut"], gen(0))
    assert plain.min() >= 0 and plain.max() <= 1  # rescaled to [0, 1] before normalising
    whole = TrainTransform(size=32, scale=None, hflip=0.0, randaugment=None, mean=[0.0] * 3,
                           std=[1.0] * 3, interpolation="bilinear")(photos["astronaut"], gen(0))
    expected = EvalTransform(resize=(32, 32), mean=(0.0,) * 3, std=(1.0,) * 3)(photos["astronaut"])
    # scale=None: the evaluation resize; normalised in one float32 pass (evaluation rescales in
    # float64 to equal HF's pixels bit for bit), so equal to a float32 rounding
    torch.testing.assert_close(whole, expected, rtol=0, atol=1e-6)


def test_train_transform_checks_its_options() -> None:
    with pytest.raises(ValueError, match="resample must be one of"):
        TrainTransform(interpolation="cubic")
    with pytest.raises(ValueError, match="scale"):
        TrainTransform(scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="magnitude"):
        TrainTransform(randaugment=(2, 40))
    assert TrainTransform(randaugment=[2, 9], mean=[0.1, 0.2, 0.3]).randaugment == (2, 9)


def test_crop_box_area_and_aspect_stay_in_bounds() -> None:
    g, height, width = gen(0), 300, 451
    areas, aspects = [], []
    for _ in range(2000):
        top, left, h, w = crop_box(height, width, (0.08, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        areas.append(h * w / (height * width))
        aspects.append(w / h)
    areas, aspects = np.array(areas), np.array(aspects)
    assert areas.min() >= 0.08 * 0.97 and areas.max() <= 1.0
    assert aspects.min() >= 0.75 * 0.97 and aspects.max() <= 4 / 3 * 1.03  # up to rounding
    assert 0.3 < areas.mean() < 0.6 and aspects.min() < 0.8 and aspects.max() > 1.25  # spread
    # No try can fit (a 4:1 box in a square), so the fallback: the centre crop clamped to 3:1.
    assert crop_box(90, 90, (0.9, 1.0), (3.0, 4.0), g) == (30, 0, 30, 90)


def test_random_resized_crop_is_the_resized_box(photos: dict[str, np.ndarray]) -> None:
    image = photos["coffee"]
    out = random_resized_crop(image, 48, g=gen(5))
    top, left, h, w = crop_box(*image.shape[:2], (0.08, 1.0), (3 / 4, 4 / 3), gen(5))
    box = Image.fromarray(image[top:top + h, left:left + w])
    expected = np.array(box.resize((48, 48), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out, expected)


def test_hflip_is_an_exact_mirror_with_probability_p() -> None:
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(hflip(image, 1.0, gen(0)), image[:, ::-1])
    assert hflip(image, 0.0, gen(0)) is image
    g = gen(1)
    flips = sum(not np.array_equal(hflip(image, 0.5, g), image) for _ in range(400))
    assert 160 < flips < 240


# ---- RandAugment ops ---------------------------------------------------------------------------

RAMP = np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16)] * 3, axis=2)  # every value once


@pytest.mark.parametrize("m", [0.0, 0.3, 0.7, 1.0])
def test_solarize_inverts_at_and_above_the_threshold(m: float) -> None:
    t = solarize_threshold(m)
    expected = np.where(RAMP >= t, 255 - RAMP, RAMP)
    np.testing.assert_array_equal(apply_op(RAMP, "solarize", m), expected)


@pytest.mark.parametrize("m,bits", [(0.0, 8), (0.3, 7), (0.5, 6), (1.0, 4)])
def test_posterize_keeps_the_top_bits(m: float, bits: int) -> None:
    assert posterize_bits(m) == bits
    mask = (0xFF << (8 - bits)) & 0xFF
    np.testing.assert_array_equal(apply_op(RAMP, "posterize", m), RAMP & mask)


def test_ops_at_magnitude_zero_are_exact_identities() -> None:
    image = np.random.default_rng(1).integers(0, 256, (12, 18, 3), dtype=np.uint8)
    for name in ("identity", "rotate", "shear_x", "shear_y", "translate_x", "translate_y",
                 "brightness", "color", "contrast", "sharpness", "posterize", "solarize"):
        np.testing.assert_array_equal(apply_op(image, name, 0.0), image, err_msg=name)


def test_geometric_and_colour_ops() -> None:
    image = np.random.default_rng(2).integers(1, 256, (20, 331, 3), dtype=np.uint8)
    shifted = apply_op(image, "translate_x", 1.0)  # 150/331 of the width: 150 pixels
    np.testing.assert_array_equal(shifted[:, :181], image[:, 150:])
    assert (shifted[:, 181:] == 0).all()  # filled with black
    square = np.full((40, 40, 3), 200, np.uint8)
    rotated = apply_op(square, "rotate", 1.0)  # 30 degrees: the corners leave the frame
    assert (rotated[0, 0] == 0).all() and (rotated[20, 20] == 200).all()
    dark = apply_op(square, "brightness", -1.0)  # factor 0.1
    assert (dark == 20).all()
    grey = apply_op(image, "color", -1.0 / 0.9)  # factor 0: greyscale
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    low = (RAMP // 4 + 50).astype(np.uint8)  # values 50..113
    stretched = apply_op(low, "autocontrast", 0.0)
    assert np.abs(stretched - (low.astype(float) - 50) * 255 / 63).max() <= 1  # 50..113 -> 0..255
    narrow = np.random.default_rng(4).integers(100, 132, (64, 64, 3), dtype=np.uint8)
    flat = apply_op(narrow, "equalize", 0.0)  # 32 values spread over 0..255, order kept
    assert flat.min() == 0 and flat.max() == 255 and len(np.unique(flat[..., 0])) >= 30
    order = np.argsort(narrow[..., 0].ravel(), kind="stable")
    assert (np.diff(flat[..., 0].ravel()[order].astype(int)) >= 0).all()


def test_randaugment_draws_only_from_the_generator() -> None:
    image = np.random.default_rng(3).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    ra = RandAugment(num_ops=2, magnitude=9)
    assert np.array_equal(ra(image, gen(0)), ra(image, gen(0)))
    outs = {ra(image, gen(s)).tobytes() for s in range(30)}
    assert len(outs) > 20  # 14 ops x 2 x signs: mostly distinct
    np.testing.assert_array_equal(RandAugment(num_ops=0)(image, gen(0)), image)
    jitter = RandAugment(magnitude=9, num_magnitude_bins=11, magnitude_std=0.5)
    assert np.array_equal(jitter(image, gen(4)), jitter(image, gen(4)))
    assert len(OPS) == 14
    with pytest.raises(ValueError, match="magnitude"):
        RandAugment(magnitude=31)


# ---- Mixup / CutMix ----------------------------------------------------------------------------

def test_beta_draws_follow_the_beta_distribution() -> None:
    for alpha in (0.8, 1.0):
        g = gen(0)
        draws = [beta(alpha, alpha, g) for _ in range(2000)]
        assert stats.kstest(draws, stats.beta(alpha, alpha).cdf).pvalue > 0.01


def test_mix_with_prob_zero_is_the_smoothed_one_hot_and_the_same_image() -> None:
    a, b = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    out, target = mix(a, 3, b, 5, 10, gen(0), prob=0.0, smoothing=0.1)
    assert torch.equal(out, a)
    expected = torch.full((10,), 0.01)
    expected[3] = 0.91  # 1 - 0.1 + 0.1 / 10
    assert torch.allclose(target, expected, atol=0, rtol=1e-6)


def test_mix_targets_sum_to_one_and_are_deterministic() -> None:
    a, b = torch.rand(3, 16, 16), torch.rand(3, 16, 16)
    for seed in range(50):
        out, target = mix(a, 1, b, 2, 5, gen(seed))
        assert abs(target.sum().item() - 1.0) < 1e-6 and target.min() >= 0.1 / 5 - 1e-7
        again = mix(a, 1, b, 2, 5, gen(seed))
        assert torch.equal(out, again[0]) and torch.equal(target, again[1])


def test_cutmix_lambda_is_the_box_area() -> None:
    a, b = torch.zeros(3, 20, 30), torch.ones(3, 20, 30)
    clipped = 0
    for seed in range(60):
        out, target = mix(a, 0, b, 1, 2, gen(seed), mixup_alpha=0.0, smoothing=0.0)
        pasted = out[0].mean().item()  # the share of pixels that came from b
        assert torch.equal(out[0], out[1]) and set(out.unique().tolist()) <= {0.0, 1.0}
        assert target[1].item() == pytest.approx(pasted, abs=1e-6)
        assert target[0].item() == pytest.approx(1 - pasted, abs=1e-6)
        box = out[0]
        clipped += bool(box[0].any() or box[-1].any() or box[:, 0].any() or box[:, -1].any())
    assert clipped > 0  # some boxes met a border, where the area correction matters


def test_mixup_blends_with_lambda_and_switch_prob_chooses() -> None:
    a, b = torch.rand(3, 6, 6), torch.rand(3, 6, 6)
    for seed in range(10):
        out, target = mix(a, 0, b, 1, 2, gen(seed), cutmix_alpha=0.0, smoothing=0.0)
        lam = target[0].item()
        assert 0 < lam < 1 and torch.allclose(out, a * lam + b * (1 - lam), atol=1e-6)
        always_cut, _ = mix(a, 0, b, 1, 2, gen(seed), switch_prob=1.0)
        assert ((always_cut == a) | (always_cut == b)).all()  # pasted, not blended
