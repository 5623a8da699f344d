"""The vision recipes train reproducibly: golden losses of vit-tiny and beit-tiny on a fixed set
of real images, and an exact resume of vit-tiny with its augmentations on (RandAugment, mixup /
CutMix, label smoothing), as tests/train does for text.

The images: the first 160 of scikit-learn's digits (8x8, 10 classes) as PNGs in class folders,
stored at the recipes' 28x28. Runs are in-process (`tpcli.verbs`), single-threaded, fp32 on the
CPU. Regenerate a golden list only when a change is meant to alter training, and say why.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from tpcli.plugins import make_plugins
from tpcli.testing.runs import assert_same_losses, quiet_machine, stop_and_resume
from tpcli.testing.runs import logged_losses as losses
from tpcli.verbs import PreprocessRequest, PretrainRequest, preprocess, pretrain

SHORT = ["pretrain.batch_size=16", "pretrain.log_every=1", "pretrain.device=cpu",
         "pretrain.precision=fp32", "pretrain.seed=3"]

# First 10 losses, 20 steps at batch 16, seed 3, torch 2.13 CPU fp32, one thread.
# vit-tiny: a 10-way classifier from ln(10) = 2.30 (a ViT from scratch learns slowly: the mean
# of the last five of 20 steps is 2.32, of the first five 2.47).
VIT_GOLDEN = [2.34945, 2.3863, 2.52821, 2.5463, 2.56271, 2.32859, 2.65945, 2.45028, 2.40614,
              2.32821]
# beit-tiny: 256 visual tokens (its Fashion-MNIST codebook) from ln(256) = 5.55; 5.20 -> 4.30.
BEIT_GOLDEN = [5.55707, 5.26988, 5.1824, 5.06815, 4.90834, 4.86203, 4.70132, 4.62474, 4.55873,
               4.51483]


@pytest.fixture(scope="module", autouse=True)
def quiet() -> Iterator[None]:
    with quiet_machine():
        yield


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    d = load_digits()
    for i in range(160):
        folder = root / f"digit{d.target[i]}"
        folder.mkdir(exist_ok=True)
        Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), mode="L").save(
            folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def data(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The digits preprocessed for each recipe (the `image` and the `beit` processor)."""
    out = {}
    for recipe in ("vit-tiny", "beit-tiny"):
        out[recipe] = tmp_path_factory.mktemp("data") / recipe
        preprocess(PreprocessRequest(recipe, str(digits), out[recipe], []))
    return out


def run(recipe: str, data: Path, out: Path, *overrides: str, plugins: object = None
        ) -> dict[int, float]:
    pretrain(PretrainRequest(recipe, data, out, [*SHORT, *overrides], progress=False,
                             plugins=plugins or make_plugins()))
    return losses(out)


@pytest.mark.parametrize("recipe,golden,uniform,drop", [
    ("vit-tiny", VIT_GOLDEN, math.log(10), 0.1), ("beit-tiny", BEIT_GOLDEN, math.log(256), 0.6)])
def test_golden_losses_and_learning(recipe: str, golden: list[float], uniform: float,
                                    drop: float, data: dict[str, Path], tmp_path: Path) -> None:
    got = run(recipe, data[recipe], tmp_path / "run", "pretrain.steps=20",
              "pretrain.save_every=20")
    assert sorted(got) == list(range(1, 21))
    first = [got[s] for s in range(1, 11)]
    assert first == pytest.approx(golden, abs=2e-4)
    assert got[1] == pytest.approx(uniform, abs=0.25)  # a fresh model predicts near uniformly
    early = sum(got[s] for s in range(1, 6)) / 5
    late = sum(got[s] for s in range(16, 21)) / 5
    assert late < early - drop, got


AUGMENTED = ["data.processor.randaugment=[2,9]", "data.processor.mixup=0.8",
             "data.processor.cutmix=1.0", "data.processor.smoothing=0.1",
             "data.processor.scale=[0.3,1.0]", "pretrain.steps=12", "pretrain.save_every=4",
             "pretrain.keep_last=5", "pretrain.log_every=1"]


def test_vit_tiny_with_augmentation_resumes_exactly(data: dict[str, Path], tmp_path: Path
                                                     ) -> None:
    expected = run("vit-tiny", data["vit-tiny"], tmp_path / "ref", *AUGMENTED)
    assert sorted(expected) == list(range(1, 13))
    # stopped after step 10: steps 9 and 10 ran after the last checkpoint (step 8)
    got = stop_and_resume(lambda out, plugins: run("vit-tiny", data["vit-tiny"], out,
                                                   *AUGMENTED, plugins=plugins),
                          tmp_path / "stopped", 10)
    assert_same_losses(got, expected)

    # the augmentations were on: the run's examples are mixed, with soft labels
    from tpcli.data.arrays import open_store
    from tpcli.recipes import load_recipe
    from tp_vision.image_processor import ImageProcessor

    recipe = load_recipe("vit-tiny", AUGMENTED)
    dataset = ImageProcessor(recipe.processor.options).dataset(open_store(data["vit-tiny"]),
                                                              None, 3)
    assert dataset.transform.randaugment == (2, 9)
    labels = torch.stack([dataset[i]["labels"] for i in range(8)])  # (8, 10) soft targets
    assert labels.shape == (8, 10) and (labels.max(1).values < 0.95).all()
