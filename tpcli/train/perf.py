"""Model FLOPs utilisation: FLOPs counted once by torch's FlopCounterMode, over a measured peak.

The peak is measured, not looked up, by `measure_peak` (the benchmarks call it too): square
matmuls of a few sizes in the training precision on the device that trains, each size timed
several times, and the best rate of any size and try is the peak (another process on the machine
only ever slows a try down, and small sizes may not fill the cores). It takes about a second and
is cached per process (`peak_flops`). `TP_PEAK_FLOPS` (FLOP/s) replaces the measurement.

Neither a measurement nor an override can be higher than what the hardware does, but both can
be lower (a busy machine, a size that does not fit the kernels). So when a training window runs
faster than the peak, the peak was wrong: `FlopMeter` raises it to the rate it observed, keeps it
for the rest of the run, and logs the peak it divides by (`peak_tflops`) with every `mfu`.
Clamping instead would keep a denominator known to be too low and pin every later window at 100%.
"""

from __future__ import annotations

import functools
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from tpcli.errors import TpError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# n of the n x n x n matmuls, smallest first: a size that alone would overrun the budget ends the
# ladder (fp16 on a CPU without fp16 units can be 100x slower than fp32)
SIZES = {"cpu": (256, 512, 1024, 2048), "cuda": (1024, 2048, 4096, 8192)}
BUDGET_S = 1.0  # wall time of one measurement: training start-up waits for it
TRIES = 20  # timed tries per size at most; the best one counts
TRY_S = 0.002  # a try repeats a small matmul until it lasts this long (timer and launch noise)


@dataclass(frozen=True)
class Peak:
    """One measurement: the best FLOP/s of every size tried, and the best of them all."""

    precision: str
    by_size: dict[int, float] = field(default_factory=dict)  # n -> best FLOP/s at n x n x n
    seconds: float = 0.0  # wall time the measurement took

    @property
    def flops(self) -> float:
        return max(self.by_size.values())


def measure_peak(device: torch.device, precision: str, budget_s: float = BUDGET_S) -> Peak:
    """Time square matmuls in `precision` on `device`, smallest size first, within `budget_s`.

    The inputs come from a private generator: the training's random stream (dropout) must not
    depend on whether, or how often, the peak was measured."""
    device = torch.device(device)
    dtype = DTYPES[precision]
    sizes = SIZES["cuda" if device.type == "cuda" else "cpu"]
    start = time.perf_counter()
    by_size: dict[int, float] = {}
    for i, n in enumerate(sizes):
        # the sizes not yet tried share what is left; a small size leaves most of its share
        share = (budget_s - (time.perf_counter() - start)) / (len(sizes) - i)
        rate = _best_rate(n, dtype, device, share, may_skip=bool(by_size))
        if rate is None:
            break
        by_size[n] = rate
    return Peak(precision, by_size, time.perf_counter() - start)


def _best_rate(n: int, dtype: torch.dtype, device: torch.device, budget_s: float,
               may_skip: bool) -> float | None:
    """The best FLOP/s of `TRIES` timed tries of an n x n x n matmul, within `budget_s`; None
    when even one try would not fit (unless `may_skip` is False: the smallest size always
    gives a number)."""
    g = torch.Generator(device=device).manual_seed(n)
    a = torch.randn(n, n, generator=g, device=device).to(dtype)
    b = torch.randn(n, n, generator=g, device=device).to(dtype)
    began = time.perf_counter()
    a @ b  # warm-up: kernel choice, caches, lazy library set-up; also what one matmul costs
    _sync(device)
    first = time.perf_counter() - began
    if may_skip and 2 * first > budget_s:
        return None
    reps = max(1, round(TRY_S / first))
    best = float("inf")
    for k in range(TRIES):
        if k and time.perf_counter() - began + reps * best > budget_s:
            break  # the first timed try always runs
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n**3 / best


@functools.lru_cache(maxsize=None)
def _cached_peak(device: torch.device, precision: str) -> Peak:
    return measure_peak(device, precision)


def peak_flops(device: torch.device, precision: str) -> float:
    """The peak FLOP/s that MFU divides by: `TP_PEAK_FLOPS`, or `measure_peak` once per process
    for each (device, precision)."""
    env = os.environ.get("TP_PEAK_FLOPS")
    if env:
        try:
            value = float(env)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise TpError(f"TP_PEAK_FLOPS={env!r} is not a positive number of FLOP/s",
                          hint="e.g. TP_PEAK_FLOPS=9.9e14, or unset it to measure the peak")
        return value
    return _cached_peak(torch.device(device), precision).flops


def slow_precision(device: torch.device, precision: str) -> str | None:
    """A warning when `precision` (bf16, fp16) is much slower than fp32 on this CPU, else None.

    A CPU without bf16 or fp16 matmul instructions (AVX512-BF16, AMX, AVX512-FP16) converts in
    software: on a 2-core AVX2 EPYC a bf16 matmul ran at 0.9 GFLOP/s against fp32's 117, so a
    bf16 run would take about 100 times longer and nothing would say why. Both peaks are the
    cached measurements (`peak_flops`); no check under TP_PEAK_FLOPS (nothing is measured) or
    on an accelerator."""
    device = torch.device(device)
    if precision == "fp32" or device.type != "cpu" or os.environ.get("TP_PEAK_FLOPS"):
        return None
    return precision_note(precision, _cached_peak(device, precision).flops,
                          _cached_peak(device, "fp32").flops)


def precision_note(precision: str, peak: float, fp32_peak: float) -> str | None:
    """The warning of `slow_precision` for measured peaks (FLOP/s): when `precision`'s is below
    half of fp32's."""
    if peak >= fp32_peak / 2:
        return None
    return (f"warning: {precision} matmuls on this CPU run at {peak / 1e9:,.1f} GFLOP/s, fp32 "
            f"at {fp32_peak / 1e9:,.1f} ({fp32_peak / peak:,.0f}x faster): the CPU has no "
            f"{precision} matrix instructions (AVX512-BF16, AMX or AVX512-FP16) and converts in "
            f"software. Set pretrain.precision=fp32 (finetune.precision=fp32 when fine-tuning) "
            f"for a faster run on this machine.")


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
        # the hardware just did `achieved`: a lower peak was measured too low (module docstring)
        self.peak = max(self.peak, achieved)
        return {"tflops": achieved / 1e12, "mfu": achieved / self.peak,
                "peak_tflops": self.peak / 1e12}
