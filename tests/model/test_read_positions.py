"""Targets that name the positions their loss reads (`read_positions`: MLM its masked tokens,
NSP the first) let training compute the encoder's last layer at those positions only: the loss,
every gradient and the random stream after are those of the whole computation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tpcli.model import wanted_queries
from tpcli.model.module import LastPositions
from tpcli.testing.convert import tp_model_for

IGNORE = -100


def section(**encoder: Any) -> dict[str, Any]:
    return {"hidden_size": 32, "dropout": 0.1, "embedding": ["word", "pos", "seg"],
            "encoder": {"name": "transformer", "layers": 2, "heads": 4, "ffn_size": 48,
                        **encoder},
            "target": {"mlm": {}, "sp": {}}}


def batch(padded: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 90, (4, 16), generator=g)
    mask = torch.ones(4, 16, dtype=torch.long)
    if padded:
        mask[1, 9:] = 0
        mask[3, 4:] = 0
        ids = ids * mask
    labels = torch.full((4, 16), IGNORE)
    for row, cols in enumerate([[1, 5, 7], [2, 8], [3], [1, 2]]):
        labels[row, cols] = ids[row, cols]
    return {"input_ids": ids, "attention_mask": mask, "segment_ids": torch.zeros_like(ids),
            "mlm_labels": labels, "sp_labels": torch.tensor([0, 1, 1, 0])}


def step(model: Any, b: dict[str, torch.Tensor], select: bool
         ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, list[int]]:
    model.reads_positions = select
    rows: list[int] = []
    hook = model.stack.encoder.layers[-1].ffn.register_forward_hook(
        lambda _m, args, _out: rows.append(args[0].numel() // 32))
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    out = model(b)
    out.loss.backward()
    hook.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads, torch.get_rng_state(), rows


@pytest.mark.parametrize("encoder,padded", [
    ({}, True),  # BERT: post-norm, padded rows
    ({}, False),
    ({"pre_norm": True, "layer_scale": 0.1}, True),
    ({"position": "relative"}, True),  # a (1, heads, T, T) bias: its rows follow the queries
    ({"share_layers": True}, False),  # ALBERT: the one layer, selected on its last use
])
def test_masked_positions_only_equal_the_whole_last_layer(encoder: dict, padded: bool) -> None:
    torch.manual_seed(0)
    model = tp_model_for(section(**encoder), 100).train()
    assert model.reads_positions and not model.first_only
    b = batch(padded)
    loss, grads, rng, rows = step(model, b, True)
    ref_loss, ref_grads, ref_rng, ref_rows = step(model, b, False)
    # the widest row has 3 masked + [CLS]: 4 of 16 positions per row
    # (a shared layer's hook sees each use: the last is the selected one)
    assert rows[-1] == 4 * 4 and ref_rows[-1] in (4 * 16, int(b["attention_mask"].sum()))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6,
                                   msg=name)
    assert torch.equal(rng, ref_rng)  # dropout drew every position's masks: the same stream


def test_a_target_that_reads_every_position_keeps_the_whole_layer() -> None:
    lm = {**section(), "target": {"mlm": {}, "cls": {"labels": 2, "pooling": "mean"}}}
    assert not tp_model_for(lm, 100).reads_positions
    causal = {**section(mask="causal"), "target": {"lm": {}}}
    assert not tp_model_for(causal, 100).reads_positions


def test_wanted_queries() -> None:
    mlm = torch.tensor([[False, True, False, False, True, False, False, False],
                        [False, False, False, False, False, False, True, False]])
    first = torch.ones(2, 1, dtype=torch.bool)
    q = wanted_queries([mlm, first], 2, 8, torch.device("cpu"))
    # wanted first, then the row's first unwanted ones up to the longest row's count (3)
    assert q.tolist() == [[0, 1, 4], [0, 6, 1]]
    # a longer sequence than the labels (ViLT: text, then patches): the rest is never wanted
    assert wanted_queries([mlm], 2, 20, torch.device("cpu")).tolist() == [[1, 4], [6, 0]]
    # the last positions (MIM: the patches after a class token), counted from the end
    patches = LastPositions(torch.tensor([[False, True, True], [True, False, False]]))
    assert wanted_queries([patches], 2, 8, torch.device("cpu")).tolist() == [[6, 7], [5, 0]]
    assert wanted_queries([patches, first], 2, 8, torch.device("cpu")).tolist() == [
        [0, 6, 7], [0, 5, 1]]
    busy = torch.ones(2, 8, dtype=torch.bool)
    busy[0, 0] = False
    assert wanted_queries([busy], 2, 8, torch.device("cpu")) is None  # 1/16 skipped: no gain
    assert wanted_queries([mlm], 3, 8, torch.device("cpu")) is None  # not this batch's rows
    assert wanted_queries([mlm], 2, 4, torch.device("cpu")) is None  # longer than the sequence
