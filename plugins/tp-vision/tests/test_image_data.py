"""`tp preprocess` on image corpora: the three layouts, the stored pixels, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from tpcli.data.arrays import ArrayReader



@pytest.fixture()
def recipe(tmp_path: Path, tiny_vit: Callable[..., Path]) -> Path:
    return tiny_vit(tmp_path / "recipe", labels=3)


def digits_folder(root: Path, per_class: int = 4, classes: int = 3) -> list[np.ndarray]:
    """scikit-learn's digits as 8x8 greyscale PNGs in class folders; returns them in order."""
    from sklearn.datasets import load_digits

    d = load_digits()
    out = []
    for c in range(classes):
        (root / f"digit{c}").mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(d.target == c)[:per_class]):
            pixels = (d.images[i] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / f"digit{c}" / f"{j}.png")
            out.append(pixels)
    return out


def test_folder_layout_is_stored_as_rgb_at_the_recipe_size(tp: Callable[..., Any], recipe: Path,
                                                           tmp_path: Path) -> None:
    images = digits_folder(tmp_path / "corpus")
    r = tp("preprocess", str(recipe), "--corpus", str(tmp_path / "corpus"), "--out",
           str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr
    store = ArrayReader(tmp_path / "data")
    assert len(store) == 12 and store.meta["contents"]["classes"] == ["digit0", "digit1", "digit2"]
    np.testing.assert_array_equal(store.column("label"), np.repeat([0, 1, 2], 4))
    first = store.example(0)["pixels"]  # (16, 16, 3): the 8x8 digit upsampled, grey as RGB
    assert first.shape == (16, 16, 3) and (first[..., 0] == first[..., 2]).all()
    expected = np.asarray(Image.fromarray(images[0]).resize((16, 16), Image.BICUBIC))
    assert np.abs(first[..., 0].astype(int) - expected.astype(int)).max() <= 1


def test_tsv_layout_and_its_errors(tp: Callable[..., Any], recipe: Path, tmp_path: Path) -> None:
    digits_folder(tmp_path / "corpus")
    tsv = tmp_path / "list.tsv"
    tsv.write_text("label\tpath\nzero\tcorpus/digit0/0.png\none\tcorpus/digit1/0.png\n")
    r = tp("preprocess", str(recipe), "--corpus", str(tsv), "--out", str(tmp_path / "d1"))
    assert r.returncode == 0, r.stderr
    assert ArrayReader(tmp_path / "d1").meta["contents"]["classes"] == ["one", "zero"]
    tsv.write_text("zero\tcorpus/digit0/0.png\none\tcorpus/nothere.png\n")
    r = tp("preprocess", str(recipe), "--corpus", str(tsv), "--out", str(tmp_path / "d2"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{tsv}:2: image corpus/nothere.png does not exist" in r.stderr
    assert not (tmp_path / "d2").exists()


def test_empty_class_folder_is_an_error(tp: Callable[..., Any], recipe: Path,
                                        tmp_path: Path) -> None:
    digits_folder(tmp_path / "corpus")
    (tmp_path / "corpus" / "digit9").mkdir()
    r = tp("preprocess", str(recipe), "--corpus", str(tmp_path / "corpus"), "--out",
           str(tmp_path / "d"))
    assert r.returncode == 1 and "class folder" in r.stderr and "digit9 holds no images" in r.stderr
    assert not (tmp_path / "d").exists()


def test_truncated_image_raises_or_is_skipped_and_counted(tp: Callable[..., Any], recipe: Path,
                                                          tmp_path: Path) -> None:
    digits_folder(tmp_path / "corpus")
    bad = tmp_path / "corpus" / "digit1" / "9.jpg"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    r = tp("preprocess", str(recipe), "--corpus", str(tmp_path / "corpus"), "--out",
           str(tmp_path / "d"))
    assert r.returncode == 1 and "9.jpg" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists()
    r = tp("preprocess", str(recipe), "--corpus", str(tmp_path / "corpus"), "--out",
           str(tmp_path / "d"), "data.processor.on_error=skip")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["examples"] == 12 and meta["contents"]["skipped"] == 1
    assert "9.jpg" in meta["contents"]["skipped_files"][0]
    assert "skipped=1" in r.stdout + r.stderr
