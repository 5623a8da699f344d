"""What tp-vision's tests share: a tiny ViT recipe folder and the `tp` command in a subprocess."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

import pytest

from tpcli.testing.runs import run_tp

TINY_VIT = """
model:
  hidden_size: 32
  dropout: 0.0
  embedding_norm: none
  embedding:
    - {{name: patch, image_size: 16, patch_size: 4}}
    - {{name: pos, max_length: 17}}
  encoder: {{name: transformer, layers: 1, heads: 2, ffn_size: 64, pre_norm: true}}
  target: {{cls: {{labels: {labels}}}}}
data:
  processor: {{name: image, size: 16{processor}}}
pretrain: {{steps: 4, batch_size: 4, log_every: 2, save_every: 4}}
{extra}"""


def write_tiny_vit(folder: Path, labels: int = 3, processor: str = "", extra: str = "") -> Path:
    """A recipe folder of a 1-layer ViT over 16x16 images (patch 4); `processor` adds
    image-processor options (", hflip: 0.0"), `extra` more sections (a finetune section)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(TINY_VIT.format(labels=labels, processor=processor,
                                                        extra=extra))
    return folder


@pytest.fixture(scope="session")
def tiny_vit() -> Callable[..., Path]:
    """`tiny_vit(folder, labels=3, processor="", extra="")`: see `write_tiny_vit`."""
    return write_tiny_vit


@pytest.fixture(scope="session")
def tp() -> Callable[..., subprocess.CompletedProcess]:
    """`tp(*args)`: see `run_tp`."""
    return run_tp
