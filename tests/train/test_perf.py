"""MFU's FLOP count includes attention on the CPU too (torch counts only CUDA's SDPA kernels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tpcli.train.perf import FlopMeter, flop_counter


def test_cpu_attention_flops_are_counted() -> None:
    b, h, t, d = 2, 4, 64, 16
    q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))
    counter = flop_counter()
    with counter:
        y = F.scaled_dot_product_attention(q, k, v)
    forward = 4 * b * h * t * t * d  # q k^T and (softmax) v: two (T x D x T) matmuls per head
    assert counter.get_total_flops() == forward
    with counter:  # a new `with` starts a new count
        y.sum().backward()
    # backward (torch's sdpa_backward formula): q k^T recomputed, then dV, dP, dQ and dK: five
    # (T x D x T) matmuls per head where the forward has two
    assert counter.get_total_flops() == forward * 5 // 2


def test_flop_meter_counts_only_the_first_step() -> None:
    meter = FlopMeter(peak=1e9)
    a, w = torch.randn(8, 32), torch.randn(32, 16)
    with meter.count(True):
        a @ w
    with meter.count(False):
        a @ w
    assert meter.flops_per_step == 2 * 8 * 32 * 16
    assert meter.mfu(steps_per_s=10.0)["mfu"] == 2 * 8 * 32 * 16 * 10 / 1e9
