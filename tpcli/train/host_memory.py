"""Keep freed host memory in the process while training on the CPU.

glibc's malloc serves a large request (above its mmap threshold, at most 32 MiB) with a fresh
mmap and gives it back to the kernel on free, and it returns the free top of its heap once more
than twice that threshold is free. A training step frees and re-allocates the same buffers every
step: the activations, each gradient (the optimizer zeroes them by freeing), and a (V, H)
word-embedding gradient of 94 MB for BERT's vocabulary. So every step the kernel maps them
again and zero-fills each 4 KiB page on first touch. On the 2-core EPYC of this project a
BERT-base step (8 x 128) took 54,000-134,000 such page faults and 0.16-0.84 s of system time;
a (30522 x 768) zeros costs 37 ms fresh against 4 ms reused, and the MLM output's weight
gradient matmul 75 against 43 ms.

`keep_freed_memory` raises glibc's mmap and trim thresholds, so large buffers come from the
heap and freed memory stays there for the next step: no faults after the first step, and the
process keeps its peak resident size (what a GPU caching allocator does with device memory,
and what Intel's PyTorch launcher asks of jemalloc on CPUs). It only applies under glibc, and
not when the user configures malloc already (MALLOC_*_ variables, GLIBC_TUNABLES, or another
allocator preloaded) or sets TP_KEEP_FREED_MEMORY=0.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
# free memory at the top of the heap kept before glibc trims it (mallopt takes an int)
KEEP_BYTES = 2**31 - 1
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_",
                 "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")

_applied: bool | None = None  # the outcome of the first call (the setting is process-wide)


def reason_not_applied() -> str | None:
    """Why the setting is not applied here, or None when it is."""
    if os.environ.get("TP_KEEP_FREED_MEMORY", "1") == "0":
        return "TP_KEEP_FREED_MEMORY=0"
    if not sys.platform.startswith("linux"):
        return "not Linux"
    taken = [k for k in USER_SETTINGS if k in os.environ]
    if taken:
        return f"malloc configured by the user ({', '.join(taken)})"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "another allocator preloaded"
    return None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module); True when it is now set. Called
    by the training loop before the first step; later calls return the first one's outcome."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if reason_not_applied() is not None:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl has no mallopt thresholds
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    trimmed = mallopt(M_TRIM_THRESHOLD, KEEP_BYTES) == 1
    # the heap for every size: a threshold above glibc's limit is refused, no mmap at all is not
    mapped = mallopt(M_MMAP_THRESHOLD, KEEP_BYTES) == 1 or mallopt(M_MMAP_MAX, 0) == 1
    _applied = trimmed and mapped
    return _applied
