"""BEiT's 2-D relative position bias (`tpcli.layers.positions`): the index against a hand-made
one and against Hugging Face's, the bias it gathers, and what is (not) saved."""

from __future__ import annotations

import os

import pytest
import torch

from tpcli.layers.positions import RelativePositionBias2D, relative_position_index_2d


def test_index_of_a_1x2_grid_by_hand() -> None:
    # offsets grid (2*1-1) x (2*2-1) = 1 x 3: row = query column - key column + 1; then
    # 3 = cls -> patch, 4 = patch -> cls, 5 = cls -> cls
    want = torch.tensor([[5, 3, 3],
                         [4, 1, 0],   # query (0, 0): key (0, 0) -> 0 - 0 + 1, key (0, 1) -> 0
                         [4, 2, 1]])  # query (0, 1): key (0, 0) -> 1 - 0 + 1, key (0, 1) -> 1
    assert torch.equal(relative_position_index_2d((1, 2)), want)


def test_index_of_a_2x2_grid_reads_row_offsets_before_column_offsets() -> None:
    index = relative_position_index_2d((2, 2))  # offsets grid 3 x 3, patches (0,0) (0,1) (1,0) (1,1)
    assert index.shape == (5, 5)
    # query (1, 1), key (0, 0): offset (+1, +1) -> (1 + 1) * 3 + (1 + 1) = 8
    assert index[4, 1] == 8
    # query (0, 1), key (1, 0): offset (-1, +1) -> 0 * 3 + 2 = 2
    assert index[2, 3] == 2
    assert index.diagonal()[1:].eq(4).all()  # every patch to itself: offset (0, 0)
    assert index[1:, 1:].max() == 8 and (index[0, 1:] == 9).all() and (index[1:, 0] == 10).all()


@pytest.mark.parametrize("grid", [(4, 4), (4, 6), (3, 1), (1, 1)])
def test_index_matches_hugging_face_beit(grid: tuple[int, int]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    beit = pytest.importorskip("transformers.models.beit.modeling_beit")
    want = beit.BeitRelativePositionBias.generate_relative_position_index(grid)
    assert torch.equal(relative_position_index_2d(grid), want)


def test_bias_gathers_the_table_per_head() -> None:
    torch.manual_seed(0)
    m = RelativePositionBias2D(heads=3, grid=(2, 3))
    assert m.table.shape == (3 * 5 + 3, 3) and not m.table.any()  # starts at zeros
    with torch.no_grad():
        m.table.normal_()
    bias = m(7, 7)
    assert bias.shape == (1, 3, 7, 7) and bias.is_contiguous()
    index = relative_position_index_2d((2, 3))
    for head in range(3):
        assert torch.equal(bias[0, head], m.table[:, head][index])
    # without a class token: the patches' block only
    assert torch.equal(m(6, 6), bias[:, :, 1:, 1:])


def test_bias_refuses_a_length_the_grid_does_not_have() -> None:
    m = RelativePositionBias2D(heads=2, grid=(2, 2))
    for args in ((6, 6), (5, 4), (4, 4, 1)):
        with pytest.raises(ValueError, match="2x2 grid covers 5 or 4 positions"):
            m(*args)


def test_the_index_is_not_saved_and_reset_restores_it() -> None:
    m = RelativePositionBias2D(heads=2, grid=(3, 2))
    assert list(m.state_dict()) == ["table"]
    with torch.no_grad():
        m.table.fill_(1.0)
        m.index.zero_()
    m.reset_parameters_tp()
    assert not m.table.any() and torch.equal(m.index, relative_position_index_2d((3, 2)))
