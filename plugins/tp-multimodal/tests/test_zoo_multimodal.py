"""The image-text zoo cards (zoo/clip-vit-b16.yaml, zoo/vilt-b32.yaml) end to end against tp's
local Hugging Face Hub (`tpcli.testing.hub_server.HubServer`) serving SMALL random models under
the cards' repository ids, with exactly the files the cards list, as the published repositories
hold them:

- CLIP: model.safetensors, a config.json with OpenAI's legacy eos_token_id 2 (HF then pools at
  each caption's highest id), the tokenizer as tokenizer.json + tokenizer_config.json +
  special_tokens_map.json (padding with "!", id 0, as OpenAI's), CLIPFeatureExtractor's
  preprocessor_config.json; served at the commit the card pins. The card pins sha256s of the
  published files, which a small model cannot have: the pull reads a copy of the card without
  them (every other field as written).
- ViLT: pytorch_model.bin (pickled, as published), config.json, ViltFeatureExtractor's
  preprocessor_config.json and a BERT vocab.txt alone.

A pull delivers a tp checkpoint by default whose outputs on real captions and photographs equal
transformers' on the same snapshot (CLIP: both embeddings within 1e-5 and both logit matrices,
100 x the cosines, within 100 x 1e-5; ViLT: the MLM logits of every real text position within
1e-5); the pulled CLIP classifies photographs zero-shot
through `tp infer --task zero_shot` with HF's probabilities. And the built-in recipes fit the
published shapes: each card's converted configuration (transformers' defaults are the published
ViT-B/16 CLIP and ViLT-B/32) builds, on the meta device, a model of exactly the recipe's tensors.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
import yaml

from tp_multimodal.testing import CAPTIONS, photos
from tpcli.plugins import get_plugins
from tpcli.testing.convert import perturbed
from tpcli.testing.hub_server import HubServer, private_zoo

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))
from clip_models import hf_clip, save_hf_clip  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
TOL = 1e-5
CLIP_REPO, VILT_REPO = "openai/clip-vit-base-patch16", "dandelin/vilt-b32-mlm"
# transformers' CLIPFeatureExtractor as the published repository saves it (sizes as ints)
CLIP_FEATURE_EXTRACTOR = {
    "feature_extractor_type": "CLIPFeatureExtractor", "size": 40, "crop_size": 40,
    "do_center_crop": True, "do_resize": True, "do_normalize": True, "resample": 3,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711]}
VILT_FEATURE_EXTRACTOR = {
    "feature_extractor_type": "ViltFeatureExtractor", "do_normalize": True, "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3, "size": 32,
    "size_divisor": 8}
# ViLT-B/32's shape, shrunk: 32 px images in 8 px patches, 40 text positions, 2 token types
VILT_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, image_size=32, patch_size=8, max_position_embeddings=40,
                 type_vocab_size=2, modality_type_vocab_size=2, layer_norm_eps=1e-12,
                 hidden_act="gelu")


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[HubServer, Path]]:
    """A private TP_HOME, Hugging Face cache and card folder, and the local Hub activated."""
    _, _, cards = private_zoo(tmp_path, monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models, shared machine
    with HubServer() as server, server.activate():
        yield server, cards
    torch.set_num_threads(threads)


def card(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "zoo" / f"{name}.yaml").read_text())


def publish(hub: HubServer, repo: str, folder: Path, files: list[str], sha: str | None) -> None:
    """Serve exactly the card's `files` of `folder` as `repo` (at commit `sha` when pinned)."""
    missing = [f for f in files if not (folder / f).is_file()]
    assert not missing, missing
    hub.add_repo(repo, {f: (folder / f).read_bytes() for f in files},
                 **({"sha": sha} if sha else {}))


def pull(name: str, format: str | None = None) -> dict[str, Any]:
    from tpcli.zoo import ZooRequest, zoo

    extra = {"format": format} if format else {}
    return zoo(ZooRequest("pull", name=name, progress=False, **extra))


def images() -> list[Any]:
    from PIL import Image

    return [Image.fromarray(a).convert("RGB") for a in photos()]


# ------------------------------------------------------------------------ CLIP

def clip_folder(root: Path) -> Path:
    """A tiny CLIPModel saved as openai/clip-vit-base-patch16 holds its files."""
    folder = save_hf_clip(root, hf_clip(legacy_eos=True, pad="!", seed=3,
                                        logit_scale_init_value=4.6052))
    (folder / "preprocessor_config.json").write_text(json.dumps(CLIP_FEATURE_EXTRACTOR))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    roles = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(roles))
    return folder


def test_clip_card_pulls_as_tp_and_classifies_zero_shot(hub: tuple[HubServer, Path],
                                                         tmp_path: Path) -> None:
    from tpcli.train.checkpoint import load_checkpoint

    server, cards = hub
    published = card("clip-vit-b16")
    assert published["source"] == f"hf://{CLIP_REPO}" and published["architecture"] == "CLIPModel"
    files = [f["path"] for f in published["files"]]
    assert any(f in files for f in ("model.safetensors", "pytorch_model.bin"))
    publish(server, CLIP_REPO, clip_folder(tmp_path / "clip"), files, published["revision"])
    # the card as written, less the published files' sha256s and under its own name
    local = {**published, "name": "clip-vit-b16-local", "aliases": [],
             "files": [{"path": f} for f in files]}
    (cards / "clip-vit-b16-local.yaml").write_text(yaml.safe_dump(local))
    result = pull("clip-vit-b16-local")
    assert result["format"] == "tp"  # converted on the way in
    snapshot = Path(pull("clip-vit-b16-local", format="hf")["path"])
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(files)

    loaded = load_checkpoint(Path(result["path"]), get_plugins())
    assert loaded.recipe.model.options.hidden_size == 30
    processor = transformers.AutoProcessor.from_pretrained(str(snapshot))
    inputs = dict(processor(text=CAPTIONS, images=images(), padding=True, truncation=True,
                            max_length=24, return_tensors="pt"))  # the tiny text tower's 24
    ref = transformers.CLIPModel.from_pretrained(str(snapshot)).eval()
    with torch.no_grad():
        want = ref(**inputs)
        got = loaded.model.eval().predict({
            "stream_0.input_ids": inputs["input_ids"],
            "stream_0.attention_mask": inputs["attention_mask"].bool(),
            "stream_1.pixel_values": inputs["pixel_values"]})["clr"]
    scale = float(ref.logit_scale.detach().exp())  # 100, OpenAI's: logits are 100 x the cosines
    for name, tol in (("text_embeds", TOL), ("image_embeds", TOL),
                      ("logits_per_text", TOL * scale), ("logits_per_image", TOL * scale)):
        assert float((got[name] - getattr(want, name)).abs().max()) <= tol, name
    assert want.logits_per_image.std() > 0.5  # the comparison is not of near-constants

    # zero-shot: `tp infer --task zero_shot` on labelled photographs, as HF scores them
    from tpcli.cli.main import main

    labels = ["astronaut", "coffee", "cat", "camera", "rocket", "coffee"]
    rows = []
    for i, image in enumerate(images()):
        image.save(tmp_path / f"{i}.png")
        rows.append(f"{labels[i]}\t{tmp_path / f'{i}.png'}")
    (tmp_path / "photos.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "zero_shot.jsonl"
    code = main(["infer", result["path"], "--task", "zero_shot", "--input",
                 str(tmp_path / "photos.tsv"), "--out", str(out)])
    assert code == 0
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    classes = sorted(set(labels))
    prompts = [f"a photo of a {c}." for c in classes]
    enc = processor(text=prompts, images=images(), padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = ref(**enc).logits_per_image.softmax(-1)  # (6 images, 5 classes)
    for row, p in zip(predictions, probs):
        assert row["label"] == classes[int(p.argmax())]
        for top in row["top"]:
            assert top["probability"] == pytest.approx(float(p[classes.index(top["label"])]),
                                                       abs=1e-5)


# ------------------------------------------------------------------------ ViLT

def vilt_folder(root: Path) -> Path:
    """A tiny ViltForMaskedLM saved as dandelin/vilt-b32-mlm holds it: the weights pickled, a
    BERT vocab.txt (the captions' words), the legacy feature extractor."""
    words = sorted({w for c in CAPTIONS for w in c.lower().split()})
    vocab = ["[PAD]", *(f"[unused{i}]" for i in range(3)), "[UNK]", "[CLS]", "[SEP]", "[MASK]",
             *words, "##s", "##ing"]
    root.mkdir(parents=True)
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = transformers.ViltConfig(vocab_size=len(vocab), **VILT_TINY)
    model = perturbed(transformers.ViltForMaskedLM(config), scale=0.1)
    model.save_pretrained(str(root))
    torch.save(model.state_dict(), root / "pytorch_model.bin")
    (root / "model.safetensors").unlink()
    (root / "preprocessor_config.json").write_text(json.dumps(VILT_FEATURE_EXTRACTOR))
    return root


def test_vilt_card_pulls_as_tp_with_hf_mlm_logits(hub: tuple[HubServer, Path],
                                                  tmp_path: Path) -> None:
    from tpcli.train.checkpoint import load_checkpoint

    server, _ = hub
    published = card("vilt-b32")
    assert published["source"] == f"hf://{VILT_REPO}"
    assert published["architecture"] == "ViltForMaskedLM"
    files = [f["path"] for f in published["files"]]
    publish(server, VILT_REPO, vilt_folder(tmp_path / "vilt"), files, None)
    result = pull("vilt-b32")
    assert result["format"] == "tp"
    loaded = load_checkpoint(Path(result["path"]), get_plugins())
    info = json.loads((Path(result["path"]) / "checkpoint.json").read_text())
    assert info["converted_from"]["architecture"] == "ViltForMaskedLM"

    snapshot = Path(pull("vilt-b32", format="hf")["path"])
    image_processor = transformers.ViltImageProcessorPil.from_pretrained(str(snapshot))
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(snapshot))  # vocab.txt
    text = [c.replace("cup", "[MASK]") for c in CAPTIONS]
    enc = dict(tokenizer(text, padding=True, return_tensors="pt"))
    enc.update(image_processor(images(), return_tensors="pt"))  # padded to a common size
    assert enc["pixel_mask"].min() == 0
    # tp's tokenizer (vocab.txt, lower-cased) gives the same ids
    from tp_multimodal.image_text_processor import text_specials

    start, end = text_specials(loaded.tokenizer)
    for row, caption in enumerate(text):
        n = int(enc["attention_mask"][row].sum())
        ids = start + loaded.tokenizer.encode_batch([caption])[0] + end
        assert ids == enc["input_ids"][row, :n].tolist(), caption
    ref = transformers.ViltForMaskedLM.from_pretrained(str(snapshot)).eval()
    with torch.no_grad():
        want = ref(**enc).logits
        got = loaded.model.eval().predict({**enc, "attention_mask":
                                           enc["attention_mask"].bool()})["mlm"]
    real = enc["attention_mask"].bool()
    assert got.shape == want.shape and want[real].std() > 0.1
    assert float((got - want)[real].abs().max()) <= TOL


# ------------------------------------------------------------------------ the recipes fit

def meta_shapes(spec: Any, vocab: int, special_ids: dict[str, int]) -> dict[str, tuple]:
    from tpcli.model import build_model

    with torch.device("meta"):
        model = build_model(spec, get_plugins().registry, vocab, special_ids)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("card_name, recipe_name, config", [
    ("clip-vit-b16", "clip-vit-b16", lambda: transformers.CLIPConfig(
        vision_config={"patch_size": 16}).to_dict()),
    ("vilt-b32", "vilt-b32", lambda: transformers.ViltConfig().to_dict()),
])
def test_recipe_fits_the_published_shapes(card_name: str, recipe_name: str, config: Any) -> None:
    """transformers' default CLIPConfig (patch 16) is openai/clip-vit-base-patch16's shape and
    its ViltConfig dandelin/vilt-b32-mlm's; converted, each builds the recipe's tensors."""
    from tpcli.api import load_recipe, load_tokenizer
    from tpcli.recipes.config import build_recipe

    plugins = get_plugins()
    published = card(card_name)
    assert published["recipe"] == recipe_name
    hf = config()
    conv = plugins.registry.get("converter", published["model_type"])
    recipe = load_recipe(recipe_name)
    data = {"processor": {"name": "image_text", "layout": recipe.processor.options.layout}}
    model = build_recipe({"model": conv.config_to_recipe(hf), "data": data, "pretrain": {}},
                         plugins.registry, name=card_name).model
    tok = load_tokenizer(recipe)
    ids = tok.special_ids
    want = meta_shapes(recipe.model, tok.vocab_size, ids)
    got = meta_shapes(model, tok.vocab_size, ids)
    assert got == want
    params = sum(int(np.prod(s)) for s in want.values())
    assert params == pytest.approx(published["params"], rel=0.01)
