"""`linear_cross_entropy` against `F.cross_entropy` over the full logits: loss, arg-max count and
the gradients of the rows, the matrix and the bias, across several row chunks and softmax
blocks (both made small here), in fp32 and under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tpcli.layers import output
from tpcli.layers.output import linear_cross_entropy


def _inputs(n: int, h: int, v: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g)
    w = torch.randn(v, h, generator=g) * 0.5
    b = torch.randn(v, generator=g) * 0.1
    t = torch.randint(0, v, (n,), generator=g)
    return x, w, b, t


def _run(fn, x, w, b, t, dtype):  # type: ignore[no-untyped-def]
    leaves = [p.clone().requires_grad_() for p in (x, w, b)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss, correct = fn(*leaves, t)
    loss.backward()
    return loss.detach(), correct, [p.grad for p in leaves]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equals_cross_entropy_over_chunks_and_blocks(monkeypatch: pytest.MonkeyPatch,
                                                     smoothing: float, dtype: torch.dtype) -> None:
    n, h, v = 45, 16, 97
    # chunks of 10 rows (4 full + 1 of 5), softmax blocks of 3 rows (a ragged last block)
    monkeypatch.setattr(output, "_CHUNK_ELEMENTS", 10 * v)
    monkeypatch.setattr(output, "_BLOCK_ELEMENTS", 3 * v)
    x, w, b, t = _inputs(n, h, v, seed=int(smoothing * 10) + (dtype == torch.bfloat16))

    def fused(x, w, b, t):  # type: ignore[no-untyped-def]
        return linear_cross_entropy(x, w, b, t, smoothing)

    def plain(x, w, b, t):  # type: ignore[no-untyped-def]
        logits = F.linear(x, w, b)  # the autocast dtype, as the fused path computes it
        loss = F.cross_entropy(logits.float(), t, reduction="sum", label_smoothing=smoothing)
        right = (logits.float().argmax(-1) == t).sum()
        return loss, right

    got, got_right, got_grads = _run(fused, x, w, b, t, dtype)
    want, want_right, want_grads = _run(plain, x, w, b, t, dtype)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    assert int(got_right) == int(want_right)
    # bf16: both round the (N, V) logit gradient to bf16 before the matmuls, in another order
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for name, a, e in zip(("x", "weight", "bias"), got_grads, want_grads):
        assert a.dtype == e.dtype == torch.float32
        scale = e.abs().max()
        assert (a - e).abs().max() <= tol * scale, name


def test_eval_mode_has_no_gradient_work_and_same_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "_BLOCK_ELEMENTS", 4 * 50)
    x, w, b, t = _inputs(13, 8, 50, seed=5)
    with torch.no_grad():
        loss, right = linear_cross_entropy(x, w, b, t)
    logits = F.linear(x, w, b)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, t, reduction="sum")),
                                        rel=1e-6)
    assert int(right) == int((logits.argmax(-1) == t).sum())
