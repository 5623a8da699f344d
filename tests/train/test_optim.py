"""The learning-rate schedules and AdamW parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from tpcli.recipes.config import PretrainOptions
from tpcli.train.optim import lr_factor, make_optimizer, make_scheduler, param_groups


def test_linear_warmup_then_decay_to_floor() -> None:
    o = PretrainOptions(steps=110, warmup_steps=10, schedule="linear", min_lr_ratio=0.1)
    assert lr_factor(0, o) == pytest.approx(1 / 11)
    assert lr_factor(9, o) == pytest.approx(10 / 11)
    assert lr_factor(10, o) == pytest.approx(1.0)
    assert lr_factor(60, o) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, o) == pytest.approx(0.1)


def test_cosine_and_constant() -> None:
    o = PretrainOptions(steps=100, warmup_steps=0, schedule="cosine")
    assert lr_factor(0, o) == pytest.approx(1.0)
    assert lr_factor(50, o) == pytest.approx(0.5)
    assert lr_factor(25, o) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(100, o) == pytest.approx(0.0, abs=1e-12)
    c = PretrainOptions(steps=100, warmup_ratio=0.1, schedule="constant")
    assert lr_factor(5, c) == pytest.approx(6 / 11)
    assert lr_factor(80, c) == 1.0


def test_inverse_sqrt_as_fairseq() -> None:
    # fairseq inverse_sqrt, warmup 10: lr = peak * sqrt(10) / sqrt(num_updates) after warm-up
    o = PretrainOptions(steps=1000, warmup_steps=10, schedule="inverse_sqrt")
    assert lr_factor(4, o) == pytest.approx(5 / 11)
    assert lr_factor(10, o) == pytest.approx(1.0)
    assert lr_factor(40, o) == pytest.approx(0.5)
    assert lr_factor(1000, o) == pytest.approx(0.1)
    floor = PretrainOptions(steps=1000, warmup_steps=10, schedule="inverse_sqrt",
                            min_lr_ratio=0.2)
    assert lr_factor(1000, floor) == pytest.approx(0.2)


def test_scheduler_drives_optimizer_lr() -> None:
    model = torch.nn.Linear(4, 4)
    o = PretrainOptions(steps=20, warmup_steps=4, lr=1e-3)
    opt = make_optimizer(model, o)
    sched = make_scheduler(opt, o)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(1e-3 / 5)
    assert seen[4] == pytest.approx(1e-3)
    assert seen[-1] == pytest.approx(1e-3 * 1 / 16)


def test_no_weight_decay_on_biases_and_norms() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.01)
    assert [tuple(p.shape) for p in decay["params"]] == [(4, 4)]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
