"""The clip converter: tiny random CLIPModels (text 30 wide with 3 heads and 2 layers, vision 35
wide with 5 heads and 3 layers, projection 22, 40-pixel images in 8-pixel patches, layer_norm_eps
1e-6, quick_gelu in one tower and gelu in the other, logit scale 3.1) with CLIP's tokenizer and
image processor, converted HF -> tp -> HF through `tp convert` with --check at 1e-5.

Two checkpoints: the current config (eos_token_id = <|endoftext|>, captions padded with it) and
a legacy one (eos_token_id 2: HF pools at the highest id; captions padded with id 0, `!`; the
logit scale at OpenAI's 4.6052, where clr's clamp is); the text pooling `last` reads the
end-of-text token in both. Parity is measured on real captions
and images through CLIPProcessor: embeddings, both logits and the `return_loss` loss within
1e-5 (fp32); tp's own tokenizer and image pipeline give HF's ids and pixels; the export loads
with AutoModel / AutoProcessor; HF -> tp -> HF is bit-identical.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tpcli.errors import CheckpointError, TpError
from tpcli.plugins import get_plugins

sys.path.insert(0, str(Path(__file__).parent))  # the shared helpers (pytest imports by path)
from clip_models import CAPTIONS, TEXT, VISION, hf_clip, images, save_hf_clip  # noqa: E402

TOL = 1e-5
VARIANTS = {
    "current": dict(legacy_eos=False, pad="<|endoftext|>"),
    "legacy": dict(legacy_eos=True, pad="!", text_hidden_act="gelu",
                   vision_hidden_act="quick_gelu", logit_scale_init_value=4.6052),  # OpenAI's
}
OUTPUTS = ("text_embeds", "image_embeds", "logits_per_text", "logits_per_image")


@pytest.fixture(scope="module", params=list(VARIANTS))
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, Any]:
    """{src, tp, back, diffs}: an HF folder, its tp checkpoint, the tp checkpoint exported."""
    from tpcli.convert.hf import from_hf, to_hf

    root = tmp_path_factory.mktemp(f"clip-{request.param}")
    src = save_hf_clip(root / "hf", hf_clip(**VARIANTS[request.param]))
    plugins = get_plugins()
    there = from_hf(str(src), root / "tp", plugins, check=True, tolerance=TOL)
    back = to_hf(root / "tp", root / "back", plugins, check=True, tolerance=TOL)
    return {"name": request.param, "src": src, "tp": root / "tp", "back": root / "back",
            "diffs": (there.max_abs_diff, back.max_abs_diff)}


def hf_inputs(folder: Path) -> dict[str, torch.Tensor]:
    """The captions and four images through the folder's CLIPProcessor (padded captions)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(folder))
    return dict(processor(text=CAPTIONS, images=images(4, VISION["image_size"]), padding=True,
                          return_tensors="pt"))


def tp_batch(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"stream_0.input_ids": inputs["input_ids"],
            "stream_0.attention_mask": inputs["attention_mask"].bool(),
            "stream_1.pixel_values": inputs["pixel_values"]}


def assert_same_outputs(hf_model: Any, tp_model: Any, inputs: dict[str, torch.Tensor]) -> None:
    """Embeddings, logits and the contrastive loss of both models within TOL."""
    with torch.no_grad():
        ref = hf_model(**inputs, return_loss=True)
        ours = tp_model.predict(tp_batch(inputs))["clr"]
        loss = tp_model(tp_batch(inputs)).loss
    for name in OUTPUTS:
        diff = float((ours[name] - getattr(ref, name)).abs().max())
        assert diff <= TOL, (name, diff)
    assert abs(float(loss) - float(ref.loss)) <= TOL, (float(loss), float(ref.loss))


def test_check_passes_both_ways(converted: dict[str, Any]) -> None:
    assert max(converted["diffs"]) <= TOL, converted["diffs"]


def test_hf_to_tp_matches_on_real_captions_and_images(converted: dict[str, Any]) -> None:
    from transformers import CLIPModel

    from tpcli.train.checkpoint import load_checkpoint

    inputs = hf_inputs(converted["src"])
    if converted["name"] == "current":  # padded with <|endoftext|>; legacy: with 0 (`!`)
        assert inputs["input_ids"][3, -1] == inputs["input_ids"].max()
    else:
        assert inputs["input_ids"][3, -1] == 0
    loaded = load_checkpoint(converted["tp"], get_plugins())
    assert loaded.recipe.finetune.task == {"name": "zero_shot"}  # `tp infer` classifies as is
    hf_model = CLIPModel.from_pretrained(str(converted["src"])).eval()
    assert_same_outputs(hf_model, loaded.model.eval(), inputs)


def test_tp_tokenizer_and_image_pipeline_give_hf_inputs(converted: dict[str, Any]) -> None:
    """The recipe's `hf` tokenizer between the image_text processor's start and end tokens gives
    CLIPTokenizer's ids; its stored-image transform (shorter side bicubic, centre square) and
    normalisation give CLIPImageProcessor's pixels."""
    from tp_multimodal.image_text_processor import text_specials
    from tp_vision.images import fit, to_rgb
    from tp_vision.transforms import TrainTransform

    from tpcli.train.checkpoint import load_checkpoint

    inputs = hf_inputs(converted["src"])
    loaded = load_checkpoint(converted["tp"], get_plugins())
    start, end = text_specials(loaded.tokenizer)
    for row, text in enumerate(CAPTIONS):
        ids = start + loaded.tokenizer.encode_batch([text])[0] + end
        n = int(inputs["attention_mask"][row].sum())
        assert ids == inputs["input_ids"][row, :n].tolist(), text
    opts = loaded.recipe.processor.options
    assert (opts.layout, opts.max_length, opts.size) == ("dual", TEXT["max_position_embeddings"],
                                                         VISION["image_size"])
    transform = TrainTransform(size=opts.image_size or opts.size, scale=None, hflip=0.0,
                               randaugment=None, mean=opts.mean, std=opts.std)
    g = torch.Generator().manual_seed(0)
    for i, image in enumerate(images(4, VISION["image_size"])):
        ours = transform(fit(to_rgb(image), opts.size), g)
        diff = float((ours - inputs["pixel_values"][i]).abs().max())
        assert diff <= 1e-5, (i, diff)


def test_tp_checkpoint_trains_the_end_of_text_row(converted: dict[str, Any]) -> None:
    """CLIP pads with <|endoftext|> (or `!`): the pad id is an ordinary, trained row."""
    from tpcli.train.checkpoint import load_checkpoint

    model = load_checkpoint(converted["tp"], get_plugins()).model
    assert model.stream_0.embedding.parts["word"].embedding.padding_idx is None


def test_export_loads_with_auto_classes_and_matches(converted: dict[str, Any]) -> None:
    from transformers import AutoModel, AutoProcessor, CLIPTokenizer

    from tpcli.train.checkpoint import load_checkpoint

    model, info = AutoModel.from_pretrained(str(converted["back"]), output_loading_info=True)
    assert type(model).__name__ == "CLIPModel"
    assert {k: v for k, v in info.items() if v} == {}, info
    processor = AutoProcessor.from_pretrained(str(converted["back"]))
    assert type(processor).__name__ == "CLIPProcessor"
    assert isinstance(processor.tokenizer, CLIPTokenizer)
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"
    assert processor.tokenizer.model_max_length == TEXT["max_position_embeddings"]
    inputs, original = hf_inputs(converted["back"]), hf_inputs(converted["src"])
    for key in ("input_ids", "attention_mask"):
        n = original[key].shape[1]
        assert torch.equal(inputs[key][:, :n], original[key]), key
    assert torch.equal(inputs["pixel_values"], original["pixel_values"])
    loaded = load_checkpoint(converted["tp"], get_plugins())
    assert_same_outputs(model.eval(), loaded.model.eval(), inputs)


def test_export_carries_vocab_and_merges(tmp_path: Path, converted: dict[str, Any]) -> None:
    """vocab.json + merges.txt beside tokenizer.json, as on the Hub: a CLIPTokenizer built from
    them alone gives the same ids."""
    from transformers import CLIPTokenizer

    for name in ("vocab.json", "merges.txt", "tokenizer_config.json",
                 "special_tokens_map.json"):
        shutil.copy(converted["back"] / name, tmp_path / name)
    alone = CLIPTokenizer.from_pretrained(str(tmp_path))
    full = CLIPTokenizer.from_pretrained(str(converted["back"]))
    assert alone(CAPTIONS)["input_ids"] == full(CAPTIONS)["input_ids"]


def test_round_trip_is_bit_identical(converted: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    original = load_file(str(converted["src"] / "model.safetensors"))
    again = load_file(str(converted["back"] / "model.safetensors"))
    assert set(again) == set(original)
    for key, value in original.items():
        assert torch.equal(again[key], value), key
    a, b = (json.loads((f / "config.json").read_text())
            for f in (converted["src"], converted["back"]))
    for tower, keys in (("text_config", (*TEXT, "vocab_size", "bos_token_id", "pad_token_id")),
                        ("vision_config", VISION)):
        assert {k: b[tower][k] for k in keys} == {k: a[tower][k] for k in keys}, tower
    assert (b["projection_dim"], b["logit_scale_init_value"]) == \
        (a["projection_dim"], a["logit_scale_init_value"])
    # the legacy eos_token_id 2 comes back as the id it stood for: <|endoftext|>, the highest
    assert b["text_config"]["eos_token_id"] == a["text_config"]["vocab_size"] - 1


def test_cli_check(tmp_path: Path, converted: dict[str, Any]) -> None:
    """`tp convert --from hf --check` as a user runs it (a subprocess), and `--to hf --check`
    through the same command line in this process."""
    import contextlib
    import io

    from tpcli.cli.main import main
    from tpcli.testing.runs import run_tp

    if converted["name"] != "current":
        pytest.skip("one checkpoint is enough")
    done = run_tp("convert", str(converted["src"]), "--from", "hf", "--out",
                  str(tmp_path / "tp"), "--check", "--tolerance", str(TOL))
    assert done.returncode == 0, done.stderr
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["convert", str(tmp_path / "tp"), "--to", "hf", "--out",
                     str(tmp_path / "back"), "--check", "--tolerance", str(TOL)]) == 0
    diffs = [float(line.split(": ")[1].split()[0])
             for line in (done.stdout + printed.getvalue()).splitlines()
             if line.startswith("max abs difference")]
    assert len(diffs) == 2 and max(diffs) <= TOL, done.stdout + printed.getvalue()


def test_a_missing_key_is_named(tmp_path: Path, converted: dict[str, Any]) -> None:
    from safetensors.torch import load_file, save_file

    from tpcli.convert.hf import from_hf

    src = tmp_path / "hf"
    shutil.copytree(converted["src"], src)
    weights = load_file(str(src / "model.safetensors"))
    del weights["vision_model.post_layernorm.weight"]
    save_file(weights, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="vision_model.post_layernorm.weight"):
        from_hf(str(src), tmp_path / "tp", get_plugins())
    assert not (tmp_path / "tp").exists()


def test_what_clip_cannot_express_is_refused_by_name(converted: dict[str, Any]) -> None:
    from tp_multimodal.convert_clip import recipe_to_config

    from tpcli.recipes.config import build_recipe
    from tpcli.train.checkpoint import load_checkpoint

    raw = load_checkpoint(converted["tp"], get_plugins()).recipe.raw
    bad = ["model.stream_1.embedding.patch.bias=true", "model.stream_0.encoder.mask=fully_visible",
           "model.stream_1.pooling=mean", "model.stream_1.embedding_norm=none"]
    spec = build_recipe(raw, get_plugins().registry, overrides=bad).model
    with pytest.raises(TpError) as e:
        recipe_to_config(spec, 524)
    for path in ("model.stream_1.embedding.patch.bias", "model.stream_0.encoder.mask",
                 "model.stream_1.pooling", "model.stream_1.embedding_norm"):
        assert path in e.value.message, path


def test_a_vocab_and_merges_folder_reads_too(tmp_path: Path, converted: dict[str, Any]) -> None:
    """Older Hub folders: vocab.json + merges.txt beside (or instead of) tokenizer.json."""
    from clip_models import MERGES, clip_vocab

    from tpcli.convert.hf import from_hf
    from tpcli.train.checkpoint import load_checkpoint

    if converted["name"] != "current":
        pytest.skip("one folder is enough")
    src = tmp_path / "hf"
    shutil.copytree(converted["src"], src)
    (src / "tokenizer.json").unlink()
    (src / "vocab.json").write_text(json.dumps(clip_vocab()))
    (src / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    from_hf(str(src), tmp_path / "tp", get_plugins())
    ours = load_checkpoint(tmp_path / "tp", get_plugins()).tokenizer
    theirs = load_checkpoint(converted["tp"], get_plugins()).tokenizer
    assert ours.encode_batch(CAPTIONS) == theirs.encode_batch(CAPTIONS)
    assert ours.special_ids == theirs.special_ids


def test_hf_tokenizer_roles_from_a_relative_folder(converted: dict[str, Any],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The tokenizer_config.json beside a tokenizer.json is read from a relative folder too
    (it names CLIP's pad token)."""
    from tp_text.hf_tokenizer import HfTokenizer, HfTokenizerConfig

    monkeypatch.chdir(converted["src"].parent)
    tok = HfTokenizer(HfTokenizerConfig(tokenizer_json="tokenizer.json"),
                      Path(converted["src"].name))
    assert "pad" in tok.special_ids and "unk" in tok.special_ids


def test_clip_image_processor_defaults_when_absent(tmp_path: Path,
                                                   converted: dict[str, Any]) -> None:
    """No preprocessor file: CLIPImageProcessor's defaults (OpenAI's mean and std), with the
    model's image size; transformers 5's processor_config.json is read like the classic file."""
    from tp_multimodal.clip_files import OPENAI_MEAN, processor_section

    assert (converted["src"] / "processor_config.json").is_file()  # what transformers 5 saves
    section = processor_section(converted["src"], VISION["image_size"], 16)
    assert section["size"] == VISION["image_size"] and "image_size" not in section
    empty = tmp_path / "none"
    empty.mkdir()
    section = processor_section(empty, 40, 16)
    assert section["size"] == 224 and section["image_size"] == 40
    assert np.allclose(section["mean"], OPENAI_MEAN)


def test_check_batch_ends_each_caption_where_hf_pools() -> None:
    """--check's captions: the end-of-text token after the last real token and nowhere before
    (legacy configs: the highest id), padded with it or with 0; an eos_token_id outside the
    vocabulary (HF would pool position 0) is refused by name."""
    from tp_multimodal.convert_clip import check_batch

    for eos, end in ((7, 7), (2, 99)):
        config = {"text_config": {"vocab_size": 100, "eos_token_id": eos},
                  "vision_config": {"image_size": 16, "patch_size": 8}}
        batch, kwargs = check_batch(None, config)
        ids, mask = batch["stream_0.input_ids"], batch["stream_0.attention_mask"]
        assert torch.equal(kwargs["input_ids"], ids) and kwargs["pixel_values"].shape[1:] == \
            (3, 16, 16)
        for row in range(ids.shape[0]):
            n = int(mask[row].sum())
            assert ids[row, n - 1] == end and (ids[row, : n - 1] != end).all()
            assert (ids[row, : n - 1] < end).all() or eos != 2
        assert {int(ids[1, -1]), int(ids[2, -1])} == {end, 0}
    with pytest.raises(TpError, match="eos_token_id 49407 is not an id of its 100-token"):
        check_batch(None, {"text_config": {"vocab_size": 100}, "vision_config": {}})


def test_image_processor_tp_cannot_follow_is_said(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Resize 256 then crop 224, bilinear: the closest section (the 224 centre square) and a
    warning naming both differences."""
    from tp_multimodal.clip_files import processor_section

    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 256},
        "crop_size": {"height": 224, "width": 224}, "resample": 2}))
    with caplog.at_level("WARNING"):
        section = processor_section(tmp_path, 224, 77)
    assert section["size"] == 224 and "image_size" not in section
    assert "resample 2" in caplog.text and "shorter side to 256 and crops 224" in caplog.text


def test_an_older_hub_layout_reads(tmp_path: Path, converted: dict[str, Any]) -> None:
    """As openai/clip-vit-base-patch32 is on the Hub: pytorch_model.bin with the position_ids
    buffers, a CLIPFeatureExtractor preprocessor_config.json with int sizes, token entries as
    {"content": ...}, text_config_dict / vision_config_dict beside the full configs."""
    from safetensors.torch import load_file

    from tpcli.convert.hf import from_hf
    from tpcli.train.checkpoint import load_checkpoint

    if converted["name"] != "legacy":
        pytest.skip("one folder is enough")
    src = tmp_path / "hf"
    shutil.copytree(converted["src"], src)
    weights = load_file(str(src / "model.safetensors"))
    weights["text_model.embeddings.position_ids"] = torch.arange(TEXT["max_position_embeddings"])
    weights["vision_model.embeddings.position_ids"] = torch.arange(26)[None]
    torch.save(weights, src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    (src / "processor_config.json").unlink()
    (src / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "CLIPFeatureExtractor", "size": 40, "crop_size": 40,
        "do_center_crop": True, "do_resize": True, "do_normalize": True, "resample": 3,
        "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.3, 0.25]}))
    tokens = {f"{r}_token": {"content": t, "__type": "AddedToken"} for r, t in
              (("unk", "<|endoftext|>"), ("bos", "<|startoftext|>"), ("eos", "<|endoftext|>"))}
    (src / "tokenizer_config.json").write_text(json.dumps(
        {**tokens, "pad_token": "!", "do_lower_case": True, "model_max_length": 24,
         "tokenizer_class": "CLIPTokenizer"}))
    config = json.loads((src / "config.json").read_text())
    config.update(text_config_dict=None, vision_config_dict=None)
    (src / "config.json").write_text(json.dumps(config))
    result = from_hf(str(src), tmp_path / "tp", get_plugins(), check=True, tolerance=TOL)
    assert result.max_abs_diff <= TOL
    loaded = load_checkpoint(tmp_path / "tp", get_plugins())
    assert list(loaded.recipe.processor.options.mean) == [0.5, 0.4, 0.3]
    ids = loaded.tokenizer.special_ids
    assert (ids["pad"], ids["eos"]) == (0, len(loaded.tokenizer.backend.get_vocab()) - 1)


def test_a_scale_past_the_clamp_is_exported_as_used(tmp_path: Path, converted: dict[str, Any],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Training can leave logit_scale above 4.6052, where clr clamps it; HF does not clamp, so
    the export holds the clamped value and --check passes."""
    from safetensors.torch import load_file

    from tpcli.convert.hf import to_hf
    from tpcli.files import save_weights

    if converted["name"] != "current":
        pytest.skip("one checkpoint is enough")
    ckpt = tmp_path / "tp"
    shutil.copytree(converted["tp"], ckpt)
    state = load_file(str(ckpt / "model.safetensors"))
    state["targets.clr.logit_scale"] = torch.tensor([4.9])
    save_weights(state, ckpt / "model.safetensors", {"format": "pt", "step": "0"})
    with caplog.at_level("WARNING"):
        result = to_hf(ckpt, tmp_path / "hf", get_plugins(), check=True, tolerance=TOL)
    assert result.max_abs_diff <= TOL and "above the clr target's clamp" in caplog.text
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))["logit_scale"]
    assert float(exported) == pytest.approx(4.6052)
