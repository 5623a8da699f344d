"""The multimodal demo (`make demo-multimodal`) end to end on a slice: scripts/clip_demo.py writes
real captioned images, `tp preprocess clip-tiny` stores them, `tp pretrain clip-tiny` trains a
few steps, and `tp infer --task zero_shot` / `--task retrieval` score the run. Checked: the
corpus's counts, pixels and captions (every word in the shipped vocabulary, which the script
rebuilds byte for byte), and that each task's predictions are the ranking of cosines computed
here by hand from the checkpoint's two towers, its metrics what its predictions give."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tp_vision.images import decode, fit
from tpcli.cli.main import main

ROOT = Path(__file__).resolve().parents[3]
TRAIN, HELDOUT, CROPS = 48, 30, 2


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("clip_demo", ROOT / "scripts" / "clip_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(path: Path) -> list[list[str]]:
    """A TSV's lines after its header, split at the tab."""
    return [line.split("\t") for line in path.read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The slice's corpus, preprocessed, and a 4-step run of clip-tiny on it."""
    script = load_script()
    root = tmp_path_factory.mktemp("clip_demo")
    out = root / "demo"
    script.main([str(out), "--train", str(TRAIN), "--heldout", str(HELDOUT), "--crops",
                 str(CROPS)])
    assert main(["preprocess", "clip-tiny", "--corpus", str(out / "train.tsv"), "--out",
                 str(root / "data")]) == 0
    assert main(["pretrain", "clip-tiny", "--data", str(root / "data"), "--out",
                 str(root / "run"), "pretrain.steps=4", "pretrain.batch_size=16",
                 "pretrain.warmup_ratio=0.25", "pretrain.save_every=4"]) == 0
    return {"script": script, "out": out, "root": root, "run": root / "run"}


def test_the_corpus(demo: dict[str, Any]) -> None:
    from tpcli import load_recipe, load_tokenizer

    script, out = demo["script"], demo["out"]
    train = rows(out / "train.tsv")
    photos = rows(out / "photos.tsv")
    heldout = rows(out / "heldout.tsv")
    assert len(train) == TRAIN + CROPS * len(script.PHOTOS)
    assert len(photos) == len(script.PHOTOS) == 14 and len(heldout) == HELDOUT
    # each Fashion-MNIST image is the official one, captioned from its own class
    images, labels = script.fashion("train", TRAIN)
    for text, path in train:
        if path.startswith("train/photos/"):
            name = Path(path).stem.rsplit("-", 1)[0]
            assert text == script.PHOTOS[name]
            assert Image.open(out / path).size == (script.PHOTO_SIDE, script.PHOTO_SIDE)
            continue
        i = int(Path(path).stem)
        name = script.CLASSES[labels[i]]
        assert text in {t.format(name) for t in script.TEMPLATES}
        np.testing.assert_array_equal(np.asarray(Image.open(out / path)), images[i])
    images, labels = script.fashion("test", HELDOUT)
    assert [label for label, _ in heldout] == [script.CLASSES[y] for y in labels]
    np.testing.assert_array_equal(np.asarray(Image.open(out / heldout[7][1])), images[7])
    # the shipped vocabulary is the script's, and it spells every caption and prompt whole
    shipped = ROOT / "recipes" / "_tokenizers" / "clip-tiny-wordpiece.txt"
    assert shipped.read_text() == "\n".join(script.vocabulary()) + "\n"
    tokenizer = load_tokenizer(load_recipe("clip-tiny"))
    unk = tokenizer.special_ids["unk"]
    texts = [t for t, _ in photos] + [t.format(c) for t in script.TEMPLATES
                                      for c in script.CLASSES]
    assert all(unk not in ids for ids in tokenizer.encode_batch(texts))
    # seeded: the same crops again
    picture = script.photo("coffee")
    a, b = (script.crops(picture, 3, np.random.default_rng(5)) for _ in range(2))
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def towers(run: Path) -> tuple[Any, Any, Any]:
    """(embed texts, embed image files, scale) by hand from the run's checkpoint."""
    from tpcli import load_checkpoint

    loaded = load_checkpoint(run)
    model, tokenizer = loaded.model, loaded.tokenizer
    clr = model.targets["clr"]
    start, end = tokenizer.special_ids["cls"], tokenizer.special_ids["sep"]

    def texts(captions: list[str]) -> torch.Tensor:
        ids = [[start, *e, end] for e in tokenizer.encode_batch(captions)]
        x = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)  # (N, T)
        for i, e in enumerate(ids):
            x[i, :len(e)] = torch.tensor(e)
        with torch.no_grad():
            return clr.embed_text(model.stream_0({"input_ids": x, "attention_mask": x > 0}))

    def images(paths: list[Path]) -> torch.Tensor:
        side = loaded.recipe.processor.options.size  # the model's image_size too
        # stored as tp preprocess stores an image (shorter side to `side`, centre square)
        pixels = [torch.from_numpy(fit(decode(p), side).astype(np.float32) / 255)
                  for p in paths]  # (S, S, 3) each
        x = (torch.stack(pixels).permute(0, 3, 1, 2) - 0.5) / 0.5  # (N, 3, S, S): mean, std
        with torch.no_grad():
            return clr.embed_image(model.stream_1({"pixel_values": x}))

    return texts, images, clr.scale().item()


def infer(demo: dict[str, Any], task: str, input: str, capsys: pytest.CaptureFixture[str]
          ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the summary's numbers, the predictions) of `tp infer RUN --task TASK --json`."""
    capsys.readouterr()
    out = demo["root"] / f"{task}.jsonl"
    assert main(["infer", str(demo["run"]), "--task", task, "--input", str(demo["out"] / input),
                 "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return summary, [json.loads(line) for line in out.read_text().splitlines()]


def test_zero_shot_is_what_the_towers_say(demo: dict[str, Any],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    script, out = demo["script"], demo["out"]
    summary, predictions = infer(demo, "zero_shot", "heldout.tsv", capsys)
    heldout = rows(out / "heldout.tsv")
    # by hand: each class the mean of its prompts' unit vectors (the recipe's templates)
    texts, images, scale = towers(demo["run"])
    classes = sorted(script.CLASSES)  # zero_shot's default: the input's labels, sorted
    prompts = texts([t.format(c) for c in classes for t in script.TEMPLATES])
    classes_emb = F.normalize(prompts.view(len(classes), len(script.TEMPLATES), -1).mean(1),
                              dim=-1)  # (C, P)
    logits = scale * images([out / p for _, p in heldout]) @ classes_emb.t()  # (N, C)
    probs = logits.softmax(-1)
    top = probs.topk(5, dim=-1)
    for p, i, v in zip(predictions, top.indices.tolist(), top.values.tolist()):
        assert [t["label"] for t in p["top"]] == [classes[c] for c in i]
        assert [t["probability"] for t in p["top"]] == pytest.approx(v, abs=1e-5)
    labels = [label for label, _ in heldout]
    top1 = np.mean([p["label"] == y for p, y in zip(predictions, labels)])
    top5 = np.mean([y in [t["label"] for t in p["top"]] for p, y in zip(predictions, labels)])
    assert summary["accuracy"] == pytest.approx(top1, abs=1e-9)
    assert summary["top5"] == pytest.approx(top5, abs=1e-9)


def test_retrieval_of_the_photographs(demo: dict[str, Any],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = demo["out"]
    summary, predictions = infer(demo, "retrieval", "photos.tsv", capsys)
    photos = rows(out / "photos.tsv")
    texts, images, _ = towers(demo["run"])
    sim = texts([t for t, _ in photos]) @ images([out / p for _, p in photos]).t()  # (N, N)
    own = sim.diag()
    t2i = (1 + (sim > own[:, None]).sum(1)).tolist()  # the rank of each caption's photograph
    i2t = (1 + (sim > own[None, :]).sum(0)).tolist()
    assert [p["text"] for p in predictions] == [t for t, _ in photos]
    assert [p["text_to_image_rank"] for p in predictions] == t2i
    assert [p["image_to_text_rank"] for p in predictions] == i2t
    for k in (1, 5, 10):
        assert summary[f"t2i_recall@{k}"] == pytest.approx(np.mean([r <= k for r in t2i]))
        assert summary[f"i2t_recall@{k}"] == pytest.approx(np.mean([r <= k for r in i2t]))
