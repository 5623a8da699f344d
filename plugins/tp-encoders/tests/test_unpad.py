"""The feed-forward block on the real rows of a padded batch (tpcli.layers.unpad): the same
outputs at real positions, the same gradients and the same random stream as computing every row,
while the block really sees only the real rows."""

from __future__ import annotations

import pytest
import torch

from tp_encoders.transformer import TransformerEncoder
from tp_encoders.transformer_decoder import TransformerDecoder
from tpcli.layers import unpad
from tpcli.layers.unpad import real_rows
from tpcli.model.module import BuildContext
from tpcli.testing.convert import perturbed

H = 32


def right_padded(lengths: list[int], t: int) -> torch.Tensor:
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # (B, T) bool


def test_real_rows_only_for_a_padded_cpu_mask() -> None:
    mask = right_padded([5, 2, 4], 5)
    rows = real_rows(mask)
    assert rows is not None and rows.total == 15
    assert rows.index.tolist() == [0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 13]
    assert real_rows(mask.long()).index.tolist() == rows.index.tolist()  # 0/1 masks too
    assert real_rows(None) is None
    assert real_rows(torch.ones(3, 5, dtype=torch.bool)) is None  # nothing to skip
    assert real_rows(mask[:, None, None, :]) is None  # a ready SDPA mask is not a token mask
    nearly_full = torch.ones(2, 100, dtype=torch.bool)
    nearly_full[1, -1] = False  # 1 of 200 padded: below MIN_PADDING, not worth a gather
    assert real_rows(nearly_full) is None


def run(model: torch.nn.Module, call, real: torch.Tensor, skip: bool,
        monkeypatch: pytest.MonkeyPatch
        ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, list[int]]:
    """Output, parameter gradients of a loss over the `real` positions (as every loss is), the
    RNG state after, and the row counts the feed-forward blocks saw, with unpadding on (`skip`)
    or off (MIN_PADDING above 1: never worth it)."""
    monkeypatch.setattr(unpad, "MIN_PADDING", 1 / 64 if skip else 2.0)
    seen: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, args, _out: seen.append(args[0].numel() // H))
             for name, m in model.named_modules() if name.endswith(".ffn")]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    out = call()
    (out * torch.linspace(-1, 1, out.numel()).view_as(out))[real].sum().backward()
    for h in hooks:
        h.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads, torch.get_rng_state(), seen


def assert_same(model: torch.nn.Module, call, real: torch.Tensor,
                monkeypatch: pytest.MonkeyPatch) -> None:
    out, grads, rng, seen = run(model, call, real, True, monkeypatch)
    full_out, full_grads, full_rng, full_seen = run(model, call, real, False, monkeypatch)
    assert seen == [int(real.sum())] * len(seen) and full_seen == [real.numel()] * len(seen)
    torch.testing.assert_close(out[real], full_out[real], rtol=0, atol=2e-6)
    assert grads.keys() == full_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, full_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    assert torch.equal(rng, full_rng)  # dropout drew the masks of every row: the same stream


@pytest.mark.parametrize("pre_norm", [False, True], ids=["post_norm", "pre_norm"])
@pytest.mark.parametrize("mask_kind", ["fully_visible", "causal"])
def test_encoder_real_rows_match_every_row(pre_norm: bool, mask_kind: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Training mode with dropout 0.1 and layer scale: real positions and every gradient are
    the same as computing all rows, the feed-forward blocks see the real rows only."""
    torch.manual_seed(0)
    cfg = TransformerEncoder.Config(layers=2, heads=4, ffn_size=64, pre_norm=pre_norm,
                                    mask=mask_kind, layer_scale=0.5 if pre_norm else None)
    enc = perturbed(TransformerEncoder(cfg, BuildContext(hidden_size=H, vocab_size=50,
                                                         dropout=0.1))).train()
    x = torch.randn(3, 11, H)
    mask = right_padded([11, 6, 3], 11)
    assert_same(enc, lambda: enc(x, mask), mask, monkeypatch)


def test_decoder_real_rows_match_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    cfg = TransformerDecoder.Config(layers=2, heads=4, ffn_size=64)
    dec = perturbed(TransformerDecoder(cfg, BuildContext(hidden_size=H, vocab_size=50,
                                                         dropout=0.1))).train()
    y, memory = torch.randn(3, 9, H), torch.randn(3, 7, H)
    tmask, mmask = right_padded([9, 5, 2], 9), right_padded([7, 3, 6], 7)
    assert_same(dec, lambda: dec(y, tmask, memory, mmask), tmask, monkeypatch)


def test_queries_layer_computes_its_selected_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """With `queries` the last layer outputs (B, n, H) and runs its block on those n rows; the
    earlier layers run on the real rows."""
    torch.manual_seed(0)
    enc = TransformerEncoder(TransformerEncoder.Config(layers=2, heads=4, ffn_size=64),
                             BuildContext(hidden_size=H, vocab_size=50, dropout=0.0)).eval()
    x = torch.randn(2, 8, H)
    mask = right_padded([8, 4], 8)
    queries = torch.tensor([[0, 5], [1, 2]])
    seen: list[int] = []
    hooks = [enc.layers[i].ffn.register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].numel() // H)) for i in range(2)]
    with torch.no_grad():
        got = enc(x, mask, queries=queries)
        full = enc(x, mask)
    for h in hooks:
        h.remove()
    assert seen[:2] == [12, 4]
    torch.testing.assert_close(got, full.gather(1, queries[..., None].expand(-1, -1, H)),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("pre_norm", [False, True], ids=["post_norm", "pre_norm"])
def test_queries_with_dropout_follow_every_row(pre_norm: bool) -> None:
    """Training with dropout 0.1 (attention and branches): the selected positions' outputs and
    every gradient are those of computing every row, and the random stream after is the same
    (the last layer draws the masks of all rows and keeps the selected ones')."""
    torch.manual_seed(0)
    cfg = TransformerEncoder.Config(layers=2, heads=4, ffn_size=64, pre_norm=pre_norm,
                                    layer_scale=0.5 if pre_norm else None)
    enc = perturbed(TransformerEncoder(cfg, BuildContext(hidden_size=H, vocab_size=50,
                                                         dropout=0.1))).train()
    x = torch.randn(3, 10, H)
    mask = right_padded([10, 7, 4], 10)
    queries = torch.tensor([[0, 3, 9], [6, 1, 2], [0, 3, 8]])  # a padded position too
    real = mask.gather(1, queries)  # (B, n): a padded position's output is nobody's
    weights = torch.linspace(-1, 1, 3 * 3 * H).view(3, 3, H) * real[..., None]

    def run(select: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        enc.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        out = enc(x, mask, queries=queries) if select else enc(x, mask).gather(
            1, queries[..., None].expand(-1, -1, H))
        (out * weights).sum().backward()
        return (out.detach(), {n: p.grad.clone() for n, p in enc.named_parameters()
                               if p.grad is not None}, torch.get_rng_state())

    out, grads, rng = run(True)
    full_out, full_grads, full_rng = run(False)
    torch.testing.assert_close(out[real], full_out[real], rtol=0, atol=2e-6)
    assert grads.keys() == full_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, full_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    assert torch.equal(rng, full_rng)
