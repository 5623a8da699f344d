"""Freed host memory stays in the process while training on the CPU (tpcli.train.host_memory):
a buffer freed and made again each step costs no page faults, unless the user says otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# a step's pattern of buffers, made, used and freed: a 12.6 MB activation and its GELU, the
# (152, V) logits of BERT's masked rows, and two (V, 768) fp32 word-embedding gradients (94 MB
# each: the output matmul's and the lookup's)
PROGRAM = """
import json, resource
import torch
from tpcli.train.host_memory import keep_freed_memory
applied = keep_freed_memory()
torch.manual_seed(0)
emb = torch.randn(30522, 768) * 0.02
x = torch.randn(1024, 768)
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    h = torch.nn.functional.gelu(x @ emb[:3072].t())
    logits = x[:152] @ emb.t()
    grad = logits.t() @ x[:152]
    grad += torch.zeros_like(emb)
    del h, logits, grad
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "again": keep_freed_memory(), "faults": faults}))
"""
PAGES = 30522 * 768 * 4 // 4096  # pages of one gradient: 22,891


def run(program: str = PROGRAM, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD",
                                                          "TP_KEEP_FREED_MEMORY")}
    out = subprocess.run([sys.executable, "-c", program],
                         env={**clean, **env, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_freed_buffer_is_reused_without_page_faults() -> None:
    kept = run()
    assert kept["applied"] and kept["again"]
    # the first step maps its buffers, the second may map some again (glibc's aligned
    # allocation need not fit a freed chunk at once); from the third on they are reused. In
    # about one run of six (the heap's addresses differ from run to run) one gradient is mapped
    # once more, at the fifth step: steps 3-6 then fault one gradient's pages, against at least
    # 7.6 gradients' under the defaults
    assert kept["faults"][0] >= PAGES * 1.9
    assert sum(kept["faults"][2:]) < PAGES * 1.5, kept
    # glibc's own behaviour: a gradient this large is an mmap, faulted in page by page each time
    default = run(TP_KEEP_FREED_MEMORY="0")
    assert not default["applied"]
    assert min(default["faults"]) >= PAGES * 1.9, default


@pytest.mark.parametrize("env", [{"TP_KEEP_FREED_MEMORY": "0"},
                                 {"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_the_users_own_malloc_settings_win(env: dict[str, str]) -> None:
    program = ("import json; from tpcli.train.host_memory import keep_freed_memory; "
               "print(json.dumps({'applied': keep_freed_memory()}))")
    assert run(program, **env)["applied"] is False
    assert run(program)["applied"] is True
