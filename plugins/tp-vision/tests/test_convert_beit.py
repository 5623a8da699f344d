"""The BEiT converter against Hugging Face `transformers`, for its three architectures
(BeitForMaskedImageModeling, BeitForImageClassification, the headless BeitModel): logits of tiny
random BEiTs with unusual settings (48x48 images in 8x8 patches; a shared relative position
table or one per layer or absolute positions; layer scale on or off; mean pooling or the class
token; a mask token with ~40% of the patches masked) in both directions, the key map's bit-exact
round trip, every config option there and back, refusals naming the option, and `tp convert`
both ways through the CLI (old checkpoints' relative_position_index buffers dropped; the export
loads with plain transformers; the processor's pixels equal tp's evaluation transform)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from tpcli.convert.hf import max_abs_diff
from tpcli.errors import TpError
from tpcli.model import TpModel
from tpcli.plugins import get_plugins
from tpcli.testing.convert import hf_config_dict, perturbed, tp_model_for

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
from tp_vision.convert_beit import CONVERTER  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            image_size=48, patch_size=8, vocab_size=50)
MIM = ("BeitForMaskedImageModeling", dict(
    use_mask_token=True, use_shared_relative_position_bias=True, use_mean_pooling=False,
    layer_scale_init_value=0.1))
LAYER_BIAS_MEAN = ("BeitForImageClassification", dict(
    use_relative_position_bias=True, use_mean_pooling=True, layer_scale_init_value=1e-5,
    num_labels=4, hidden_act="gelu_new", layer_norm_eps=1e-6))
ABSOLUTE_CLS_TOKEN = ("BeitForImageClassification", dict(
    use_absolute_position_embeddings=True, use_mean_pooling=False, layer_scale_init_value=0.0,
    num_labels=3, hidden_act="relu"))
HEADLESS = ("BeitModel", dict(use_mask_token=True, use_relative_position_bias=True,
                              use_mean_pooling=True))
DATA = {"processor": {"name": "image", "size": 48}}


def random_beit(arch: str, options: dict[str, Any]) -> Any:
    torch.manual_seed(0)
    model = getattr(transformers, arch)(transformers.BeitConfig(**TINY, **options))
    return perturbed(model, scale=0.1)  # HF starts tables at 0, biases at 0, norms at 1


def build(section: dict[str, Any]) -> TpModel:
    return tp_model_for(section, 0, DATA)


def tp_of(hf: Any) -> TpModel:
    """The tp model of `hf`'s translated config, its weights converted strictly (a headless
    model's head keeps tp's initialisation)."""
    config = hf_config_dict(hf)
    base = config["architectures"] == ["BeitModel"]
    model = build(CONVERTER.config_to_recipe(config))
    sd = CONVERTER.hf_to_tp(hf.state_dict(), base=base, hf_config=config,
                            expected=None if base else model.state_dict())
    assert base or sd.keys() == model.state_dict().keys()
    model.load_state_dict({**model.state_dict(), **sd}, strict=True)
    return model


@pytest.mark.parametrize("arch, options", [MIM, LAYER_BIAS_MEAN, ABSOLUTE_CLS_TOKEN, HEADLESS],
                         ids=["mim_shared_bias", "cls_layer_bias_mean", "cls_absolute_token",
                              "headless_mean"])
def test_outputs_match_hf_and_keys_round_trip(arch: str, options: dict[str, Any]) -> None:
    hf = random_beit(arch, options)
    tp, config = tp_of(hf), hf_config_dict(hf)
    base = arch == "BeitModel"
    diff = max_abs_diff(CONVERTER, hf, tp, config, 0, base=base)
    assert diff <= 1e-5, diff
    batch, kwargs = CONVERTER.check_batch(tp.spec, config)
    assert ("bool_masked_pos" in kwargs) == (arch == MIM[0])
    with torch.no_grad():
        out = hf(**kwargs)
    ref = out.last_hidden_state if base else out.logits
    assert ref.std() > 0.1  # the comparison is not between near-zeros
    if base:  # the stack's mean pooling (skip the class token, LayerNorm) is HF's pooler
        with torch.no_grad():
            pooled = tp.features(batch).pooled
        assert (pooled - out.pooler_output).abs().max() <= 1e-5
    hf_sd, tp_sd = hf.state_dict(), tp.state_dict()
    back = CONVERTER.tp_to_hf(tp_sd, expected=hf_sd.keys(), base=base, hf_config=config,
                              ignore=["targets.cls.*"] if base else ())
    assert all(torch.equal(back[k], v) for k, v in hf_sd.items())


def test_the_mask_token_is_used() -> None:
    """With bool_masked_pos, HF puts its mask token where tp's masked_patch puts its own: a
    different mask token moves the MIM logits."""
    hf = random_beit(*MIM)
    tp, config = tp_of(hf), hf_config_dict(hf)
    with torch.no_grad():
        token = tp.stack.embedding.parts["masked_patch"].mask_token  # (H,)
        token.add_(torch.randn(token.shape, generator=torch.Generator().manual_seed(3)))
    assert max_abs_diff(CONVERTER, hf, tp, config, 0) > 1e-3


@pytest.mark.parametrize("target", ["mim", "mim_final_norm", "cls"])
def test_tp_to_hf_direction(target: str) -> None:
    """A tp BEiT written as a user would -> the HF model of its config, same outputs. The
    beit-tiny recipe's MIM head (no norm of its own, after the encoder's final norm) is HF's
    use_mean_pooling layout: its final norm is HF's `layernorm`."""
    heads = {"mim": ({"mim": {"vocab_size": 40}}, {}, True),
             "mim_final_norm": ({"mim": {"vocab_size": 40, "norm": False}}, {}, True),
             "cls": ({"cls": {"labels": 6}}, {"pooling": {"name": "mean", "skip_first": True,
                                                           "norm": True}}, False)}
    head, pooling, final_norm = heads[target]
    target = target.split("_")[0]
    torch.manual_seed(0)
    tp = perturbed(build({
        "hidden_size": 32, "dropout": 0.0, "embedding_norm": "none",
        "embedding": {"masked_patch" if target == "mim" else "patch": {"image_size": 32,
                                                                         "patch_size": 4}},
        "encoder": {"name": "transformer", "layers": 2, "heads": 2, "ffn_size": 40,
                    "pre_norm": True, "qkv_bias": "qv", "layer_scale": 0.1,
                    "position": "relative_2d", "grid": [8, 8],
                    "share_position_bias": target == "mim", "final_norm": final_norm},
        **pooling, "target": head}), scale=0.1)
    config = CONVERTER.recipe_to_config(tp.spec, 0)
    assert config["architectures"] == [{"mim": "BeitForMaskedImageModeling",
                                        "cls": "BeitForImageClassification"}[target]]
    hf_cls = getattr(transformers, config["architectures"][0])
    hf = hf_cls(transformers.BeitConfig(**{k: v for k, v in config.items()
                                           if k not in ("architectures", "model_type")})).eval()
    sd = CONVERTER.tp_to_hf(tp.state_dict(), expected=hf.state_dict().keys(), hf_config=config)
    hf.load_state_dict(sd, strict=True)
    assert max_abs_diff(CONVERTER, hf, tp, config, 0) <= 1e-5
    assert config["use_mean_pooling"] == (head.get("mim", {}).get("norm") is False
                                          or "pooling" in pooling)


def test_every_option_there_and_back() -> None:
    for arch, options in (MIM, LAYER_BIAS_MEAN, ABSOLUTE_CLS_TOKEN):
        config = hf_config_dict(random_beit(arch, options))
        config.update(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.05,
                      drop_path_rate=0.0)
        back = CONVERTER.recipe_to_config(build(CONVERTER.config_to_recipe(config)).spec, 0)
        for key, value in back.items():
            want = len(config["id2label"]) if key == "num_labels" else config[key]
            assert value == want, (arch, key, value, want)


def test_what_tp_cannot_do_is_refused_by_name() -> None:
    config = hf_config_dict(random_beit(*LAYER_BIAS_MEAN))
    for bad, option in ((dict(image_size=[48, 32]), "image_size"),
                        (dict(use_shared_relative_position_bias=True),
                         "use_relative_position_bias and use_shared_relative_position_bias"),
                        (dict(hidden_act="quick_gelu"), "hidden_act")):
        with pytest.raises(TpError, match=option):
            CONVERTER.config_to_recipe({**config, **bad})
    section = CONVERTER.config_to_recipe(config)
    for path, value, option in ((("encoder", "qkv_bias"), "all", "model.encoder.qkv_bias=all"),
                                (("encoder", "grid"), [3, 3], "model.encoder.grid"),
                                (("pooling", "norm"), False, "mean pooling must be BEiT's"),
                                (("target", "cls", "pooler"), True, "model.target.cls.pooler")):
        changed = json.loads(json.dumps(section))
        node = changed
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(TpError, match=option.replace(".", r"\.")):
            CONVERTER.recipe_to_config(build(changed).spec, 0)


# ------------------------------------------------------------------------ through the CLI

def convert(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from tpcli.cli.main import main

    capsys.readouterr()
    code = main(["convert", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out + err


def printed_diff(out: str) -> float:
    return float(out.split("max abs difference of the logits: ")[1].split()[0])


def save_hf(hf: Any, folder: Path) -> None:
    hf.save_pretrained(str(folder))
    transformers.BeitImageProcessorPil(size={"height": 48, "width": 48}, resample=2).\
        save_pretrained(str(folder))


def test_cli_mim_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """BeitForMaskedImageModeling (use_mean_pooling as the published pt22k configs: transformers
    5.25 swaps beit.layernorm and layernorm when it loads a MIM model that has both) through
    `tp convert` both ways with --check, back bit for bit."""
    hf = random_beit(MIM[0], {**MIM[1], "use_mean_pooling": True})
    save_hf(hf, tmp_path / "hf")
    code, out = convert([str(tmp_path / "hf"), "--from", "hf", "--out", str(tmp_path / "tp"),
                         "--check", "--tolerance", "1e-5"], capsys)
    assert code == 0 and printed_diff(out) <= 1e-5, out
    code, out = convert([str(tmp_path / "tp"), "--to", "hf", "--out", str(tmp_path / "back"),
                         "--check", "--tolerance", "1e-5"], capsys)
    assert code == 0 and printed_diff(out) <= 1e-5, out
    model, info = transformers.BeitForMaskedImageModeling.from_pretrained(
        str(tmp_path / "back"), output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in hf.state_dict().items())


def test_cli_classifier_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """BeitForImageClassification with the relative_position_index buffers old checkpoints
    saved: converts, exports under --check, loads with AutoModelForImageClassification and
    AutoImageProcessor, whose pixels are tp's evaluation transform's."""
    from skimage import data as photos

    from tpcli.train.checkpoint import load_checkpoint

    hf = random_beit(*LAYER_BIAS_MEAN)
    save_hf(hf, tmp_path / "hf")
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    for i in range(2):
        weights[f"beit.encoder.layer.{i}.attention.attention.relative_position_bias."
                "relative_position_index"] = torch.zeros(37, 37, dtype=torch.long)
    save_file(weights, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    code, out = convert([str(tmp_path / "hf"), "--from", "hf", "--out", str(tmp_path / "tp"),
                         "--check", "--tolerance", "1e-5"], capsys)
    assert code == 0 and printed_diff(out) <= 1e-5, out  # compared as the classifier it is
    code, out = convert([str(tmp_path / "tp"), "--to", "hf", "--out", str(tmp_path / "back"),
                         "--check", "--tolerance", "1e-5"], capsys)
    assert code == 0 and printed_diff(out) <= 1e-5, out
    model, info = transformers.AutoModelForImageClassification.from_pretrained(
        str(tmp_path / "back"), output_loading_info=True)
    assert type(model).__name__ == "BeitForImageClassification"
    assert {k: v for k, v in info.items() if v} == {}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in hf.state_dict().items())
    task_cls = get_plugins().registry.get("task", "image_classification")
    task = task_cls(task_cls.Config(), None)
    task.bind(load_checkpoint(tmp_path / "tp", get_plugins()).recipe, None)
    photo = photos.astronaut()
    processor = transformers.AutoImageProcessor.from_pretrained(str(tmp_path / "back"))
    theirs = processor(images=photo, return_tensors="pt")["pixel_values"][0]
    assert (task.eval_transform()(photo) - theirs).abs().max() <= 1e-6


def test_cli_refuses_a_non_square_beit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf = random_beit(*ABSOLUTE_CLS_TOKEN)
    save_hf(hf, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "image_size": [48, 40]}))
    code, out = convert([str(tmp_path / "hf"), "--from", "hf", "--out", str(tmp_path / "tp")],
                        capsys)
    assert code == 1 and "image_size [48, 40]" in out and "not square" in out
    assert not (tmp_path / "tp").exists()
