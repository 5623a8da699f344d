"""`tp convert` of the bart-base recipe (shrunk, with its byte-level BPE tokenizer) to Hugging
Face and back through the CLI (see test_cli_families.py; its own file: the BPE takes seconds to
build)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tpcli.testing.convert import cli_round_trip

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

SMALL = ["model.hidden_size=32", "model.encoder.layers=2", "model.encoder.heads=2",
         "model.encoder.ffn_size=64", "model.decoder.layers=2", "model.decoder.heads=2",
         "model.decoder.ffn_size=64", "model.embedding.pos.max_length=66",
         "model.tgt_embedding.pos.max_length=66"]


def test_bart_round_trip_through_hf(tmp_path: Path) -> None:
    # BART's 66 position rows (offset 2) take 64 tokens
    cli_round_trip("bart-base", SMALL, "AutoModelForSeq2SeqLM", "BartForConditionalGeneration",
                   tmp_path, 64)
