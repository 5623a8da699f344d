"""The module contract, checked for EVERY registered embedding, encoder, decoder, pooling and
target (built-in or third-party): build tiny, forward, backward, no NaN, state-dict round trip,
Config round trip, Config refuses unknown keys, and (targets) weight tying without a duplicate.

A new module is covered by adding it to the registry; nothing here names one. Its Config is built
from its defaults, shrunk where it has the usual size fields, and an embedding is fed a batch built
from the keys it declares (`tpcli.testing.contract`); a target sees the labels of tp-text's targets
overlaid with the keys it declares.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from tpcli.plugins import get_plugins
from tpcli.testing import contract
from tpcli.testing.contract import B, H, KINDS, SPECIALS, T, V, mask_of, tiny_config

REGISTRY = get_plugins().registry
ENTRIES = [
    pytest.param(e.kind, e.name, id=f"{e.kind}-{e.name}")
    for kind in KINDS
    for e in REGISTRY.entries(kind)
]


def build(kind: str, name: str, seed: int = 0) -> nn.Module:
    return contract.build(REGISTRY.get(kind, name), seed)


def text_labels(seed: int = 0) -> dict[str, torch.Tensor]:
    """The labels tp-text's targets read, for targets that declare none (`inputs`)."""
    mask = mask_of({})
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(len(SPECIALS), V, (B, T), generator=g).masked_fill(~mask, 0)
    mlm_labels = torch.full((B, T), -100)
    mlm_labels[0, 1], mlm_labels[0, 5], mlm_labels[1, 2], mlm_labels[2, 1] = 7, 8, 9, 10
    tags = torch.full((B, T), -100)  # a tag per word's first piece (sequence labelling)
    tags[0, 1:4], tags[1, 1:3], tags[2, 2] = torch.tensor([0, 1, 1]), torch.tensor([1, 0]), 1
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "mlm_labels": mlm_labels,
        "sp_labels": torch.tensor([0, 1, 1]),
        "labels": torch.tensor([1, 0, 1]),
        "tagger_labels": tags,
        "start_positions": torch.tensor([1, 0, 2]),  # extractive QA: 0 = not in this window
        "end_positions": torch.tensor([3, 0, 2]),
        "choice_starts": torch.tensor([[0, 2]] * B),  # multiple choice: each choice's first token
    }


def run(kind: str, m: nn.Module, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return contract.run(kind, m, text_labels(seed), seed)


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


@pytest.mark.parametrize(("kind", "name"), [p for p in ENTRIES if p.values[0] == "embedding"])
def test_embedding_declares_inputs(kind: str, name: str) -> None:
    """What an embedding reads is declared (`inputs`: BatchKeys), or it is sized by the
    embeddings before it (`sequence`): the contract test and the recipe check rely on it."""
    import inspect

    from tpcli.data.batch import BatchKey

    m = build(kind, name)
    keys = getattr(m, "inputs", None)
    assert isinstance(keys, tuple) and all(isinstance(k, BatchKey) for k in keys), (
        f"embedding {name} declares no `inputs` tuple of BatchKey")
    takes_sequence = "sequence" in inspect.signature(m.forward).parameters
    assert takes_sequence or any(not k.optional for k in keys), (
        f"embedding {name} reads no required key and takes no `sequence`")


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
