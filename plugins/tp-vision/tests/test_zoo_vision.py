"""The vision zoo cards (zoo/vit-base.yaml, zoo/beit-large.yaml) end to end against tp's local
Hugging Face Hub (`tpcli.testing.hub_server.HubServer`) serving SMALL random models under the
cards' repository ids, with the files the cards list (BEiT's as pytorch_model.bin with the
relative_position_index buffers old checkpoints hold, the processors in the legacy
feature-extractor format the published repositories use): a pull delivers a tp checkpoint by
default whose logits on a real photograph equal transformers' (pixels from tp's evaluation
transform vs HF's processor); `tp finetune --init zoo:vit-base --task image_classification` on a
tiny folder of digit images (3 classes against the card's 5-class head: the core starts the head
fresh and says so in init.json) and `tp infer` with the result."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from tpcli.plugins import get_plugins
from tpcli.testing.convert import perturbed
from tpcli.testing.hub_server import HubServer, private_zoo

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            image_size=32, patch_size=8, num_labels=5)
FEATURE_EXTRACTOR = {"do_normalize": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                     "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 32}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A private TP_HOME, Hugging Face cache and card folder, and the local Hub activated."""
    private_zoo(tmp_path, monkeypatch)
    with HubServer() as server, server.activate():
        yield server


def publish(hub: HubServer, repo: str, model: Any, folder: Path, processor: dict[str, Any],
            pickled: bool = False) -> None:
    """`model` saved as the card's repository holds it, served at `main`."""
    model.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    if pickled:  # beit-large's card lists pytorch_model.bin
        from safetensors.torch import load_file

        weights = load_file(str(folder / "model.safetensors"))
        for i in range(model.config.num_hidden_layers):  # buffers old checkpoints saved
            weights[f"beit.encoder.layer.{i}.attention.attention.relative_position_bias."
                    "relative_position_index"] = torch.zeros(17, 17, dtype=torch.long)
        torch.save(weights, folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    hub.add_folder(repo, folder)


def pull(name: str) -> dict[str, Any]:
    from tpcli.zoo import ZooRequest, zoo

    return zoo(ZooRequest("pull", name=name, progress=False))


def logits_on_a_photo(result: dict[str, Any], hf_cls: Any) -> tuple[float, float]:
    """(pixel diff, logits diff) of the pulled tp checkpoint vs transformers reading the pulled
    Hugging Face snapshot, on skimage's coffee photograph."""
    from skimage import data as photos

    from tpcli.train.checkpoint import load_checkpoint

    plugins = get_plugins()
    loaded = load_checkpoint(Path(result["path"]), plugins)
    task_cls = plugins.registry.get("task", "image_classification")
    task = task_cls(task_cls.Config(), None)
    task.bind(loaded.recipe, None)
    photo = photos.coffee()
    mine = task.eval_transform()(photo)[None]  # (1, 3, 32, 32)
    snapshot = hf_snapshot(result["name"])
    processor = transformers.AutoImageProcessor.from_pretrained(str(snapshot))
    theirs = processor(images=photo, return_tensors="pt")["pixel_values"]
    ref = hf_cls.from_pretrained(str(snapshot)).eval()
    with torch.no_grad():
        want = ref(pixel_values=theirs).logits
        got = loaded.model.eval().predict({"pixel_values": mine})["cls"]
    assert want.std() > 0.1
    return float((mine - theirs).abs().max()), float((got - want).abs().max())


def hf_snapshot(name: str) -> Path:
    """The Hugging Face snapshot folder a pull of `name` filled (`--format hf` is that folder:
    nothing is downloaded again)."""
    from tpcli.zoo import ZooRequest, zoo

    return Path(zoo(ZooRequest("pull", name=name, format="hf", progress=False))["path"])


def digits(root: Path) -> tuple[Path, Path]:
    """Train and dev folders of 8x8 digit images (sklearn), classes zero, one, two, as PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    names = ("zero", "one", "two")
    for split, rows in (("train", range(0, 60)), ("dev", range(60, 90))):
        for i in rows:
            if d.target[i] < 3:
                path = root / split / names[d.target[i]] / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((d.images[i] * 15).astype(np.uint8)).save(path)
    return root / "train", root / "dev"


def test_vit_card_pulls_as_tp_fine_tunes_and_infers(hub: HubServer, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from tpcli.cli.main import main

    torch.manual_seed(0)
    model = perturbed(transformers.ViTForImageClassification(transformers.ViTConfig(**TINY)),
                      scale=0.1)
    publish(hub, "google/vit-base-patch16-224", model, tmp_path / "vit",
            {**FEATURE_EXTRACTOR, "feature_extractor_type": "ViTFeatureExtractor"})
    result = pull("vit-base")
    assert result["format"] == "tp"  # converted on the way in, by default
    pixels, logits = logits_on_a_photo(result, transformers.ViTForImageClassification)
    assert pixels <= 1e-6 and logits <= 1e-5, (pixels, logits)

    train, dev = digits(tmp_path / "digits")
    out = tmp_path / "ft"
    capsys.readouterr()
    code = main(["finetune", "--init", "zoo:vit-base", "--task", "image_classification",
                 "--train", str(train), "--dev", str(dev), "--out", str(out), "--no-progress",
                 "finetune.steps=3", "finetune.batch_size=8", "finetune.task.workers=1"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "init.json").read_text())
    assert report["checkpoint"] == result["path"]
    # 3 classes against the card's 5: the head starts fresh, the body is the card's
    assert sorted(report["fresh"]) == ["targets.cls.classifier.bias",
                                       "targets.cls.classifier.weight"]
    assert sorted(report["unused"]) == ["targets.cls.classifier.bias",
                                        "targets.cls.classifier.weight"]
    predictions = tmp_path / "predictions.jsonl"
    code = main(["infer", str(out), "--input", str(dev), "--out", str(predictions)])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == sum(1 for _ in dev.rglob("*.png"))
    assert {r["label"] for r in rows} <= {"zero", "one", "two"}
    assert all(len(r["top"]) == 3 for r in rows)
    # the pulled classifier itself keeps the card's classes (id2label): `tp infer` runs on it
    listing = tmp_path / "images.txt"  # unlabelled: the digits are not the card's classes
    listing.write_text("\n".join(str(p) for p in sorted(dev.rglob("*.png"))) + "\n")
    code = main(["infer", result["path"], "--input", str(listing), "--out", str(predictions)])
    assert code == 0, capsys.readouterr().err
    names = set(model.config.id2label.values())
    assert {json.loads(line)["label"] for line in predictions.read_text().splitlines()} <= names


def test_beit_card_pulls_pickled_weights_as_tp(hub: HubServer, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.BeitConfig(**TINY, use_relative_position_bias=True,
                                     use_mean_pooling=True, layer_scale_init_value=1e-5)
    model = perturbed(transformers.BeitForImageClassification(config), scale=0.1)
    publish(hub, "microsoft/beit-large-patch16-224-pt22k-ft22k", model, tmp_path / "beit",
            {**FEATURE_EXTRACTOR, "feature_extractor_type": "BeitFeatureExtractor",
             "crop_size": 32, "do_center_crop": False, "reduce_labels": False}, pickled=True)
    result = pull("beit-large")
    assert result["format"] == "tp"
    info = json.loads((Path(result["path"]) / "checkpoint.json").read_text())
    assert info["converted_from"]["architecture"] == "BeitForImageClassification"
    assert info["converted_from"]["source"].startswith("zoo:beit-large (hf://microsoft/")
    pixels, logits = logits_on_a_photo(result, transformers.BeitForImageClassification)
    assert pixels <= 1e-6 and logits <= 1e-5, (pixels, logits)
