"""The `bilm` target (ELMo): the loss by hand, and the `elmo` recipe end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tpcli.recipes.config import build_recipe
from tpcli.model.module import BuildContext, Features
from tpcli.plugins import get_plugins
from tpcli.recipes import read_recipe_file, resolve_recipe

from tp_text.bilm import BilmTarget

ROOT = Path(__file__).resolve().parents[3]


def _ce(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(z) for z in logits)) - logits[target]


def test_loss_equals_hand_computation() -> None:
    h, v = 4, 5
    target = BilmTarget(BilmTarget.Config(), BuildContext(hidden_size=h, vocab_size=v))
    torch.manual_seed(0)
    with torch.no_grad():
        target.output.weight.copy_(torch.randn(v, h // 2))
        target.output.bias.copy_(torch.randn(v))
    ids = torch.tensor([[1, 2, 3, 4], [4, 0, 0, 0], [2, 3, 0, 0]])  # row 1: one token
    mask = ids != 0
    hidden = torch.randn(3, 4, h)
    out = target(Features(hidden, mask), {"input_ids": ids, "attention_mask": mask})

    w, b = target.output.weight.tolist(), target.output.bias.tolist()

    def logits(vec: list[float]) -> list[float]:
        return [sum(wi * x for wi, x in zip(w[k], vec)) + b[k] for k in range(v)]

    fwd, bwd = [], []
    for r in range(3):
        n = int(mask[r].sum())
        for t in range(n - 1):  # forward: position t predicts token t+1
            fwd.append(_ce(logits(hidden[r, t, :2].tolist()), int(ids[r, t + 1])))
        for t in range(1, n):  # backward: position t predicts token t-1
            bwd.append(_ce(logits(hidden[r, t, 2:].tolist()), int(ids[r, t - 1])))
    assert len(fwd) == len(bwd) == 4  # 3 + 0 + 1 per direction
    expected = (sum(fwd) / len(fwd) + sum(bwd) / len(bwd)) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.metrics["count"].item() == 4
    # predict: (B, T, 2, V) = next-token and previous-token logits
    pred = target.predict(Features(hidden, mask), {})
    assert pred.shape == (3, 4, 2, v)
    torch.testing.assert_close(pred[0, 1, 1], torch.tensor(logits(hidden[0, 1, 2:].tolist())))


def test_elmo_recipe_validates() -> None:
    plugins = get_plugins()
    name, folder, file = resolve_recipe("elmo", plugins)
    r = build_recipe(read_recipe_file(file), plugins.registry, name=name, path=folder)
    stack = r.model.stacks[""]
    assert [m.name for m in stack.embedding] == ["word"]
    assert stack.encoder is not None and stack.encoder.name == "bilstm"
    assert stack.encoder.options.layers == 2
    assert [t.name for t in r.model.targets] == ["bilm"]
    assert r.model.options.hidden_size == 512 and r.model.options.embedding_norm == "none"
