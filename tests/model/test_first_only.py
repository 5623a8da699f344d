"""A classifier over the first token lets the model skip the rest of the encoder's last layer:
the loss, the logits and every gradient are those of the whole computation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tpcli.testing.convert import tp_model_for

ENCODER = {"name": "transformer", "layers": 2, "heads": 4, "ffn_size": 48}


def section(encoder: dict[str, Any], pooling: str = "first", **extra: Any) -> dict[str, Any]:
    return {"hidden_size": 32, "dropout": 0.0, "embedding": ["word", "pos", "seg"],
            "encoder": {**ENCODER, **encoder},
            "target": {"cls": {"labels": 3, "pooling": pooling, "pooler": True}}, **extra}


def batch(padded: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 90, (4, 11), generator=g)
    mask = torch.ones(4, 11, dtype=torch.long)
    if padded:
        mask[1, 7:] = 0
        mask[3, 2:] = 0
        ids = ids * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.tensor([0, 2, 1, 2])}


def loss_and_grads(model: Any, b: dict[str, torch.Tensor], first_only: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.first_only = first_only
    model.zero_grad(set_to_none=True)
    out = model(b)
    out.loss.backward()
    logits = model.predict(b)["cls"]
    return out.loss.detach(), logits, {n: p.grad.clone() for n, p in model.named_parameters()
                                       if p.grad is not None}


@pytest.mark.parametrize("encoder,padded", [
    ({}, True),  # BERT: post-norm, padded rows
    ({"pre_norm": True}, False),  # ViT-like: pre-norm, final norm, no mask
    ({"pre_norm": True, "layer_scale": 0.1, "qkv_bias": "qv"}, True),
    ({"position": "relative"}, True),  # a (1, heads, T, T) bias: its rows follow the queries
    ({"mask": "causal"}, False),  # the causal fast path: selected after the last layer
    ({"mask": "causal"}, True),
])
def test_first_token_only_equals_the_whole_last_layer(encoder: dict, padded: bool) -> None:
    torch.manual_seed(0)
    model = tp_model_for(section(encoder), 100).train()
    assert model.first_only
    b = batch(padded)
    ref_loss, ref_logits, ref_grads = loss_and_grads(model, b, False)
    loss, logits, grads = loss_and_grads(model, b, True)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6,
                                   msg=name)
    # a head that reads every token keeps the whole layer
    assert not tp_model_for(section(encoder, pooling="mean"), 100).first_only


def test_the_last_layer_runs_on_one_row_per_sequence() -> None:
    model = tp_model_for(section({"pre_norm": True}), 100)
    rows = []
    ffn = model.stack.encoder.layers[-1].ffn
    ffn.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:2]))
    model(batch(True))
    model.stack.encoder.layers[0].ffn.register_forward_hook(
        lambda m, args, out: rows.append(args[0].shape[:2]))
    model(batch(False))
    assert rows == [(4, 1), (4, 11), (4, 1)]
    assert model.features(batch(True)).hidden.shape == (4, 11, 32)  # features stay whole
