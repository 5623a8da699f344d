"""The module contract, checked for EVERY registered embedding, encoder, decoder, pooling and
target (built-in or third-party): build tiny, forward, backward, no NaN, state-dict round trip,
Config round trip, Config refuses unknown keys, and (targets) weight tying without a duplicate.

A new module is covered by adding it to the registry; nothing here names one. Its Config is built
from its defaults, shrunk where it has the usual size fields (`SHRINK`), and it sees the union of
the inputs every kind may read (`sample_batch`).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from tpcli.model.module import BuildContext, Features, TargetOutput
from tpcli.plugins import get_plugins

KINDS = ("embedding", "encoder", "decoder", "pooling", "target")
H, V, B, T = 32, 100, 3, 8
SHRINK = {"layers": 2, "heads": 4, "ffn_size": 64}  # applied to the fields a Config has
SPECIALS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
LENGTHS = (T, 6, 3)  # real tokens per row; the rest is padding

REGISTRY = get_plugins().registry
ENTRIES = [
    pytest.param(e.kind, e.name, id=f"{e.kind}-{e.name}")
    for kind in KINDS
    for e in REGISTRY.entries(kind)
]


def make_ctx() -> BuildContext:
    return BuildContext(hidden_size=H, vocab_size=V, dropout=0.1, norm_eps=1e-12,
                        init_std=0.02, special_ids=dict(SPECIALS))


def tiny_config(cls: Any) -> Any:
    fields = cls.Config.model_fields
    return cls.Config(**{k: v for k, v in SHRINK.items() if k in fields})


def build(kind: str, name: str, seed: int = 0) -> nn.Module:
    cls = REGISTRY.get(kind, name)
    torch.manual_seed(seed)
    return cls(tiny_config(cls), make_ctx())


def sample_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every input and label a module of any kind may read, for a right-padded batch."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for row, n in enumerate(LENGTHS):
        mask[row, :n] = True
    input_ids = torch.randint(len(SPECIALS), V, (B, T), generator=g).masked_fill(~mask, 0)
    segment_ids = (torch.arange(T) >= T // 2).long().expand(B, T) * mask
    mlm_labels = torch.full((B, T), -100)
    mlm_labels[0, 1], mlm_labels[0, 5], mlm_labels[1, 2], mlm_labels[2, 1] = 7, 8, 9, 10
    tags = torch.full((B, T), -100)  # a tag per word's first piece (sequence labelling)
    tags[0, 1:4], tags[1, 1:3], tags[2, 2] = torch.tensor([0, 1, 1]), torch.tensor([1, 0]), 1
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "segment_ids": segment_ids,
        "mlm_labels": mlm_labels,
        "sp_labels": torch.tensor([0, 1, 1]),
        "labels": torch.tensor([1, 0, 1]),
        "tagger_labels": tags,
        "start_positions": torch.tensor([1, 0, 2]),  # extractive QA: 0 = not in this window
        "end_positions": torch.tensor([3, 0, 2]),
        "choice_starts": torch.tensor([[0, 2]] * B),  # multiple choice: each choice's first token
    }


def features(batch: dict[str, torch.Tensor], seed: int = 0) -> Features:
    """Hidden states for a target: one stack's, plus two streams for dual-stream targets."""
    g = torch.Generator().manual_seed(seed)
    mask = batch["attention_mask"]

    def one() -> Features:
        hidden = torch.randn(B, T, H, generator=g).requires_grad_()
        return Features(hidden, mask, torch.randn(B, H, generator=g).requires_grad_())

    f = one()
    return Features(f.hidden, f.mask, f.pooled, (one(), one()))


def run(kind: str, m: nn.Module, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Forward once: (a scalar to backpropagate, the outputs to compare)."""
    batch = sample_batch(seed)
    mask = batch["attention_mask"]
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, T, H, generator=g).requires_grad_()
    if kind == "target":
        # a task head whose labels are not one class per row (multi-hot, per token, spans)
        # shapes the sample batch's labels itself: `contract_labels(batch) -> batch`
        adapt = getattr(type(m), "contract_labels", None)
        if adapt is not None:
            batch = adapt(batch)
        feats = features(batch, seed)
        out = m(feats, batch)
        assert isinstance(out, TargetOutput) and out.loss.dim() == 0
        for key, value in out.metrics.items():
            assert value.dim() == 0, f"metric {key} is not a scalar"
        pred = m.predict(feats, batch)
        return out.loss, [out.loss, pred, *out.metrics.values()]
    if kind == "embedding":
        y = m(batch)
        assert y.shape == (B, T, H)
    elif kind == "encoder":
        y = m(x, mask)
        assert y.shape == (B, T, H)
    elif kind == "decoder":
        memory = torch.randn(B, T + 2, H, generator=g)
        memory_mask = torch.ones(B, T + 2, dtype=torch.bool)
        memory_mask[2, T - 1:] = False
        y = m(x, mask, memory, memory_mask)
        assert y.shape == (B, T, H)
    else:
        y = m(x, mask)
        assert y.shape == (B, H)
    weights = torch.randn(y.shape, generator=g)  # a loss whose gradient reaches every output
    return (y * weights).sum(), [y]


@pytest.mark.parametrize(("kind", "name"), ENTRIES)
def test_forward_backward_finite(kind: str, name: str) -> None:
    m = build(kind, name).train()
    loss, outputs = run(kind, m)
    for y in outputs:
        assert torch.isfinite(y).all(), f"{kind} {name} produced NaN/inf"
    if not loss.requires_grad:  # no parameters and integer inputs only (sinusoidalpos)
        assert not list(m.parameters()), f"{kind} {name}: parameters but no gradient path"
        return
    loss.backward()
    params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    for n, p in params:
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"{kind} {name}: non-finite grad in {n}"
    if params:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in params), (
            f"{kind} {name}: no parameter received a gradient"
        )


@pytest.mark.parametrize(("kind", "name"), ENTRIES)
def test_state_dict_round_trip(kind: str, name: str) -> None:
    a = build(kind, name, seed=0).eval()
    b = build(kind, name, seed=1).eval()
    with torch.no_grad():  # make sure b starts different, so equality below means the load worked
        for p in b.parameters():
            p.add_(torch.randn_like(p))
    with torch.no_grad():
        _, out_a = run(kind, a)
        if any(True for _ in b.parameters()):
            _, before = run(kind, b)
            assert any(not torch.equal(x, y) for x, y in zip(out_a, before))
        b.load_state_dict(a.state_dict(), strict=True)
        _, out_b = run(kind, b)
    for x, y in zip(out_a, out_b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize(("kind", "name"), ENTRIES)
def test_config_round_trip_and_strict(kind: str, name: str) -> None:
    cls = REGISTRY.get(kind, name)
    cfg = tiny_config(cls)
    assert cls.Config(**cfg.model_dump()) == cfg
    for field_name, info in cls.Config.model_fields.items():
        assert info.description, f"{kind} {name}: option {field_name!r} has no description"
    with pytest.raises(ValidationError, match="extra"):
        cls.Config(**cfg.model_dump(), not_an_option=1)


@pytest.mark.parametrize(
    ("kind", "name"),
    [p for p in ENTRIES if p.values[0] == "target"
     and hasattr(REGISTRY.get("target", p.values[1]), "tie_weights")],
)
def test_tied_target_holds_no_copy(kind: str, name: str) -> None:
    """A tied target reads the shared weight at forward time and does not register it."""
    m = build(kind, name)
    n_untied = len(m.state_dict())
    shared = nn.Parameter(torch.randn(V, H) * 0.02)
    m.tie_weights(lambda: shared)
    assert len(m.state_dict()) < n_untied  # its own output matrix is gone
    loss, _ = run(kind, m.train())
    loss.backward()
    assert shared.grad is not None and shared.grad.abs().sum() > 0
