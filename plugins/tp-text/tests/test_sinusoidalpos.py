"""The `sinusoidalpos` embedding against HF Speech2Text's sinusoidal table and forward."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.speech_to_text.modeling_speech_to_text import (
    Speech2TextSinusoidalPositionalEmbedding as HfSinusoidal,
)

from tpcli.errors import TpError
from tpcli.model.module import BuildContext

from tp_text.sinusoidalpos import SinusoidalPosEmbedding, sinusoid_table


def build(dim: int = 8, **options: object) -> SinusoidalPosEmbedding:
    return SinusoidalPosEmbedding(SinusoidalPosEmbedding.Config(**options),
                                  BuildContext(hidden_size=dim, vocab_size=10))


@pytest.mark.parametrize("dim", [4, 8, 17, 64])
def test_table_equals_hf_get_embedding(dim: int) -> None:
    ours = sinusoid_table(300, dim)
    hf = HfSinusoidal.get_embedding(300, dim).float()
    torch.testing.assert_close(ours, hf, rtol=0, atol=0)


def test_layout_by_hand() -> None:
    """First half sin, second half cos, frequencies 10000 ** (-i / (h - 1))."""
    t = sinusoid_table(6, 6)  # h = 3: frequencies 1, 1/100, 1/10000
    for p in range(6):
        for i, w in enumerate([1.0, 0.01, 1e-4]):
            assert t[p, i].item() == pytest.approx(math.sin(p * w), abs=1e-6)
            assert t[p, 3 + i].item() == pytest.approx(math.cos(p * w), abs=1e-6)


def test_forward_equals_hf_speech2text_with_padding() -> None:
    """HF: padding_idx 1, rows from padding_idx + 1 for real tokens, a zero row for padding."""
    dim, pad = 16, 1
    hf = HfSinusoidal(num_positions=40, embedding_dim=dim, padding_idx=pad)
    ours = build(dim, max_length=42, offset=pad + 1, padding_aware=True)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, pad, pad, pad], [5, pad, pad, pad, pad, pad]])
    mask = ids != pad
    expected = hf(ids)
    got = ours({"input_ids": ids, "attention_mask": mask})
    assert got.shape == (3, 6, dim)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_plain_numbering_offset_scale_and_position_ids() -> None:
    ours = build(8, max_length=16, offset=3, scale=2.0)
    ids = torch.zeros(2, 5, dtype=torch.long)
    table = sinusoid_table(16, 8)
    got = ours({"input_ids": ids, "attention_mask": torch.ones(2, 5, dtype=torch.bool)})
    torch.testing.assert_close(got, 2.0 * table[3:8].expand(2, 5, 8), rtol=0, atol=0)
    position_ids = torch.tensor([[0, 1, 2, 0, 1], [4, 5, 6, 7, 8]])  # restarts per document
    got = ours({"input_ids": ids, "position_ids": position_ids})
    torch.testing.assert_close(got, 2.0 * table[position_ids], rtol=0, atol=0)


def test_longer_sequences_extend_table_and_nothing_is_saved() -> None:
    ours = build(8, max_length=4)
    assert ours.state_dict() == {} and list(ours.parameters()) == []
    got = ours({"input_ids": torch.zeros(1, 10, dtype=torch.long)})
    torch.testing.assert_close(got[0], sinusoid_table(10, 8), rtol=0, atol=0)


def test_embed_dim_from_context_and_too_small() -> None:
    ctx = BuildContext(hidden_size=8, vocab_size=10)
    if hasattr(ctx, "embedding_size"):  # ALBERT-style factorized size, when the context has it
        ctx = BuildContext(hidden_size=8, vocab_size=10, embedding_size=6)  # type: ignore[call-arg]
        m = SinusoidalPosEmbedding(SinusoidalPosEmbedding.Config(), ctx)
        assert m({"input_ids": torch.zeros(1, 3, dtype=torch.long)}).shape == (1, 3, 6)
    with pytest.raises(TpError, match="too small"):
        build(3)
