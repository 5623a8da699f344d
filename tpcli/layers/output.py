"""The vocabulary projection shared by output targets (mlm, lm): own matrix until tied, and the
loss over it computed in row chunks without materialising the (N, V) logits.

The cross-entropy of a vocabulary projection is the most memory-bound part of a language-model
step: the (N, V) logits are written, upcast to fp32, log-softmaxed, arg-maxed for the accuracy,
and the same again in backward, each a pass over N * V elements (2044 x 50257 for GPT-2 small at
batch 4 x 512). `linear_cross_entropy` instead takes the rows a chunk at a time, computes the
logits, their fp32 log-sum-exp, the loss, the arg-max and, when training, the gradient of the
logits (softmax - one-hot) at once, and folds that gradient straight into the gradients of the
input rows, the output matrix and the bias. Backward then only scales them by the incoming
gradient. The matmuls are the ones the plain path does (no recomputation), in the same precision:
under autocast the logits are computed in the autocast dtype and the softmax in fp32, as
`F.cross_entropy` under autocast does.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from tpcli.model.module import TargetOutput

# elements of one chunk of logits: the whole (N, V) of a usual step in one go (one large matmul
# is the fastest), chunks only bound the memory of very large batches
_CHUNK_ELEMENTS = 1 << 27
# elements of one block of the softmax passes (2 MiB in fp32): each pass over a block reads what
# the previous one wrote from the core's cache instead of memory (~3.5x faster on CPU than
# passes over the whole chunk)
_BLOCK_ELEMENTS = 1 << 19


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.is_floating_point():
        return torch.get_autocast_dtype(device)
    return x.dtype


def _softmax_block(z: torch.Tensor, g: torch.Tensor, t: torch.Tensor, eps: float,
                   grad_b: torch.Tensor | None, want_grad: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One block of rows of the logits z (b, V), small enough that its fp32 copy stays in cache
    through the passes below: (summed loss, number right, d loss / d z at the targets (b, 1) or
    None); writes softmax - eps / V into g (b, V) (g may be z itself when z is fp32) and adds
    the column sums of softmax - eps / V to grad_b."""
    v = z.shape[1]
    picked = z.gather(1, t).float()  # (b, 1) the target logits
    zf = z.float() if z.dtype != torch.float32 else z  # (b, V) fp32 (z itself when fp32)
    m = zf.amax(dim=-1, keepdim=True)  # (b, 1)
    # the target is the prediction when its logit is the largest (ties count)
    hit = (picked >= m).sum()
    mean = zf.mean(dim=-1, keepdim=True) if eps > 0.0 else None
    e = zf.sub_(m).exp_()  # (b, V) exp(z - m), overwriting the fp32 logits
    s = e.sum(dim=-1, keepdim=True)  # (b, 1)
    lse = m + s.log()
    nll = lse - picked
    if mean is not None:  # torch's smoothing: (1 - eps) nll + eps mean_j(-log p_j)
        nll = (1.0 - eps) * nll + eps * (lse - mean)
    if not want_grad:
        return nll.sum(), hit, None
    inv = s.reciprocal()  # (b, 1)
    # d loss / d z at the targets, from the fp32 softmax: p_t - (1 - eps) - eps / V
    at_t = e.gather(1, t) * inv - (1.0 - eps) - eps / v
    if grad_b is not None:  # sum over the rows of (softmax - eps / V)
        grad_b += torch.mv(e.t(), inv.squeeze(1)) - eps / v * z.shape[0]
    if g.data_ptr() == e.data_ptr():  # fp32: the softmax in place
        e.mul_(inv)
        if eps > 0.0:
            e.sub_(eps / v)
    elif eps > 0.0:
        torch.addcmul(torch.full((1, 1), -eps / v, device=z.device), e, inv, out=g)
    else:
        torch.mul(e, inv, out=g)  # fp32 -> the compute dtype in the same pass
    return nll.sum(), hit, at_t


class _LinearCrossEntropy(torch.autograd.Function):
    """(loss summed over the rows (fp32), number of rows whose target logit is the row's largest).

    Per chunk of rows, with z = x W^T + b (n, V) in the compute dtype (one matmul), then per
    block of rows (`_softmax_block`), with m the row maximum: e = exp(z - m) in fp32 (in place
    over the fp32 copy of z), s = sum e, lse = m + log s, loss = lse - z_t, and the gradient of
    the summed loss w.r.t. z is e / s - one-hot(t) (label smoothing: - (1 - eps) one-hot -
    eps / V), written once in the compute dtype.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, label_smoothing: float, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        n, v = x.shape[0], weight.shape[0]
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        xc, wc = x.to(dtype), weight.to(dtype)  # (N, H), (V, H)
        bc = bias.to(dtype) if bias is not None else None
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        correct = torch.zeros((), dtype=torch.long, device=x.device)
        grad_x = torch.empty_like(xc) if want_x else None  # (N, H)
        grad_w: torch.Tensor | None = None  # (V, H) fp32
        grad_b = torch.zeros(v, dtype=torch.float32, device=x.device) if want_b else None
        step = max(1, _CHUNK_ELEMENTS // max(v, 1))
        eps = label_smoothing
        want_grad = want_x or want_w or want_b
        # rows of one softmax block: cache-sized on CPU; on an accelerator the whole chunk (its
        # kernels stream from memory anyway, and each block costs launches)
        block = max(1, _BLOCK_ELEMENTS // max(v, 1)) if x.device.type == "cpu" else step
        with torch.autocast(x.device.type, enabled=False):
            for r0 in range(0, n, step):
                r1 = min(n, r0 + step)
                rows, t = xc[r0:r1], targets[r0:r1, None]  # (n, H), (n, 1)
                z = F.linear(rows, wc, bc)  # (n, V) in the compute dtype
                # the softmax gradient: over z itself in fp32, else a fresh compute-dtype buffer
                g = z if z.dtype == torch.float32 or not want_grad else torch.empty_like(z)
                at_t = torch.empty((r1 - r0, 1), dtype=torch.float32, device=x.device)
                for b0 in range(0, r1 - r0, block):
                    b1 = min(r1 - r0, b0 + block)
                    nll, hit, at = _softmax_block(z[b0:b1], g[b0:b1], t[b0:b1], eps, grad_b,
                                                  want_grad)
                    loss += nll
                    correct += hit
                    if at is not None:
                        at_t[b0:b1] = at
                if not want_grad:
                    continue
                # index_put_, not scatter_: scatter_ on a CPU bf16 tensor passes over all of it
                g.index_put_((torch.arange(r1 - r0, device=g.device), t.squeeze(1)),
                             at_t.squeeze(1).to(g.dtype))
                if grad_b is not None:  # - (1 - eps) at each target
                    grad_b.index_add_(0, t.squeeze(1), torch.full_like(at_t.squeeze(1),
                                                                      -(1.0 - eps)))
                if grad_x is not None:
                    torch.mm(g, wc, out=grad_x[r0:r1])
                if want_w:
                    gw = torch.mm(g.t(), rows).float()  # (V, H)
                    grad_w = gw if grad_w is None else grad_w.add_(gw)
        if want_w and grad_w is None:  # no rows
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=x.device)
        ctx.save_for_backward(*(g if g is not None else torch.empty(0)
                                for g in (grad_x, grad_w, grad_b)))
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.mark_non_differentiable(correct)
        ctx.done = False
        return loss, correct

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_correct: torch.Tensor
                 ) -> tuple[torch.Tensor | None, ...]:
        if ctx.done:
            raise RuntimeError("linear_cross_entropy: its backward runs once (no retain_graph)")
        ctx.done = True
        grad_x, grad_w, grad_b = ctx.saved_tensors
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        # scaled in place: the gradients were computed for this one backward, and a fresh
        # (V, H) buffer per step costs as much as the multiply
        return (
            grad_x.mul_(grad_loss).to(x_dtype) if want_x else None,
            grad_w.mul_(grad_loss).to(w_dtype) if want_w else None,
            grad_b.mul_(grad_loss).to(b_dtype) if want_b else None,
            None, None, None,
        )


def keep_eager_under_compile() -> None:
    """Make `torch.compile` leave `linear_cross_entropy` eager (a loop of large kernels, with
    in-place reuse, that tracing would only slow down). Called by the training loop before it
    compiles, not at import: `torch.compiler.disable` imports torch._dynamo, ~2 s that every
    command building a model would otherwise pay."""
    global linear_cross_entropy
    if not getattr(linear_cross_entropy, "_tp_eager", False):
        linear_cross_entropy = torch.compiler.disable(linear_cross_entropy)
        linear_cross_entropy._tp_eager = True  # type: ignore[attr-defined]


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, label_smoothing: float = 0.0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """cross_entropy(x @ weight.T + bias, targets, reduction="sum") and the number of rows whose
    arg-max logit is the target, without the (N, V) logits in memory.

    x (N, H), weight (V, H), bias (V) or None, targets (N,) (every row predicted: no ignore
    index) -> (loss sum, fp32 scalar), (correct count, long scalar; not differentiable). A row
    counts as correct when its target logit is the largest; a tie for the largest counts too.
    """
    return _LinearCrossEntropy.apply(x, weight, bias, targets, float(label_smoothing),
                                     _compute_dtype(x))


class TiedOutput:
    """Mixin for an nn.Module target: `decoder` (V, H) and an optional `bias` (V) as its own
    parameters (so state-dict keys stay `decoder.weight` / `bias`), until `tie_weights` makes it
    read the word embedding at forward time and drops its own matrix (no duplicated key)."""

    decoder: nn.Linear | None
    bias: nn.Parameter | None
    _get_weight: Callable[[], torch.Tensor] | None

    def init_output(self, hidden: int, vocab: int, bias: bool) -> None:
        self.decoder = nn.Linear(hidden, vocab, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab)) if bias else None
        self._get_weight = None

    def tie_weights(self, get_weight: Callable[[], torch.Tensor]) -> None:
        """Use the word embedding (V, H), read at forward time, as the output matrix."""
        self.decoder = None
        self._get_weight = get_weight

    def output_weight(self) -> torch.Tensor:
        if self._get_weight is not None:
            return self._get_weight()
        assert self.decoder is not None  # invariant: tie_weights sets one when it drops the other
        return self.decoder.weight

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., V)."""
        return F.linear(x, self.output_weight(), self.bias)

    def loss_and_correct(self, x: torch.Tensor, targets: torch.Tensor,
                         label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, H) the rows to predict, targets (N,) -> (summed cross-entropy of their logits,
        number of rows predicted right), through `linear_cross_entropy`."""
        return linear_cross_entropy(x, self.output_weight(), self.bias, targets, label_smoothing)

    def prediction_output(self, x: torch.Tensor, targets: torch.Tensor,
                          label_smoothing: float = 0.0) -> TargetOutput:
        """x (N, H) the rows to predict, targets (N,) -> mean loss, `acc` and `count`. A batch
        without predicted rows gives loss 0 (still connected to the graph), not NaN."""
        total, correct = self.loss_and_correct(x, targets, label_smoothing)
        n = targets.numel()
        loss = total / max(n, 1)
        with torch.no_grad():
            count = torch.tensor(float(n), device=x.device)
            acc = correct.float() / count.clamp(min=1.0)
        return TargetOutput(loss, {"acc": acc, "count": count})
