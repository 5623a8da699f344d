"""The vilt converter: HF ViltForMaskedLM / ViltForQuestionAnswering <-> tp, both directions, on
tiny random models with unusual settings; bit-identical round trips; `tp convert --check`
through the CLI with the tokenizer and the image processor; clean errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file

from tp_multimodal.convert_vilt import CONVERTER, config_to_recipe
from tpcli.errors import CheckpointError, TpError
from tpcli.testing.convert import hf_config_dict

sys.path.insert(0, str(Path(__file__).parent))  # the shared helpers (pytest imports by path)
from vilt_models import CONFIG, batch, hf_inputs, hf_model, tp_from_hf, tp_model  # noqa: E402

TOL = 1e-5
WORDS = ["a", "cat", "dog", "on", "the", "mat", "photo", "of", "two", "red", "##s", "##ing"]


def hf_from_tp(tp, cls):
    """The HF model (`cls`) of `tp`'s translated config, its weights converted strictly."""
    config = CONVERTER.recipe_to_config(tp.spec, tp.ctx.vocab_size)
    values = {k: v for k, v in config.items() if k != "model_type"}
    hf = cls(transformers.ViltConfig(**values)).eval()
    sd = CONVERTER.tp_to_hf(tp.state_dict(), expected=hf.state_dict().keys(), hf_config=config)
    hf.load_state_dict(sd, strict=True)
    return hf


def mlm_diff(hf, tp, b) -> float:
    """Max abs difference of the MLM logits over the real text tokens."""
    with torch.no_grad():
        ref = hf(**hf_inputs(b)).logits
        ours = tp.predict(b)["mlm"]
    assert ours.shape == ref.shape
    return float((ours - ref)[b["attention_mask"]].abs().max())


@pytest.mark.parametrize("padded", [False, True])
def test_hf_to_tp_mlm_logits(padded):
    hf = hf_model()
    assert mlm_diff(hf, tp_from_hf(CONVERTER, hf), batch(padded=padded)) <= TOL


def test_tp_to_hf_mlm_vqa_and_retrieval():
    """A tp model (random, its own init) -> HF: the same MLM / VQA logits; HF's pooler is tp's
    itm pooler."""
    section = config_to_recipe(hf_config_dict(hf_model()))
    tp = tp_model(section)
    with torch.no_grad():  # move every tensor: zero biases and unit norms hide swapped keys
        for p in tp.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    hf = hf_from_tp(tp, transformers.ViltForMaskedLM)
    b = batch()
    assert mlm_diff(hf, tp, b) <= TOL
    assert torch.equal(hf.mlm_score.decoder.weight, tp.stack.embedding.parts["word_patch"]
                       .word.weight)  # tied
    vqa = tp_model(config_to_recipe(hf_config_dict(hf_model("ViltForQuestionAnswering"))))
    hf_vqa = hf_from_tp(vqa, transformers.ViltForQuestionAnswering)
    with torch.no_grad():
        diff = (hf_vqa(**hf_inputs(b)).logits - vqa.predict(b)["vqa"]).abs().max()
    assert diff <= TOL
    rank = tp_model({**section, "target": {"rank": {}}})
    hf_rank = hf_from_tp(rank, transformers.ViltForImageAndTextRetrieval)
    with torch.no_grad():
        diff = (hf_rank(**hf_inputs(b)).logits - rank.predict(b)["rank"]).abs().max()
    assert diff <= TOL


@pytest.mark.parametrize("arch", ["ViltForMaskedLM", "ViltForQuestionAnswering",
                                  "ViltForImageAndTextRetrieval"])
def test_round_trip_is_bit_identical(arch):
    """HF -> tp -> HF gives every HF tensor back (the file's keys, strictly), and again."""
    hf = hf_model(arch)
    config = hf_config_dict(hf)
    tp = tp_from_hf(CONVERTER, hf)
    back = CONVERTER.tp_to_hf(tp.state_dict(), hf_config=config)
    want = hf.state_dict()
    assert set(back) == set(want)
    for key, value in want.items():
        assert torch.equal(back[key], value), key
    again = CONVERTER.hf_to_tp(back, hf_config=config)
    for key, value in again.items():
        assert torch.equal(tp.state_dict()[key], value), key


def test_mlm_training_loss_matches_hf():
    """tp's mlm loss (labels over the text only, the hidden sequence longer) = HF's."""
    hf = hf_model()
    tp = tp_from_hf(CONVERTER, hf)
    b = batch()
    labels = torch.full(b["input_ids"].shape, -100)
    labels[0, 1], labels[0, 4], labels[1, 2], labels[2, 0] = 5, 17, 60, 96
    with torch.no_grad():
        ref = hf(**hf_inputs(b), labels=labels).loss
        ours = tp({**b, "mlm_labels": labels, "itm_labels": torch.tensor([1, 0, 1])})
    assert abs(float(ours.losses["mlm"]) - float(ref)) <= 1e-5


def test_headless_vilt_model_hidden_states():
    """ViltModel (no heads): the body and itm's pooler convert; `--check`'s comparison of the
    hidden states (text positions: HF shuffles the patches) is within 1e-5."""
    from tpcli.convert.hf import max_abs_diff

    hf = hf_model("ViltModel")
    config = hf_config_dict(hf)
    tp = tp_model(config_to_recipe(config))
    own = tp.state_dict()
    sd = CONVERTER.hf_to_tp(hf.state_dict(), base=True, hf_config=config)
    assert set(own) - set(sd) == {k for k in own if k.startswith("targets.mlm.")
                                  or k.startswith("targets.itm.classifier.")}
    tp.load_state_dict({**own, **sd}, strict=True)
    assert max_abs_diff(CONVERTER, hf, tp, config, 97, base=True) <= TOL


def test_recipe_section_reads_the_config():
    section = config_to_recipe(hf_config_dict(hf_model()))
    assert section["embedding"]["word_patch"] == {
        "max_length": 11, "segments": 3, "modalities": 3, "image_size": 40, "patch_size": 8,
        "channels": 3, "max_image_length": -1}
    assert section["encoder"]["pre_norm"] and section["embedding_norm"] == "none"
    assert section["target"] == {"mlm": {"activation": "gelu"}, "itm": {}}
    assert section["norm_eps"] == 1e-6 and section["vocab_size"] == 97


def test_missing_key_is_named():
    hf = hf_model()
    sd = dict(hf.state_dict())
    del sd["vilt.encoder.layer.1.layernorm_after.bias"]
    own = tp_from_hf(CONVERTER, hf).state_dict()
    expected = [k for k in own if not k.startswith("targets.itm.classifier.")]
    with pytest.raises(CheckpointError, match=r"stack\.encoder\.layers\.1\.ffn_norm\.bias"):
        CONVERTER.hf_to_tp(sd, hf_config=hf_config_dict(hf), expected=expected)
    sd["vilt.surprise"] = torch.zeros(1)
    del sd["mlm_score.decoder.bias"]
    with pytest.raises(CheckpointError, match=r"mlm_score\.decoder\.bias(.|\n)*vilt\.surprise"
                       r"|vilt\.surprise(.|\n)*mlm_score\.decoder\.bias"):
        CONVERTER.hf_to_tp(sd, hf_config=hf_config_dict(hf))


def test_refuses_what_hf_cannot_express():
    section = config_to_recipe(hf_config_dict(hf_model()))
    tp = tp_model({**section, "target": {"mlm": {}}})
    with pytest.raises(TpError, match=r"needs \[mlm, itm\]"):
        CONVERTER.recipe_to_config(tp.spec, 97)


# ------------------------------------------------------------------------ the CLI

def hf_folder(folder: Path) -> None:
    """A tiny ViltForMaskedLM saved as the Hub has them: weights, config, BERT tokenizer files,
    a ViltImageProcessor (40 pixels shorter side, 8-pixel multiples)."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    vocab += [f"w{i}" for i in range(CONFIG["vocab_size"] - len(vocab))]
    tokenizer = transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)},
                                               model_max_length=11)
    image = transformers.ViltImageProcessorPil(size={"shortest_edge": 40}, size_divisor=8)
    transformers.ViltProcessor(image_processor=image, tokenizer=tokenizer).save_pretrained(
        str(folder))
    hf_model().save_pretrained(str(folder))


def test_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """HF folder -> `tp convert --from hf --check` (a subprocess) -> `tp convert --to hf
    --check` -> plain ViltForMaskedLM / AutoModel / AutoProcessor, no key missing or unexpected, the
    same tokens, every tensor of the original file back bit for bit; the exported processor's
    batch (images of two shapes, padded) gives tp the logits it gives HF."""
    from tpcli.api import load_checkpoint
    from tpcli.cli.main import main

    src, tp_dir, out = tmp_path / "hf", tmp_path / "tp", tmp_path / "back"
    hf_folder(src)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "tpcli.cli.main", "convert", str(src), "--from",
                           "hf", "--out", str(tp_dir), "--check", "--tolerance", "1e-5"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    diff = float(done.stdout.split("max abs difference of the logits: ")[1].split()[0])
    assert diff <= TOL
    recipe = (tp_dir / "recipe.yaml").read_text()
    assert "word_patch" in recipe and "image_text" in recipe and "wordpiece" in recipe
    capsys.readouterr()
    assert main(["convert", str(tp_dir), "--to", "hf", "--out", str(out), "--check",
                 "--tolerance", "1e-5"]) == 0
    printed = capsys.readouterr().out
    assert float(printed.split("max abs difference of the logits: ")[1].split()[0]) <= TOL

    # (no Auto class maps ViLT's MLM head; AutoModel gives the body)
    model, info = transformers.ViltForMaskedLM.from_pretrained(str(out),
                                                               output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}, info
    base, info = transformers.AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert type(base).__name__ == "ViltModel" and not info["missing_keys"]
    original, again = load_file(str(src / "model.safetensors")), load_file(
        str(out / "model.safetensors"))
    assert set(again) == set(original)
    for key, value in original.items():
        assert torch.equal(again[key], value), key

    processor = transformers.AutoProcessor.from_pretrained(str(out))
    assert type(processor).__name__ == "ViltProcessor"
    text = "a cat on the mat"
    want = transformers.AutoTokenizer.from_pretrained(str(src))(text)["input_ids"]
    assert processor.tokenizer(text)["input_ids"] == want
    # the processor's batch is tp's batch: same keys; images of two shapes, padded (pixel_mask)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
              for h, w in ((40, 60), (50, 40))]
    enc = dict(processor(images=images, text=[text, "two red dogs"], padding=True,
                         return_tensors="pt"))
    assert set(enc) == {"input_ids", "attention_mask", "token_type_ids", "pixel_values",
                        "pixel_mask"} and enc["pixel_mask"].min() == 0
    tp = load_checkpoint(tp_dir).model.eval()
    with torch.no_grad():
        ref = model.eval()(**enc).logits
        ours = tp.predict({**enc, "attention_mask": enc["attention_mask"].bool()})["mlm"]
    assert (ours - ref)[enc["attention_mask"].bool()].abs().max() <= TOL
    config = json.loads((out / "preprocessor_config.json").read_text())
    assert config["size"] == {"shortest_edge": 40} and config["size_divisor"] == 8
    assert config["image_mean"] == [0.5, 0.5, 0.5]


def test_cli_names_the_missing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tpcli.cli.main import main

    src = tmp_path / "hf"
    hf_folder(src)
    weights = load_file(str(src / "model.safetensors"))
    del weights["vilt.embeddings.patch_embeddings.projection.bias"]
    save_file(weights, str(src / "model.safetensors"), metadata={"format": "pt"})
    capsys.readouterr()
    assert main(["convert", str(src), "--from", "hf", "--out", str(tmp_path / "tp")]) == 1
    err = capsys.readouterr().err
    assert "vilt.embeddings.patch_embeddings.projection.bias" in err and "Traceback" not in err
    assert not (tmp_path / "tp").exists()
