"""The `lstm` decoder: Luong attention by hand, masking, causality, padding, a tiny copy task."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tpcli.errors import TpError
from tpcli.model.module import BuildContext
from tpcli.plugins import get_plugins

H, B, T, S = 8, 3, 5, 6  # hidden, batch, target length, memory length
REGISTRY = get_plugins().registry


def build(hidden: int = H, **options: object) -> nn.Module:
    cls = REGISTRY.get("decoder", "lstm")
    torch.manual_seed(0)
    ctx = BuildContext(hidden_size=hidden, vocab_size=50, dropout=0.0)
    m = cls(cls.Config(layers=2, **options), ctx)
    for p in m.parameters():  # torch's LSTM init is small; make the attention matter
        nn.init.normal_(p, 0.0, 0.5)
    return m.eval()


def inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(B, T, H, generator=g)
    memory = torch.randn(B, S, H, generator=g)
    memory_mask = torch.arange(S)[None, :] < torch.tensor([S, 4, 2])[:, None]  # (B, S)
    return y, memory, memory_mask


def reference(m: nn.Module, y: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
              attention: str, init_state: str) -> torch.Tensor:
    """Luong global attention written out position by position, with a plain torch LSTM."""
    lstm = nn.LSTM(H, H, num_layers=2, batch_first=True)
    lstm.load_state_dict(m.rnn.state_dict(), strict=True)
    out = torch.zeros(B, T, H)
    for b in range(B):
        n = int(memory_mask[b].sum())
        mem = memory[b, :n]  # (n, H): only the real positions exist here
        state = None
        if init_state == "memory":
            h0 = mem[-1].expand(2, 1, H).contiguous()
            state = (h0, torch.zeros_like(h0))
        h = lstm(y[b:b + 1], state)[0][0]  # (T, H)
        if attention == "none":
            out[b] = h
            continue
        for t in range(T):
            keys = mem @ m.attn_in.weight.T if attention == "general" else mem  # (n, H)
            alpha = torch.softmax(keys @ h[t], dim=0)  # (n,)
            c = alpha @ mem  # (H,)
            out[b, t] = torch.tanh(m.combine.weight @ torch.cat([c, h[t]]))
    return out


@pytest.mark.parametrize("attention", ["dot", "general", "none"])
@pytest.mark.parametrize("init_state", ["zeros", "memory"])
def test_equals_luong_attention_by_hand(attention: str, init_state: str) -> None:
    m = build(attention=attention, init_state=init_state)
    y, memory, memory_mask = inputs()
    with torch.no_grad():
        got = m(y, None, memory, memory_mask)
        expected = reference(m, y, memory, memory_mask, attention, init_state)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_state_dict_keys() -> None:
    assert sorted(build(attention="general").state_dict()) == sorted(
        [f"rnn.{k}_l{i}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") for i in (0, 1)]
        + ["attn_in.weight", "combine.weight"])
    assert "attn_in.weight" not in build(attention="dot").state_dict()
    assert not any(k.startswith(("attn_in", "combine")) for k in build(attention="none").state_dict())


def test_padded_memory_gets_zero_weight() -> None:
    m = build(attention="general", init_state="memory")
    y, memory, memory_mask = inputs()
    garbage = memory.masked_fill(~memory_mask.unsqueeze(-1), 1e3)
    with torch.no_grad():
        torch.testing.assert_close(m(y, None, garbage, memory_mask), m(y, None, memory, memory_mask),
                                   rtol=0, atol=0)
        _, weights = m.attend(torch.randn(B, T, H), memory, memory_mask)
    assert (weights.transpose(1, 2)[~memory_mask] == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, T))
    # a memory row with no real position: context 0, output finite
    empty = memory_mask.clone()
    empty[2] = False
    with torch.no_grad():
        context, weights = m.attend(torch.randn(B, T, H), memory, empty)
        assert (context[2] == 0).all() and (weights[2] == 0).all()
        assert torch.isfinite(m(y, None, memory, empty)).all()


def test_causal_and_target_padding() -> None:
    m = build()
    y, memory, memory_mask = inputs()
    t = 2
    y2 = y.clone()
    y2[:, t + 1:] += torch.randn(B, T - t - 1, H)  # change every position after t
    tmask = torch.arange(T)[None, :] < torch.tensor([T, 3, 1])[:, None]  # (B, T) right-padded
    with torch.no_grad():
        a, b = m(y, None, memory, memory_mask), m(y2, None, memory, memory_mask)
        torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=0)
        assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])
        # padding holding other values has no effect on the real positions
        padded = m(torch.where(tmask.unsqueeze(-1), y, y2 * 7.0), tmask, memory, memory_mask)
    assert (padded[~tmask] == 0).all()
    torch.testing.assert_close(padded[tmask], a[tmask], rtol=0, atol=0)
    with pytest.raises(TpError, match="right-padded"):
        m(y, tmask.flip(1), memory, memory_mask)


def test_gradient_reaches_inputs_memory_and_every_parameter() -> None:
    m = build(attention="general", init_state="memory").train()
    y, memory, memory_mask = (x.clone() for x in inputs())
    y.requires_grad_()
    memory = memory.requires_grad_()
    (m(y, None, memory, memory_mask) * torch.randn(B, T, H)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert memory.grad is not None
    assert memory.grad[memory_mask].abs().sum() > 0
    assert (memory.grad[~memory_mask] == 0).all()  # padding neither contributes nor learns


def test_tiny_copy_task_learns() -> None:
    """Decode the source sequence back through attention: the loss must fall well below chance."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only add contention (about 0.5 s with one)
    try:
        _copy_task()
    finally:
        torch.set_num_threads(threads)


def _copy_task() -> None:
    torch.manual_seed(0)
    vocab, hidden, length = 6, 32, 5
    ctx = BuildContext(hidden_size=hidden, vocab_size=vocab, dropout=0.0)
    cls = REGISTRY.get("decoder", "lstm")
    decoder = cls(cls.Config(layers=1, attention="general"), ctx)
    embed = nn.Embedding(vocab + 1, hidden)  # the last row is the decoder's start token
    encoder = nn.LSTM(hidden, hidden, batch_first=True)  # gives memory positions an order
    head = nn.Linear(hidden, vocab)
    params = [*decoder.parameters(), *embed.parameters(), *encoder.parameters(),
              *head.parameters()]
    opt = torch.optim.Adam(params, lr=2e-2)
    losses = []
    for _ in range(80):
        src = torch.randint(0, vocab, (32, length))
        start = torch.full((32, 1), vocab)
        memory = encoder(embed(src))[0]
        out = decoder(embed(torch.cat([start, src[:, :-1]], dim=1)), None, memory, None)
        loss = nn.functional.cross_entropy(head(out).reshape(-1, vocab), src.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    chance = torch.log(torch.tensor(float(vocab))).item()  # 1.79
    assert losses[0] == pytest.approx(chance, abs=0.2)
    assert sum(losses[-10:]) / 10 < 0.3 * chance
