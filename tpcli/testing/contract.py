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
