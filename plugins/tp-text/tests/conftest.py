"""Fixtures the converter parity tests share: a test module names its HF model and config
classes in HF_CLASSES, their tiny options in HF_CONFIG and its CONVERTER."""

from __future__ import annotations

from typing import Any

import pytest

from tpcli.convert.testing import random_hf, tp_from_hf
from tpcli.model import TpModel


@pytest.fixture(scope="module")
def hf_model(request: pytest.FixtureRequest) -> Any:
    """The module's tiny random HF model (seeded, perturbed)."""
    return random_hf(*request.module.HF_CLASSES, **request.module.HF_CONFIG)


@pytest.fixture(scope="module")
def tp_model(request: pytest.FixtureRequest, hf_model: Any) -> TpModel:
    """The tp model translated from `hf_model`, with its weights."""
    return tp_from_hf(request.module.CONVERTER, hf_model)
