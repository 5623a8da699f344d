"""`tp finetune --task image_classification` and `tp infer` on real images (scikit-learn's
digits as class folders): metrics against scikit-learn, predictions on disk, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score



def digits(root: Path, start: int, per_class: int, classes: tuple[int, ...] = (0, 1, 7)) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in classes:
        folder = root / f"d{c}"
        folder.mkdir(parents=True)
        for i in np.flatnonzero(d.target == c)[start:start + per_class]:
            Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), mode="L").save(
                folder / f"{i}.png")


@pytest.fixture(scope="module")
def finetuned(tp: Callable[..., Any], tiny_vit: Callable[..., Path],
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imgcls")
    tiny_vit(root / "recipe", labels=2, processor=", scale: [0.8, 1.0], hflip: 0.0",
             extra="finetune: {epochs: 30, batch_size: 16, lr: 3.0e-3, warmup_ratio: 0.0}\n")
    digits(root / "train", 0, 30)
    digits(root / "dev", 30, 15)
    r = tp("finetune", str(root / "recipe"), "--task", "image_classification", "--train",
           str(root / "train"), "--dev", str(root / "dev"), "--out", str(root / "run"))
    assert r.returncode == 0, r.stderr
    return root


def test_finetune_learns_and_scores_like_sklearn(tp: Callable[..., Any], finetuned: Path) -> None:
    result = json.loads((finetuned / "run" / "results.json").read_text())
    preds = [json.loads(line) for line in
             (finetuned / "run" / "predictions" / "dev.jsonl").read_text().splitlines()]
    gold = [Path(p["path"]).parent.name for p in preds]
    acc = accuracy_score(gold, [p["label"] for p in preds])
    assert result["dev"]["dev"]["accuracy"]["mean"] == pytest.approx(acc)
    assert acc >= 0.8  # 3 classes: chance is 1/3
    assert all(len(p["top"]) == 3 and abs(sum(t["probability"] for t in p["top"]) - 1) < 1e-4
               for p in preds)  # fewer than 5 classes: all of them, probabilities summing to 1


def test_infer_on_a_list_of_paths(tp: Callable[..., Any], finetuned: Path, tmp_path: Path) -> None:
    files = sorted((finetuned / "dev").rglob("*.png"))[:4]
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(str(f) for f in files) + "\n")
    r = tp("infer", str(finetuned / "run"), "--input", str(listing), "--out",
           str(tmp_path / "out.jsonl"))
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [g["path"] for g in got] == [str(f) for f in files]
    assert {g["label"] for g in got} <= {"d0", "d1", "d7"}


def test_unseen_dev_class_and_missing_image_are_errors(tp: Callable[..., Any], finetuned: Path,
                                                       tmp_path: Path) -> None:
    digits(tmp_path / "dev", 50, 2, classes=(0, 3))
    r = tp("finetune", str(finetuned / "recipe"), "--task", "image_classification", "--train",
           str(finetuned / "train"), "--dev", str(tmp_path / "dev"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "class 'd3' does not occur in the training images" in r.stderr
    assert not (tmp_path / "o").exists()
    listing = tmp_path / "missing.tsv"
    listing.write_text("d0\tnope.png\n")
    r = tp("infer", str(finetuned / "run"), "--input", str(listing), "--out",
           str(tmp_path / "p.jsonl"))
    assert r.returncode == 1 and "image nope.png does not exist" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "p.jsonl").exists()


def test_a_beit_recipe_fine_tunes_with_its_own_image_settings() -> None:
    """A BEiT pre-training recipe (processor `beit`) binds: the task evaluates at its image size
    with its normalisation and trains with its crop and flip."""
    from tpcli.errors import TpError
    from tpcli.plugins import get_plugins
    from tpcli.recipes import load_recipe

    plugins = get_plugins()
    cls = plugins.registry.get("task", "image_classification")
    task = cls(cls.Config(), None)
    recipe = load_recipe("beit-tiny", [], plugins)
    task.bind(recipe, plugins.registry)
    beit = recipe.processor.options
    assert task.image_size == (beit.image_size or beit.size)
    assert (task.processor.mean, task.processor.scale) == (beit.mean, beit.scale)
    assert task.eval_transform().resize == (task.image_size, task.image_size)
    with pytest.raises(TpError, match="`image` or `beit`, not 'bert'"):
        task.bind(load_recipe("bert-tiny", [], plugins), plugins.registry)
