"""The module contract, for any registered embedding, encoder, decoder, pooling or target:
build tiny, forward, backward, no NaN, state-dict round trip, Config round trip and strictness.

tp's own suite runs it over everything registered (tests/model/test_contract.py); a third party
runs the same functions on its modules. Nothing here names a modality: an embedding is fed a
batch built from the keys it declares (`inputs`, see `tpcli.data.batch.BatchKey`), so an image
or audio embedding is exercised exactly like a text one; an embedding whose forward takes
`sequence` also gets the (B, T, E) sum of the embeddings that would precede it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tpcli.data.batch import example_inputs
from tpcli.model.module import BuildContext, Features, TargetOutput

KINDS = ("embedding", "encoder", "decoder", "pooling", "target")
H, V, B, T = 32, 100, 3, 8
SHRINK = {"layers": 2, "heads": 4, "ffn_size": 64}  # applied to the fields a Config has
SPECIALS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
LENGTHS = (T, 6, 3)  # real positions per row of a varying-length key; the rest is padding


def make_ctx() -> BuildContext:
    return BuildContext(hidden_size=H, vocab_size=V, dropout=0.1, norm_eps=1e-12,
                        init_std=0.02, special_ids=dict(SPECIALS))


def tiny_config(cls: Any) -> Any:
    fields = cls.Config.model_fields
    return cls.Config(**{k: v for k, v in SHRINK.items() if k in fields})


def build(cls: Any, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls(tiny_config(cls), make_ctx())


def declared_inputs(m: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A right-padded batch of what `m` declares it reads (`m.inputs`), T = 8 for varying
    sizes, values in each key's declared range."""
    g = torch.Generator().manual_seed(seed)
    return example_inputs(getattr(m, "inputs", ()), B, {"T": T}, LENGTHS, g)


def mask_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The (B, T) padding mask the sample rows have (True = real)."""
    mask = torch.zeros(B, T, dtype=torch.bool)
    for row, n in enumerate(LENGTHS):
        mask[row, :n] = True
    return batch.get("attention_mask", mask)


def features(batch: dict[str, torch.Tensor], seed: int = 0) -> Features:
    """Hidden states for a target: one stack's, plus two streams for dual-stream targets."""
    g = torch.Generator().manual_seed(seed)
    mask = mask_of(batch)

    def one() -> Features:
        hidden = torch.randn(B, T, H, generator=g).requires_grad_()
        return Features(hidden, mask, torch.randn(B, H, generator=g).requires_grad_())

    f = one()
    return Features(f.hidden, f.mask, f.pooled, (one(), one()))


def run_embedding(m: nn.Module, seed: int = 0) -> torch.Tensor:
    """Forward an embedding on its declared inputs; (B, L, E) checked."""
    batch = declared_inputs(m, seed)
    g = torch.Generator().manual_seed(seed + 2)
    import inspect

    if "sequence" in inspect.signature(m.forward).parameters:
        sequence = torch.randn(B, T, H, generator=g)
        y = m(batch, sequence=sequence)
        assert y.shape == (B, T, H), f"{type(m).__name__}: {tuple(y.shape)} != {(B, T, H)}"
        return y
    y = m(batch)
    assert y.dim() == 3 and y.shape[0] == B and y.shape[2] == H, (
        f"{type(m).__name__}: output {tuple(y.shape)} is not (B={B}, L, E={H})")
    return y


def run_target(m: nn.Module, base: dict[str, torch.Tensor], seed: int = 0
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Forward a target on `base` (the labels any target may read) overlaid with the keys it
    declares, then its `contract_labels(batch)` adaptor when it has one."""
    batch = {**base, **declared_inputs(m, seed)}
    adapt = getattr(type(m), "contract_labels", None)
    if adapt is not None:  # labels that are not one value per row or token (spans, multi-hot)
        batch = adapt(batch)
    feats = features(batch, seed)
    out = m(feats, batch)
    assert isinstance(out, TargetOutput) and out.loss.dim() == 0
    for key, value in out.metrics.items():
        assert value.dim() == 0, f"metric {key} is not a scalar"
    pred = m.predict(feats, batch)  # a tensor, or a dict of named outputs (clr's embeddings)
    preds = list(pred.values()) if isinstance(pred, dict) else [pred]
    return out.loss, [out.loss, *preds, *out.metrics.values()]


def run(kind: str, m: nn.Module, base: dict[str, torch.Tensor] | None = None, seed: int = 0
        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Forward once: (a scalar to backpropagate, the outputs to compare)."""
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, T, H, generator=g).requires_grad_()
    mask = mask_of({})
    if kind == "target":
        return run_target(m, base or {}, seed)
    if kind == "embedding":
        y = run_embedding(m, seed)
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


# ----------------------------------------------------------------------------- the checks
# tp's suite runs them over every registered module (tests/model/test_contract.py); a third
# party's suite runs them over its own with one line in its conftest
# (`from tpcli.testing.contract_plugin import pytest_collect_file`).


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


def check_forward_backward(kind: str, cls: Any) -> None:
    """Built tiny, forward on what it declares, backward: finite outputs and gradients, and
    some parameter receives a gradient."""
    m = build(cls).train()
    loss, outputs = run(kind, m, text_labels())
    name = cls.__name__
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
            f"{kind} {name}: no parameter received a gradient")


def check_declares_inputs(kind: str, cls: Any) -> None:
    """An embedding declares what it reads (`inputs`: BatchKeys), or is sized by the
    embeddings before it (`sequence`): collation and the recipe check rely on it."""
    import inspect

    from tpcli.data.batch import BatchKey

    if kind != "embedding":
        return
    m = build(cls)
    keys = getattr(m, "inputs", None)
    assert isinstance(keys, tuple) and all(isinstance(k, BatchKey) for k in keys), (
        f"embedding {cls.__name__} declares no `inputs` tuple of BatchKey")
    takes_sequence = "sequence" in inspect.signature(m.forward).parameters
    assert takes_sequence or any(not k.optional for k in keys), (
        f"embedding {cls.__name__} reads no required key and takes no `sequence`")


def check_state_dict_round_trip(kind: str, cls: Any) -> None:
    """Another instance loaded strictly with this one's state dict computes the same outputs,
    bit for bit (and differed before the load)."""
    a = build(cls, seed=0).eval()
    b = build(cls, seed=1).eval()
    with torch.no_grad():  # b starts different, so equality below means the load worked
        for p in b.parameters():
            p.add_(torch.randn_like(p))
        _, out_a = run(kind, a, text_labels())
        if any(True for _ in b.parameters()):
            _, before = run(kind, b, text_labels())
            assert any(not torch.equal(x, y) for x, y in zip(out_a, before)), (
                f"{kind} {cls.__name__}: outputs ignore the parameters")
        b.load_state_dict(a.state_dict(), strict=True)
        _, out_b = run(kind, b, text_labels())
    for x, y in zip(out_a, out_b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def check_config(kind: str, cls: Any) -> None:
    """The Config round-trips through its dump, every option has a description, and an
    unknown option is refused."""
    from pydantic import ValidationError

    cfg = tiny_config(cls)
    assert cls.Config(**cfg.model_dump()) == cfg, f"{kind} {cls.__name__}: Config round trip"
    for field_name, info in cls.Config.model_fields.items():
        assert info.description, f"{kind} {cls.__name__}: option {field_name!r} has no description"
    try:
        cls.Config(**cfg.model_dump(), not_an_option=1)
    except ValidationError as e:
        assert "extra" in str(e).lower()
    else:
        raise AssertionError(f"{kind} {cls.__name__}: its Config accepts an unknown option "
                             "(derive it from tpcli.model.module.ModuleConfig: extra='forbid')")


def check_tied_target(kind: str, cls: Any) -> None:
    """A target that ties its output matrix reads the shared weight at forward time and
    registers no copy of it."""
    if kind != "target" or not hasattr(cls, "tie_weights"):
        return
    m = build(cls)
    n_untied = len(m.state_dict())
    shared = nn.Parameter(torch.randn(V, H) * 0.02)
    m.tie_weights(lambda: shared)
    assert len(m.state_dict()) < n_untied, f"target {cls.__name__} keeps its own output matrix"
    loss, _ = run(kind, m.train(), text_labels())
    loss.backward()
    assert shared.grad is not None and shared.grad.abs().sum() > 0


CHECKS = {"forward_backward": check_forward_backward, "declares_inputs": check_declares_inputs,
          "state_dict_round_trip": check_state_dict_round_trip, "config": check_config,
          "tied_target": check_tied_target}


def applies(check: str, kind: str, cls: Any) -> bool:
    """Whether `check` has anything to check on a module of `kind`."""
    if check == "declares_inputs":
        return kind == "embedding"
    if check == "tied_target":
        return kind == "target" and hasattr(cls, "tie_weights")
    return True
