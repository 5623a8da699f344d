"""The feed-forward block's activations against the functions Hugging Face models use."""

from __future__ import annotations

import pytest
import torch

from tpcli.layers.ffn import ACTIVATIONS, FeedForward, make_activation


@pytest.mark.parametrize("name, hf_name", [("gelu", "gelu"), ("gelu_tanh", "gelu_new"),
                                           ("quick_gelu", "quick_gelu"), ("relu", "relu"),
                                           ("silu", "silu")])
def test_activation_matches_hf(name: str, hf_name: str) -> None:
    from transformers.activations import ACT2FN

    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    torch.testing.assert_close(make_activation(name)(x), ACT2FN[hf_name](x), rtol=0, atol=1e-12)


def test_every_listed_activation_builds_and_unknown_is_refused() -> None:
    x = torch.randn(2, 3, 8)
    for name in ACTIVATIONS:
        assert FeedForward(8, 16, name)(x).shape == (2, 3, 8)
    with pytest.raises(ValueError, match="quick_gelu"):
        make_activation("swiglu")
