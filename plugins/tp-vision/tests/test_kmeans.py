"""The kmeans image tokenizer: codebook training against scikit-learn, encoding against numpy,
the codebook file, save / from_saved, and the training command on a folder of PNGs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data as photos
from skimage.transform import resize
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits

from tp_vision.kmeans import (
    KmeansImageTokenizer, _update, inertia, list_images, load_pixels, main, sample_patches,
    train_codebook, write_codebook,
)
from tp_vision.masking import patchify
from tpcli.errors import TpError
from tpcli.plugins import get_plugins


SEEDS = range(3)  # one k-means run is a draw: compare means over seeds, not single runs


def sklearn_mean(x: np.ndarray, k: int) -> float:
    return float(np.mean([KMeans(k, n_init=1, random_state=s).fit(x).inertia_ for s in SEEDS]))


@pytest.mark.parametrize("k", [16, 48])
def test_digits_inertia_close_to_sklearn(k: int) -> None:
    x = load_digits().data.astype(np.float32)  # (1797, 64): 8x8 greyscale digits
    t = torch.from_numpy(x)
    ours = np.mean([inertia(t, train_codebook(t, k, 100, seed=s)) for s in SEEDS])
    assert ours <= 1.03 * sklearn_mean(x, k)  # measured: within 1%


def test_photo_patches_inertia_close_to_sklearn() -> None:
    img = resize(photos.coffee(), (96, 128), anti_aliasing=True).astype(np.float32)
    pixels = torch.from_numpy(img).permute(2, 0, 1)[None] * 2 - 1  # (1, 3, 96, 128) in [-1, 1]
    x = patchify(pixels, 4)[0]  # (768, 48)
    chunks = list(x.split(100))  # the iterable form
    ours = np.mean([inertia(x, train_codebook(chunks, 16, 100, seed=s)) for s in SEEDS])
    assert ours <= 1.03 * sklearn_mean(x.numpy(), 16)  # measured: 859.5 vs 857.7


def test_training_is_deterministic_for_a_seed() -> None:
    x = torch.from_numpy(load_digits().data[:600].astype(np.float32))
    a, b = train_codebook(x, 10, 20, seed=3), train_codebook(x, 10, 20, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, train_codebook(x, 10, 20, seed=4))


def test_repeated_points_get_one_centroid_each() -> None:
    points = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [9.0, 9.0]])
    x = points.repeat(25, 1)  # 4 distinct points, 25 copies each
    codebook = train_codebook(x, 4, 10, seed=0)
    assert inertia(x, codebook) == 0.0
    assert sorted(map(tuple, codebook.tolist())) == sorted(map(tuple, points.tolist()))


def test_empty_cluster_is_reseeded_from_the_farthest_point() -> None:
    x = torch.tensor([[0.0], [1.0], [10.0], [4.0]])
    labels = torch.zeros(4, dtype=torch.long)  # every point in cluster 0: 1 and 2 are empty
    dists = (x[:, 0] - 3.75) ** 2  # to cluster 0's mean
    centers = _update(x, labels, dists, 3)
    assert centers[:, 0].tolist() == [3.75, 10.0, 0.0]  # the two farthest points, farthest first


def make_tokenizer(tmp_path: Path, k: int = 37, p: int = 4, c: int = 3,
                   seed: int = 0) -> KmeansImageTokenizer:
    g = torch.Generator().manual_seed(seed)
    write_codebook(tmp_path / "cb.safetensors", torch.randn(k, p * p * c, generator=g), p)
    return KmeansImageTokenizer(KmeansImageTokenizer.Config(codebook="cb.safetensors",
                                                            patch_size=p), tmp_path)


def brute_force_codes(pixels: np.ndarray, codebook: np.ndarray, p: int) -> np.ndarray:
    """Nearest centroid of each patch by explicit loops: patches row by row, a patch's pixels
    row by row, channels last."""
    b, _, h, w = pixels.shape
    out = np.zeros((b, (h // p) * (w // p)), dtype=np.int64)
    for i in range(b):
        n = 0
        for r in range(0, h, p):
            for col in range(0, w, p):
                v = pixels[i, :, r:r + p, col:col + p].transpose(1, 2, 0).reshape(-1)
                out[i, n] = np.argmin(((codebook - v) ** 2).sum(1))
                n += 1
    return out


def test_encode_images_equals_brute_force(tmp_path: Path) -> None:
    tok = make_tokenizer(tmp_path)
    assert tok.vocab_size == 37 and tok.special_ids == {}
    pixels = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    codes = tok.encode_images(pixels)
    assert codes.shape == (2, 6) and codes.dtype == torch.int64
    expected = brute_force_codes(pixels.double().numpy(), tok.codebook.double().numpy(), 4)
    np.testing.assert_array_equal(codes.numpy(), expected)
    with pytest.raises(TpError, match="1 channel"):
        tok.encode_images(pixels[:, :1])


def test_registered_save_from_saved_and_fingerprint(tmp_path: Path) -> None:
    assert get_plugins().registry.get("tokenizer", "kmeans") is KmeansImageTokenizer
    tok = make_tokenizer(tmp_path / "a")
    saved = tmp_path / "saved"
    tok.save(saved)
    assert sorted(os.listdir(saved)) == ["codebook.safetensors", "tp_tokenizer.json"]
    again = KmeansImageTokenizer.from_saved(saved)
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert torch.equal(again.encode_images(pixels), tok.encode_images(pixels))
    assert again.fingerprint() == tok.fingerprint()
    changed = tok.codebook.clone()
    changed[5, 7] += 1e-3
    write_codebook(tmp_path / "b" / "cb.safetensors", changed, 4)
    other = KmeansImageTokenizer(tok.config, tmp_path / "b")
    assert other.fingerprint() != tok.fingerprint()
    write_codebook(saved / "codebook.safetensors", changed, 4)  # edited after saving
    with pytest.raises(TpError, match="does not match the fingerprint"):
        KmeansImageTokenizer.from_saved(saved)


def test_missing_or_malformed_codebook_is_a_tp_error(tmp_path: Path) -> None:
    def build(name: str, p: int = 4) -> KmeansImageTokenizer:
        config = KmeansImageTokenizer.Config(codebook=name, patch_size=p)
        return KmeansImageTokenizer(config, tmp_path)

    with pytest.raises(TpError, match=r"nope.safetensors does not exist") as e:
        build("nope.safetensors")
    assert "python -m tp_vision.kmeans train" in str(e.value)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(TpError, match="junk.safetensors is not a readable safetensors"):
        build("junk.safetensors")
    save_file({"weights": torch.zeros(3, 48)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(TpError, match="does not hold a float tensor 'codebook'"):
        build("other.safetensors")
    make_tokenizer(tmp_path, p=4)
    with pytest.raises(TpError, match="trained on 4x4 patches, not 2x2"):
        build("cb.safetensors", p=2)


def write_pngs(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(20, 30), (24, 16), (40, 40)]):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    Image.fromarray(rng.integers(0, 256, (18, 18), dtype=np.uint8)).save(folder / "grey.png")


def test_command_writes_a_codebook_that_loads(tmp_path: Path) -> None:
    write_pngs(tmp_path / "imgs")
    out = tmp_path / "books" / "codebook.safetensors"
    cmd = [sys.executable, "-m", "tp_vision.kmeans", "train", "--images", str(tmp_path / "imgs"),
           "--patch-size", "4", "--k", "8", "--size", "16", "--out", str(out), "--sample", "50"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "8 centroids of 48 values" in proc.stdout and "50 patches of 4 images" in proc.stdout
    assert os.listdir(out.parent) == ["codebook.safetensors"]  # no temporary file left behind
    tok = KmeansImageTokenizer(KmeansImageTokenizer.Config(codebook=str(out), patch_size=4), "/")
    assert tok.vocab_size == 8
    codes = tok.encode_images(load_pixels(tmp_path / "imgs" / "img0.png", 16)[None])
    assert codes.shape == (1, 16) and int(codes.max()) < 8


def test_command_reads_a_list_and_refuses_bad_sizes(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    write_pngs(tmp_path / "imgs")
    listing = tmp_path / "train.tsv"
    listing.write_text("cat\timgs/img0.png\ndog\timgs/img2.png\n")
    out = tmp_path / "cb.safetensors"
    args = ["train", "--images", str(listing), "--patch-size", "8", "--k", "4", "--out", str(out)]
    assert main([*args, "--size", "16"]) == 0
    assert "8 patches of 2 images" in capsys.readouterr().out  # all patches: fewer than --sample
    assert KmeansImageTokenizer(KmeansImageTokenizer.Config(codebook=str(out), patch_size=8),
                                ".").vocab_size == 4
    assert main([*args, "--size", "20"]) == 1
    assert "--size 20 is not a multiple of --patch-size 8" in capsys.readouterr().err


def test_sampled_patches_are_patches_of_the_corpus(tmp_path: Path) -> None:
    write_pngs(tmp_path / "imgs")
    images = list_images(tmp_path / "imgs")
    every = torch.cat([patchify(load_pixels(p, 16)[None], 4)[0] for p in images])  # (64, 48)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_patches(images, 16, 4, 64, g), every)  # all, in corpus order
    some = sample_patches(images, 16, 4, 20, g)
    assert some.shape == (20, 48)
    matches = (some[:, None, :] == every[None, :, :]).all(-1)  # (20, 64)
    assert matches.any(1).all() and len(set(matches.float().argmax(1).tolist())) == 20
