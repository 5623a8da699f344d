"""Model FLOPs utilisation: FLOPs counted once by torch's FlopCounterMode, over a measured peak.

The peak is measured, not looked up: a few large matmuls in the training precision on the device
that trains (`TP_PEAK_FLOPS` overrides it, in FLOP/s).
"""

from __future__ import annotations

import functools
import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

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


def flop_counter() -> Any:
    """torch's FlopCounterMode, also counting the CPU flash-attention kernels (torch counts only
    the CUDA ones) with torch's own SDPA formulas."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    extra: dict[Any, Any] = {}
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None:
        extra[fwd] = lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v)
    if bwd is not None:
        extra[bwd] = lambda go, q, k, v, *a, out_shape=None, **kw: (
            fc.sdpa_backward_flop_count(go, q, k, v))
    return fc.FlopCounterMode(display=False, custom_mapping=extra)


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
        counter = flop_counter()
        with counter:
            yield
        self.flops_per_step += counter.get_total_flops()

    def mfu(self, steps_per_s: float) -> dict[str, float]:
        if not self.flops_per_step:
            return {}
        achieved = self.flops_per_step * steps_per_s
        return {"tflops": achieved / 1e12, "mfu": achieved / self.peak}
