"""The ViT converter against Hugging Face `transformers`: logits of tiny random ViTs with unusual
settings (a 32x48 image in 8x8 patches, no qkv bias, gelu_new, eps 1e-6, one channel) in both
directions, the key map's bit-exact round trip in both spellings of the keys, the headless
ViTModel and its pooler, every config option there and back, refusals naming the option, strict
keys, and `tp convert` both ways through the CLI: the export loads with plain
`AutoModelForImageClassification` / `AutoImageProcessor`, the processor's pixels equal tp's
evaluation transform on a real photograph, the class names travel as id2label."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from tpcli.convert.hf import max_abs_diff
from tpcli.errors import CheckpointError, TpError
from tpcli.model import TpModel
from tpcli.plugins import get_plugins
from tpcli.testing.convert import hf_config_dict, perturbed, tp_model_for

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
from tp_vision.convert_vit import CONVERTER, LEGACY, Spelled  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
ODD = dict(TINY, image_size=[32, 48], patch_size=8, qkv_bias=False, num_labels=5)  # 24 patches
SQUARE = dict(TINY, image_size=24, patch_size=6, hidden_act="gelu_new", layer_norm_eps=1e-6,
              num_channels=1, num_labels=3, initializer_range=0.05)
DATA = {"processor": {"name": "image", "size": 32}}


def random_vit(arch: str = "ViTForImageClassification", **config: Any) -> Any:
    torch.manual_seed(0)
    model = getattr(transformers, arch)(transformers.ViTConfig(**config))
    return perturbed(model, scale=0.1)  # HF starts biases at 0 and norms at 1: move them


def build(section: dict[str, Any]) -> TpModel:
    return tp_model_for(section, 0, DATA)


def tp_of(hf: Any, base: bool = False) -> TpModel:
    """The tp model of `hf`'s translated config, its weights converted strictly."""
    config = hf_config_dict(hf)
    model = build(CONVERTER.config_to_recipe(config))
    sd = CONVERTER.hf_to_tp(hf.state_dict(), expected=None if base else model.state_dict(),
                            hf_config=config, base=base)
    model.load_state_dict({**model.state_dict(), **sd}, strict=True)
    return model


@pytest.mark.parametrize("options", [ODD, SQUARE], ids=["32x48_no_qkv_bias", "gelu_new_1ch"])
def test_logits_match_hf_and_keys_round_trip(options: dict[str, Any]) -> None:
    hf = random_vit(**options)
    tp = tp_of(hf)
    config = hf_config_dict(hf)
    diff = max_abs_diff(CONVERTER, hf, tp, config, 0)
    assert diff <= 1e-5, diff
    batch, kwargs = CONVERTER.check_batch(tp.spec, config)
    with torch.no_grad():
        logits = hf(**kwargs).logits
    assert logits.shape == (3, options["num_labels"]) and logits.std() > 0.1  # not near-zeros
    hf_sd, tp_sd = hf.state_dict(), tp.state_dict()
    back = CONVERTER.tp_to_hf(tp_sd, expected=hf_sd.keys(), hf_config=config)
    assert all(torch.equal(back[k], v) for k, v in hf_sd.items())
    again = CONVERTER.hf_to_tp(back, expected=tp_sd.keys(), hf_config=config)
    assert all(torch.equal(again[k], v) for k, v in tp_sd.items())


def test_saved_spelling_reads_too(tmp_path: Path) -> None:
    """transformers saves the legacy names (`vit.encoder.layer.0.attention.attention.query`);
    tp reads them into the same tensors as the in-memory names."""
    hf = random_vit(**ODD)
    hf.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert "vit.encoder.layer.0.attention.attention.query.weight" in saved
    config = hf_config_dict(hf)
    from_saved = CONVERTER.hf_to_tp(saved, hf_config=config)
    from_memory = CONVERTER.hf_to_tp(hf.state_dict(), hf_config=config)
    assert from_saved.keys() == from_memory.keys()
    assert all(torch.equal(from_saved[k], v) for k, v in from_memory.items())
    rule = CONVERTER.rules_for(config)[0]
    assert isinstance(rule, Spelled) and any(
        getattr(r, "hf", ("",))[0] == f"vit.{LEGACY.layer}{LEGACY.query}.weight"
        for r in rule.legacy)


def test_tp_to_hf_direction() -> None:
    """A tp ViT written as a user would (perturbed) -> the HF model of its config, same logits."""
    torch.manual_seed(0)
    tp = perturbed(build({
        "hidden_size": 32, "dropout": 0.0, "norm_eps": 1e-6, "embedding_norm": "none",
        "embedding": [{"patch": {"image_size": [16, 40], "patch_size": [8, 4]}},
                      {"pos": {"max_length": 21}}],
        "encoder": {"name": "transformer", "layers": 2, "heads": 2, "ffn_size": 48,
                    "pre_norm": True, "activation": "gelu_tanh"},
        "target": {"cls": {"labels": 4}}}), scale=0.1)
    config = CONVERTER.recipe_to_config(tp.spec, 0)
    assert config["image_size"] == [16, 40] and config["patch_size"] == [8, 4]
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(**{
        k: v for k, v in config.items() if k not in ("architectures", "model_type")})).eval()
    sd = CONVERTER.tp_to_hf(tp.state_dict(), expected=hf.state_dict().keys(), hf_config=config)
    hf.load_state_dict(sd, strict=True)
    assert max_abs_diff(CONVERTER, hf, tp, config, 0) <= 1e-5
    with torch.no_grad():  # the comparison can fail: q and k of one layer swapped
        qkv = tp.stack.encoder.layers[1].attn.qkv.weight  # (3H, H): q, k, v rows
        qkv[:64] = torch.cat([qkv[32:64], qkv[:32]])
    assert max_abs_diff(CONVERTER, hf, tp, config, 0) > 1e-3


def test_headless_vit_keeps_its_pooler_as_the_cls_pooler() -> None:
    """ViTModel's pooler (dense + tanh on the class token) is the cls head's pooler: tp's pooled
    vector equals HF's pooler_output; only the classifier is new."""
    hf = random_vit("ViTModel", **ODD)
    tp = tp_of(hf, base=True)
    assert tp.spec.targets[0].options.pooler
    batch, kwargs = CONVERTER.check_batch(tp.spec, hf_config_dict(hf))
    with torch.no_grad():
        want = hf(**kwargs)
        hidden = tp.features(batch).hidden
        pooled = torch.tanh(tp.targets["cls"].pooler(hidden[:, 0]))
    assert (hidden - want.last_hidden_state).abs().max() <= 1e-5
    assert (pooled - want.pooler_output).abs().max() <= 1e-5


def test_every_option_there_and_back() -> None:
    for options in (ODD, SQUARE):
        config = hf_config_dict(random_vit(**options))
        for dropout in (0.0, 0.1):
            config.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout / 2)
            back = CONVERTER.recipe_to_config(build(CONVERTER.config_to_recipe(config)).spec, 0)
            for key, value in back.items():
                want = len(config["id2label"]) if key == "num_labels" else config[key]
                assert value == want, (key, value, want)


def test_what_hf_vit_cannot_do_is_refused_by_name() -> None:
    config = hf_config_dict(random_vit(**ODD))
    for bad, option in ((dict(hidden_act="quick_gelu"), "hidden_act"),
                        (dict(num_labels=1, id2label={"0": "score"}), "num_labels=1"),
                        (dict(image_size=[30, 48]), "image_size 30x48")):
        with pytest.raises(TpError, match=option):
            CONVERTER.config_to_recipe({**config, **bad})
    section = CONVERTER.config_to_recipe(config)
    for change, option in ((("target", "cls", "pooler"), "model.target.cls.pooler=true"),
                           (("encoder", "qkv_bias"), "qkv_bias=qv"),
                           (("encoder", "layer_scale"), "model.encoder.layer_scale=0.1"),
                           (("encoder", "pre_norm"), "model.encoder.pre_norm=False")):
        value = {"pooler": True, "qkv_bias": "qv", "layer_scale": 0.1, "pre_norm": False}[
            change[-1]]
        changed = json.loads(json.dumps(section))
        node = changed
        for key in change[:-1]:
            node = node[key]
        node[change[-1]] = value
        with pytest.raises(TpError, match=option.replace(".", r"\.")):
            CONVERTER.recipe_to_config(build(changed).spec, 0)


def test_keys_are_strict() -> None:
    hf = random_vit(**ODD)
    config, sd = hf_config_dict(hf), dict(random_vit(**ODD).state_dict())
    tp_keys = tp_of(hf).state_dict().keys()
    missing = {k: v for k, v in sd.items() if k != "vit.layers.1.mlp.fc2.bias"}
    with pytest.raises(CheckpointError, match=r"result lacks: stack\.encoder\.layers\.1\.ffn"
                       r"\.fc2\.bias"):
        CONVERTER.hf_to_tp(missing, hf_config=config, expected=tp_keys)
    with pytest.raises(CheckpointError, match=r"vit\.extra\.weight"):
        CONVERTER.hf_to_tp({**sd, "vit.extra.weight": torch.zeros(1)}, hf_config=config)
    # a pooler saved beside a classifier is one ViTForImageClassification never runs: dropped
    pooler = {f"vit.pooler.dense.{p}": torch.zeros(32, 32) for p in ("weight", "bias")}
    assert CONVERTER.hf_to_tp({**sd, **pooler}, hf_config=config, expected=tp_keys).keys() == \
        tp_keys


# ------------------------------------------------------------------------ through the CLI

def convert(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from tpcli.cli.main import main

    capsys.readouterr()
    code = main(["convert", *args])
    out, err = capsys.readouterr()
    return code, out, err


def printed_diff(out: str) -> float:
    return float(out.split("max abs difference of the logits: ")[1].split()[0])


def test_cli_round_trip_processor_and_class_names(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """HF folder -> `tp convert --from hf --check` -> `tp convert --to hf --check` -> plain
    transformers: every tensor back bit for bit, pixels equal to tp's evaluation transform."""
    from skimage import data as photos

    from tpcli.train.checkpoint import load_checkpoint

    hf = random_vit(**dict(TINY, image_size=48, patch_size=8, num_labels=3))
    src, tp_dir, out = tmp_path / "hf", tmp_path / "tp", tmp_path / "back"
    hf.save_pretrained(str(src))
    transformers.ViTImageProcessorPil(size={"height": 48, "width": 48}, image_mean=[0.4, 0.5, 0.6],
                                      image_std=[0.2, 0.3, 0.25]).save_pretrained(str(src))
    code, printed, _ = convert([str(src), "--from", "hf", "--out", str(tp_dir), "--check",
                                "--tolerance", "1e-5"], capsys)
    assert code == 0 and printed_diff(printed) <= 1e-5
    recipe = (tmp_path / "tp" / "recipe.yaml")
    fitted = recipe.read_text() + "finetune:\n  task:\n    name: image_classification\n" \
        "    classes: [cat, dog, fox]\n"
    recipe.write_text(fitted)  # what `tp finetune` saves: the classes of the head, in order
    code, printed, _ = convert([str(tp_dir), "--to", "hf", "--out", str(out), "--check",
                                "--tolerance", "1e-5"], capsys)
    assert code == 0 and printed_diff(printed) <= 1e-5
    model, info = transformers.AutoModelForImageClassification.from_pretrained(
        str(out), output_loading_info=True)
    assert type(model).__name__ == "ViTForImageClassification"
    assert {k: v for k, v in info.items() if v} == {}
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "fox"}
    original = hf.state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())
    loaded = load_checkpoint(tp_dir, get_plugins())
    task = get_plugins().registry.get("task", "image_classification")
    task = task(task.Config(), None)
    task.bind(loaded.recipe, None)
    photo = photos.chelsea()  # 300x451: resized, not cropped
    mine = task.eval_transform()(photo)
    processor = transformers.AutoImageProcessor.from_pretrained(str(out))
    theirs = processor(images=photo, return_tensors="pt")["pixel_values"][0]
    assert theirs.shape == mine.shape == (3, 48, 48)
    assert (mine - theirs).abs().max() <= 1e-6


def test_cli_errors_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf = random_vit(**ODD)
    hf.save_pretrained(str(tmp_path / "hf"))
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    weights["vit.encoder.layer.0.surprise"] = torch.zeros(2)
    del weights["classifier.bias"]
    save_file(weights, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    code, _, err = convert([str(tmp_path / "hf"), "--from", "hf", "--out",
                            str(tmp_path / "tp")], capsys)
    assert code == 1 and "Traceback" not in err
    assert "vit.encoder.layer.0.surprise" in err and "classifier.bias" in err
    assert not (tmp_path / "tp").exists()


def test_preprocessing_tp_cannot_do_is_said(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """A processor that resizes 256 + crops 224 bicubically: the recipe records size 256,
    image_size 224 (tp's evaluation resizes to 224 directly) and a warning says so."""
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "size": {"shortest_edge": 256},
        "do_center_crop": True, "crop_size": {"height": 224, "width": 224}, "resample": 3,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    with caplog.at_level(logging.WARNING):
        data = CONVERTER.preprocessing.from_hf(tmp_path, {"image_size": 224})
    assert data == {"processor": {"name": "image", "size": 256, "image_size": 224,
                                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    said = caplog.text
    assert "shorter side to 256 and centre-crops 224x224" in said and "bicubic" in said
    caplog.clear()
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "ViTFeatureExtractor", "size": 224, "resample": 2,
        "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))  # google/vit-base-patch16-224's
    with caplog.at_level(logging.WARNING):
        data = CONVERTER.preprocessing.from_hf(tmp_path, {"image_size": 224})
    assert data["processor"] == {"name": "image", "size": 224, "mean": [0.5] * 3,
                                 "std": [0.5] * 3} and not caplog.text


def test_cli_vit_tiny_run_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The built-in vit-tiny recipe (shrunk) as `tp pretrain` saves it -> `tp convert --to hf
    --check` -> `tp convert --from hf --check` -> the run's tensors bit for bit; the export's
    processor is the recipe's evaluation transform (28x28, bilinear, mean and std 0.5)."""
    from tpcli.testing.convert import make_run

    run = make_run("vit-tiny", tmp_path / "run", ["model.hidden_size=32",
                                                  "model.encoder.layers=2",
                                                  "model.encoder.ffn_size=48"])
    code, printed, _ = convert([str(run), "--to", "hf", "--out", str(tmp_path / "hf"),
                                "--check", "--tolerance", "1e-5"], capsys)
    assert code == 0 and printed_diff(printed) <= 1e-5
    processor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert (processor["size"], processor["resample"], processor["do_center_crop"],
            processor["image_mean"]) == ({"height": 28, "width": 28}, 2, False, [0.5] * 3)
    code, printed, _ = convert([str(tmp_path / "hf"), "--from", "hf", "--out",
                                str(tmp_path / "back"), "--check", "--tolerance", "1e-5"], capsys)
    assert code == 0 and printed_diff(printed) <= 1e-5
    original = load_file(str(run / "last" / "model.safetensors"))
    again = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert again.keys() == original.keys()
    assert all(torch.equal(again[k], v) for k, v in original.items())
