"""The recurrent encoders: plain torch LSTM parity, padding invariance, causal forward half."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tpcli.errors import TpError
from tpcli.model.module import BuildContext
from tpcli.plugins import get_plugins

H, B, T = 16, 3, 7
REGISTRY = get_plugins().registry
NAMES = ("lstm", "gru", "bilstm", "birnn")


def build(name: str, hidden: int = H, **options: object) -> nn.Module:
    cls = REGISTRY.get("encoder", name)
    torch.manual_seed(0)
    ctx = BuildContext(hidden_size=hidden, vocab_size=50, dropout=0.0)
    return cls(cls.Config(layers=2, **options), ctx).eval()


def right_padded_mask(lengths: tuple[int, ...], t: int) -> torch.Tensor:
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)


def test_lstm_equals_plain_torch_lstm() -> None:
    enc = build("lstm")
    ref = nn.LSTM(H, H, num_layers=2, batch_first=True)
    ref.load_state_dict(enc.rnn.state_dict(), strict=True)
    x = torch.randn(B, T, H)
    with torch.no_grad():
        torch.testing.assert_close(enc(x, torch.ones(B, T, dtype=torch.bool)), ref(x)[0])
        torch.testing.assert_close(enc(x, None), ref(x)[0])


def test_bilstm_halves_equal_two_plain_lstms() -> None:
    enc = build("bilstm")
    fwd, bwd = (nn.LSTM(H, H // 2, num_layers=2, batch_first=True) for _ in range(2))
    fwd.load_state_dict(enc.fwd.state_dict(), strict=True)
    bwd.load_state_dict(enc.bwd.state_dict(), strict=True)
    x = torch.randn(B, T, H)
    with torch.no_grad():
        y = enc(x, None)
        torch.testing.assert_close(y[..., : H // 2], fwd(x)[0])
        torch.testing.assert_close(y[..., H // 2:], bwd(x.flip(1))[0].flip(1))


@pytest.mark.parametrize("name", NAMES)
def test_padding_invariance_and_zero_padding(name: str) -> None:
    """Appending padding leaves real positions unchanged; pad positions are zero."""
    enc = build(name)
    lengths = (T, 5, 2)
    x = torch.randn(B, T, H)
    mask = right_padded_mask(lengths, T)
    extra = 4
    x_long = torch.cat([x, torch.randn(B, extra, H)], dim=1)  # garbage in the new padding
    mask_long = right_padded_mask(lengths, T + extra)
    with torch.no_grad():
        y = enc(x, mask)
        y_long = enc(x_long, mask_long)
        for row, n in enumerate(lengths):
            # each row alone, unpadded, gives the same real positions
            alone = enc(x[row:row + 1, :n], None)[0]
            torch.testing.assert_close(y[row, :n], alone, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(y_long[row, :n], alone, rtol=1e-5, atol=1e-6)
    assert (y[~mask] == 0).all() and (y_long[~mask_long] == 0).all()
    assert y[mask].abs().sum() > 0


@pytest.mark.parametrize("name", ("bilstm", "birnn"))
def test_forward_half_causal_backward_half_anticausal(name: str) -> None:
    enc = build(name)
    x = torch.randn(1, T, H)
    t = 3
    x2 = x.clone()
    x2[0, t + 1] += 1.0  # change token t+1 only
    with torch.no_grad():
        y, y2 = enc(x, None), enc(x2, None)
    f, b = slice(0, H // 2), slice(H // 2, H)
    torch.testing.assert_close(y[0, : t + 1, f], y2[0, : t + 1, f], rtol=0, atol=0)
    assert not torch.allclose(y[0, t + 1:, f], y2[0, t + 1:, f])  # the future does see it
    torch.testing.assert_close(y[0, t + 2:, b], y2[0, t + 2:, b], rtol=0, atol=0)
    assert not torch.allclose(y[0, : t + 2, b], y2[0, : t + 2, b])


def test_torch_bidirectional_stack_would_not_be_causal() -> None:
    """Why bilstm is two stacks: torch's 2-layer bidirectional LSTM leaks the future forward."""
    torch.manual_seed(0)
    ref = nn.LSTM(H, H // 2, num_layers=2, batch_first=True, bidirectional=True).eval()
    x = torch.randn(1, T, H)
    x2 = x.clone()
    x2[0, 4] += 1.0
    with torch.no_grad():
        assert not torch.allclose(ref(x)[0][0, :4, : H // 2], ref(x2)[0][0, :4, : H // 2])


def test_odd_hidden_and_left_padding_are_clear_errors() -> None:
    with pytest.raises(TpError, match="odd"):
        build("bilstm", hidden=15)
    enc = build("lstm")
    left = torch.tensor([[False, True, True]])
    with pytest.raises(TpError, match="right-padded"):
        enc(torch.randn(1, 3, H), left)


def test_birnn_cells() -> None:
    for cell, cls in (("lstm", nn.LSTM), ("gru", nn.GRU), ("rnn", nn.RNN)):
        enc = build("birnn", cell=cell)
        assert type(enc.fwd) is cls and enc.fwd.hidden_size == H // 2
