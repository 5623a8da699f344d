"""The `beit` processor: BEiT's crop + flip, blockwise mask and visual-token labels per (seed,
epoch, index); its errors; and `tp preprocess` + `tp pretrain` of the beit-tiny recipe on real
photographs (scikit-image's), whose loss goes down.

Unit tests use 56x56 tiles of the photographs in 4x4 patches: a 14x14 grid of 196 patches with
BEiT's 75 masked, and a 32-centroid k-means codebook trained on the same tiles.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tp_vision.beit_processor import BeitDataset, BeitProcessor, BeitProcessorConfig
from tp_vision.kmeans import KmeansConfig, KmeansImageTokenizer, train_codebook, write_codebook
from tp_vision.masking import blockwise_mask, patchify
from tp_vision.transforms import hflip, random_resized_crop, to_tensor
from tpcli.data.batch import IGNORE
from tpcli.data.masking import example_generator
from tpcli.errors import ConfigError, DataError, TpError

SIZE, PATCH, COUNT, K = 56, 4, 75, 32
GRID = SIZE // PATCH  # 14
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera")


def tiles(side: int, per_photo: int = 4) -> list[np.ndarray]:
    """(side, side, 3) uint8 tiles of scikit-image's photographs: each photo's shorter side
    resized to 2 * side, then its four corner tiles."""
    import skimage.data

    out = []
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        img = Image.fromarray(photo).convert("RGB")
        w, h = img.size
        img = img.resize((round(w * 2 * side / min(w, h)), round(h * 2 * side / min(w, h))))
        a = np.asarray(img)
        corners = ((0, 0), (0, a.shape[1] - side), (a.shape[0] - side, 0),
                   (a.shape[0] - side, a.shape[1] - side))
        out += [np.ascontiguousarray(a[y:y + side, x:x + side]) for y, x in corners[:per_photo]]
    return out


class Store:
    """Stored images as a dataset reads them."""

    def __init__(self, pixels: list[np.ndarray]) -> None:
        self.pixels, self.meta, self.folder = pixels, {}, "test images"

    def __len__(self) -> int:
        return len(self.pixels)

    def example(self, index: int) -> dict[str, np.ndarray]:
        return {"pixels": self.pixels[index], "label": np.int64(0)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: on a shared machine torch's thread pool only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return tiles(SIZE)


@pytest.fixture(scope="module")
def tokenizer(images: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory
              ) -> KmeansImageTokenizer:
    x = torch.stack([to_tensor(a, 1 / 255, (0.5,) * 3, (0.5,) * 3) for a in images])
    codebook = train_codebook(patchify(x, PATCH).reshape(-1, PATCH * PATCH * 3), K, 20, seed=0)
    folder = tmp_path_factory.mktemp("codebook")
    write_codebook(folder / "codebook.safetensors", codebook, PATCH)
    return KmeansImageTokenizer(KmeansConfig(codebook="codebook.safetensors", patch_size=PATCH),
                                folder)


def dataset(images: list[np.ndarray], tokenizer: object, seed: int = 3, **options: object
            ) -> BeitDataset:
    config = BeitProcessorConfig(size=SIZE, patch_size=PATCH, num_masking_patches=COUNT,
                                 **options)
    return BeitProcessor(config).dataset(Store(images), tokenizer, seed)


def test_registered_as_processor_beit() -> None:
    from tpcli.plugins import get_plugins

    cls = get_plugins().registry.get("processor", "beit")
    assert cls is BeitProcessor and cls.corpus_format == "records"


def test_same_seed_epoch_and_index_give_the_same_example(images, tokenizer) -> None:
    a, b = dataset(images, tokenizer), dataset(images, tokenizer)
    for i in (0, 5, 23):
        x, y = a[i], b[i]
        assert x.keys() == y.keys() == {"pixel_values", "mim_mask", "mim_labels"}
        for key in x:
            assert torch.equal(x[key], y[key]), (i, key)
    b.set_epoch(1)
    assert not torch.equal(a[5]["mim_mask"], b[5]["mim_mask"])  # a new epoch, a new mask
    assert not torch.equal(dataset(images, tokenizer, seed=4)[5]["pixel_values"],
                           a[5]["pixel_values"])


def test_example_is_beit_augmentation_then_mask_from_the_example_generator(images,
                                                                            tokenizer) -> None:
    """Crop (bicubic), flip, normalise, then the blockwise mask: in this order from the
    generator of (seed, epoch, index), and nothing else drawn (no RandAugment)."""
    ds = dataset(images, tokenizer, scale=(0.3, 1.0), hflip=0.5)
    ds.set_epoch(2)
    for i in (1, 7):
        g = example_generator(3, 2, i)
        crop = hflip(random_resized_crop(images[i], SIZE, (0.3, 1.0), (3 / 4, 4 / 3), g=g), 0.5, g)
        mask = blockwise_mask((GRID, GRID), COUNT, g, min_patches=16, min_aspect=0.3)
        got = ds[i]
        assert torch.equal(got["pixel_values"], to_tensor(crop, 1 / 255, (0.5,) * 3, (0.5,) * 3))
        assert torch.equal(got["mim_mask"], mask)


def test_mask_counts(images, tokenizer) -> None:
    ds = dataset(images, tokenizer)
    counts = []
    for i in range(len(ds)):
        ex = ds[i]
        mask, labels = ex["mim_mask"], ex["mim_labels"]
        assert mask.shape == (GRID * GRID,) and mask.dtype == torch.bool
        assert torch.equal(labels != IGNORE, mask)  # a label exactly where a patch is masked
        counts.append(int(mask.sum()))
    # BEiT's Algorithm 1 never masks more than asked, and stops short only when no block of
    # 16+ patches adds few enough new ones (over 2,000 masks: mean 74.5, 66% exactly 75, min 68)
    assert max(counts) <= COUNT and min(counts) >= 60, counts
    assert sum(counts) / len(counts) >= 72 and counts.count(COUNT) >= len(counts) // 3, counts


def brute_force_tokens(pixels: torch.Tensor, codebook: torch.Tensor) -> np.ndarray:
    """(3, S, S) normalised pixels -> (N,) index of the nearest centroid of each patch, row by
    row, channels last within a patch: float64 numpy, one patch at a time."""
    x = pixels.double().numpy().transpose(1, 2, 0)  # (S, S, 3)
    c = codebook.double().numpy()
    out = []
    for r in range(GRID):
        for q in range(GRID):
            patch = x[r * PATCH:(r + 1) * PATCH, q * PATCH:(q + 1) * PATCH].reshape(-1)
            out.append(int(((c - patch) ** 2).sum(1).argmin()))
    return np.array(out)


def test_labels_are_the_nearest_centroids_where_masked(images, tokenizer) -> None:
    ds = dataset(images, tokenizer)
    seen: set[int] = set()
    for i in (0, 9, 17):
        ex = ds[i]
        tokens = brute_force_tokens(ex["pixel_values"], tokenizer.codebook)
        mask = ex["mim_mask"].numpy()
        labels = ex["mim_labels"].numpy()
        np.testing.assert_array_equal(labels[mask], tokens[mask])
        assert (labels[~mask] == IGNORE).all()
        seen |= set(tokens[mask].tolist())
    assert len(seen) > 6  # real photographs: the labels are not one token


def test_tokenizer_sees_its_own_normalisation(images, tokenizer) -> None:
    """With ImageNet's mean / std for the model, the kmeans tokens are still those of the
    image normalised with 0.5 / 0.5 (the codebook's space): the same crop, the same labels."""
    plain = dataset(images, tokenizer)
    imagenet = dataset(images, tokenizer, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    a, b = plain[4], imagenet[4]
    assert torch.equal(a["mim_labels"], b["mim_labels"])
    assert not torch.allclose(a["pixel_values"], b["pixel_values"])
    unnormalised = b["pixel_values"] * torch.tensor([0.229, 0.224, 0.225])[:, None, None] \
        + torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    torch.testing.assert_close(unnormalised, a["pixel_values"] * 0.5 + 0.5, atol=1e-6, rtol=0)


def test_batch_keys_collate_and_a_fresh_beit_predicts_uniformly(images, tokenizer) -> None:
    """A batch follows the declared keys, and a fresh BEiT built for the same grid reads it:
    near-uniform predictions give ln(K)."""
    from tpcli.api import build_model
    from tpcli.recipes import load_recipe
    from tpcli.train.loop import check_inputs

    ds = dataset(images, tokenizer)
    keys = {k.name: k for k in ds.batch_keys()}
    assert keys["pixel_values"].shape == (3, SIZE, SIZE) and keys["pixel_values"].unit == "images"
    assert keys["mim_mask"].shape == (GRID * GRID,) and keys["mim_mask"].dtype == "bool"
    assert keys["mim_labels"].shape == (GRID * GRID,) and keys["mim_labels"].high == K
    batch = ds.collate([ds[i] for i in range(6)])
    assert batch["pixel_values"].shape == (6, 3, SIZE, SIZE)
    assert batch["mim_labels"].dtype == torch.int64 and batch["mim_mask"].shape == (6, 196)

    recipe = load_recipe("beit-tiny", [
        f"model.embedding.masked_patch.image_size={SIZE}", f"model.encoder.grid=[{GRID},{GRID}]",
        "model.encoder.layers=1", f"data.processor.size={SIZE}"])
    torch.manual_seed(0)
    model = build_model(recipe, tokenizer)
    check_inputs(model, ds.batch_keys())
    with torch.no_grad():
        out = model(batch)
    assert out.loss.item() == pytest.approx(math.log(K), abs=0.25)
    assert out.metrics["mim.count"].item() == int(batch["mim_mask"].sum())

    # the model's patch size must be the processor's: a 7x7 grid reads 64 mask flags, not 196
    wrong = build_model(load_recipe("beit-tiny", [
        f"model.embedding.masked_patch.image_size={SIZE}", "model.embedding.masked_patch."
        "patch_size=8", "model.encoder.grid=[7,7]", "model.encoder.layers=1"]), tokenizer)
    with pytest.raises(TpError, match=r"reads 'mim_mask' of shape \(49,\) per example, but the "
                       r"data's examples have \(196,\)"):
        check_inputs(wrong, ds.batch_keys())


class TextTokenizer:
    special_ids = {"pad": 0}
    vocab_size = 10


def test_a_recipe_without_an_image_tokenizer_is_told_what_to_add(images, tokenizer) -> None:
    for tok, said in ((None, "the recipe has no tokenizer"),
                      (TextTokenizer(), "a text tokenizer (TextTokenizer)")):
        with pytest.raises(DataError, match="predicts visual tokens") as e:
            dataset(images, tok)
        assert said in e.value.message and "python -m tp_vision.kmeans train" in e.value.hint
        with pytest.raises(DataError, match="an image tokenizer"):
            BeitProcessor(BeitProcessorConfig(size=SIZE, patch_size=PATCH)).records(
                "nowhere", tok, 1)
    with pytest.raises(DataError, match=r"one token per 4x4 patch, but the beit processor cuts "
                       r"8x8 patches") as e:
        BeitProcessor(BeitProcessorConfig(size=SIZE, patch_size=8, num_masking_patches=20,
                                          min_patches=4)).dataset(Store(images), tokenizer, 0)
    assert "patch_size to 4" in e.value.hint


def test_options_that_do_not_fit_the_grid_fail_validation() -> None:
    from tpcli.recipes import load_recipe

    with pytest.raises(ConfigError) as e:
        load_recipe("beit-tiny", ["data.processor.num_masking_patches=50"])
    assert "num_masking_patches 50 is more than the 49 patches of a 7x7 grid" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_recipe("beit-tiny", ["data.processor.patch_size=5"])
    assert "image_size 28 is not a multiple of patch_size 5" in str(e.value)
    with pytest.raises(ConfigError, match="min_patches 30 is more than num_masking_patches 20"):
        load_recipe("beit-tiny", ["data.processor.min_patches=30"])


# ---------------------------------------------------------------------- end to end, real `tp`


def tp(*args: str) -> subprocess.CompletedProcess:
    # one thread: on a shared machine torch's thread pool can make a tiny model 20x slower
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TP_PEAK_FLOPS": "1e12", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tpcli.cli.main", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_preprocess_and_pretrain_beit_tiny_on_photographs(tmp_path: Path) -> None:
    """The shipped recipe (its Fashion-MNIST codebook) on 24 tiles of six photographs."""
    corpus = tmp_path / "photos"
    for i, tile in enumerate(tiles(96)):
        folder = corpus / PHOTOS[i // 4]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(tile).save(folder / f"{i}.png")
    data, run = tmp_path / "data", tmp_path / "run"
    r = tp("preprocess", "beit-tiny", "--corpus", str(corpus), "--out", str(data))
    assert r.returncode == 0, r.stderr
    assert "examples=24" in r.stdout + r.stderr
    r = tp("pretrain", "beit-tiny", "--data", str(data), "--out", str(run), "--no-progress",
           "pretrain.steps=30", "pretrain.batch_size=16", "pretrain.lr=2e-3",
           "pretrain.warmup_steps=4", "pretrain.log_every=1", "pretrain.save_every=30",
           "model.encoder.layers=2")
    assert r.returncode == 0, r.stderr
    logs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in logs if "loss" in m]
    assert len(losses) == 30
    assert losses[0] == pytest.approx(math.log(256), abs=0.1)  # 256 visual tokens, uniform
    early, late = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert late < early - 1.5, losses  # measured: 5.13 -> 2.99
    assert "images_per_s" in logs[-1] and 0.1 < logs[-1]["mim.acc"] <= 1
