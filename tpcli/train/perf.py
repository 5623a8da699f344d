"""Model FLOPs utilisation: FLOPs counted once by torch's FlopCounterMode, over a measured peak.

The peak is measured, not looked up: a few large matmuls in the training precision on the device
that trains (`TP_PEAK_FLOPS` overrides it, in FLOP/s).
"""

from __future__ import annotations

import functools
import os
import time
from contextlib import contextmanager
from typing import Iterator

import torch


@functools.lru_cache(maxsize=None)
def peak_flops(device: torch.device, precision: str) -> float:
    env = os.environ.get("TP_PEAK_FLOPS")
    if env:
        return float(env)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32
    n = 2048 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 50 if device.type == "cuda" else 8
    a @ b  # warm-up
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class FlopMeter:
    """Counts the FLOPs of the first optimizer step (forward + backward of its micro-batches)."""

    def __init__(self, peak: float) -> None:
        self.peak = peak
        self.flops_per_step = 0.0

    @contextmanager
    def count(self, active: bool) -> Iterator[None]:
        if not active:
            yield
            return
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            yield
        self.flops_per_step += counter.get_total_flops()

    def mfu(self, steps_per_s: float) -> dict[str, float]:
        if not self.flops_per_step:
            return {}
        achieved = self.flops_per_step * steps_per_s
        return {"tflops": achieved / 1e12, "mfu": achieved / self.peak}
