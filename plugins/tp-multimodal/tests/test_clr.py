"""The clr target: CLIP's symmetric InfoNCE against transformers' own loss function, the clamped
learned scale, what predict gives, clear errors, and the global batch under two processes (gloo
on 127.0.0.1): their losses and averaged gradients equal one process holding the whole batch."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tp_multimodal.clr import ClrTarget
from tpcli.errors import DataError, TpError
from tpcli.model.module import BuildContext, Features

sys.path.insert(0, str(Path(__file__).parent))  # the shared helpers (pytest imports by path)
from clr_towers import WIDTHS, loss_and_grads  # noqa: E402

PROJECTION = 5


def target(**options: object) -> ClrTarget:
    torch.manual_seed(0)
    ctx = BuildContext(hidden_size=4, vocab_size=10, stream_sizes=dict(WIDTHS))
    return ClrTarget(ClrTarget.Config(projection_dim=PROJECTION, **options), ctx)


def features(text: torch.Tensor, image: torch.Tensor) -> Features:
    return Features(None, streams=(Features(None, None, text), Features(None, None, image)))


def random_features(n_text: int, n_image: int, seed: int = 1) -> Features:
    g = torch.Generator().manual_seed(seed)
    return features(torch.randn(n_text, WIDTHS["stream_0"], generator=g),
                    torch.randn(n_image, WIDTHS["stream_1"], generator=g))


def test_loss_and_metrics_are_clips() -> None:
    """CLIP's loss (the mean of the two directions' cross-entropies) and accuracies by hand;
    test_convert_clip compares the whole model's with transformers' return_loss."""
    m = target()
    f = random_features(6, 6)
    out = m(f, {})
    text = F.normalize(f.streams[0].pooled @ m.text_projection.weight.t(), dim=-1)
    image = F.normalize(f.streams[1].pooled @ m.visual_projection.weight.t(), dim=-1)
    logits_per_text = text @ image.t() * math.exp(math.log(1 / 0.07))
    own = torch.arange(6)
    want = (F.cross_entropy(logits_per_text, own) + F.cross_entropy(logits_per_text.t(), own)) / 2
    assert abs(float(out.loss.detach()) - float(want.detach())) < 1e-6
    assert float(out.metrics["t2i_acc"]) == float((logits_per_text.argmax(1) == own).float()
                                                   .mean())
    assert float(out.metrics["i2t_acc"]) == float((logits_per_text.argmax(0) == own).float()
                                                   .mean())
    assert float(out.metrics["count"]) == 6
    assert m.text_projection.bias is None and m.visual_projection.weight.shape == (PROJECTION, 9)


def test_scale_starts_at_clips_and_is_clamped_at_openais_4_6052() -> None:
    m = target()
    assert abs(m.logit_scale.item() - math.log(1 / 0.07)) < 1e-6
    with torch.no_grad():
        m.logit_scale.fill_(5.0)  # e^5 = 148 > 100
    f = random_features(4, 3)
    pred = m.predict(f, {})
    cosine = pred["text_embeds"] @ pred["image_embeds"].t()
    torch.testing.assert_close(pred["logits_per_text"], math.exp(4.6052) * cosine)
    m(random_features(4, 4), {}).loss.backward()
    assert m.logit_scale.grad.item() == 0.0  # clamped: no push past ln(100)
    free = target(max_logit_scale=None)
    with torch.no_grad():
        free.logit_scale.fill_(5.0)
    torch.testing.assert_close(free.predict(f, {})["logits_per_text"],
                               math.exp(5.0) * cosine, rtol=1e-5, atol=1e-5)


def test_predict_gives_unit_embeddings_and_both_logits() -> None:
    """Zero-shot shape: more class prompts than images."""
    pred = target().predict(random_features(5, 3), {})
    assert set(pred) == {"text_embeds", "image_embeds", "logits_per_text", "logits_per_image"}
    assert pred["text_embeds"].shape == (5, PROJECTION)
    assert pred["image_embeds"].shape == (3, PROJECTION)
    torch.testing.assert_close(pred["text_embeds"].norm(dim=-1), torch.ones(5))
    assert pred["logits_per_text"].shape == (5, 3)
    assert torch.equal(pred["logits_per_image"], pred["logits_per_text"].t())


def test_logits_stay_float32_under_autocast() -> None:
    m = target()
    f = random_features(4, 4)
    want = m.predict(f, {})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = m.predict(f, {})
        loss = m(f, {}).loss
    assert got["logits_per_text"].dtype == torch.float32 and loss.dtype == torch.float32
    # the projections run in bf16 under autocast; the similarities do not round them further
    diff = (got["logits_per_text"] - want["logits_per_text"]).abs().max()
    assert diff.item() < 0.2


def test_bad_inputs_are_named() -> None:
    m = target()
    with pytest.raises(DataError, match="4 texts and 3 images"):
        m(random_features(4, 3), {})
    with pytest.raises(TpError, match=r"stream_1 has no pooling.*\n.*stream_1.pooling"):
        m(features(torch.randn(2, 6), None), {})  # type: ignore[arg-type]
    with pytest.raises(TpError, match="stream_0 gives 4-wide vectors, its projection takes 6"):
        m(features(torch.randn(2, 4), torch.randn(2, 9)), {})
    with pytest.raises(TpError, match="dual-stream"):
        m(Features(torch.randn(2, 3, 4), None, torch.randn(2, 4)), {})


# ------------------------------------------------------------------------ two processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_contrast_the_global_batch(tmp_path: Path) -> None:
    """Data-parallel training averages the processes' losses and gradients: with 4 + 4 rows
    and with 3 + 5, that is exactly one process with all 8."""
    script, port = str(Path(__file__).parent / "clr_towers.py"), str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, script, str(rank), port, str(tmp_path)],
                              env=env, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    loss, grads = loss_and_grads(slice(0, 8))
    weights = (0.5, 0.5)
    for name in ("even", "uneven"):
        got = sum(w * r[name][0] for w, r in zip(weights, ranks))
        assert abs(got - loss) <= 1e-6 * abs(loss), (name, got, loss)  # float32 rounding
        for key, want in grads.items():
            mixed = sum(w * r[name][1][key] for w, r in zip(weights, ranks))
            torch.testing.assert_close(mixed, want, rtol=1e-5, atol=1e-6, msg=f"{name} {key}")
    alone = loss_and_grads(slice(0, 4))[0]  # without the other process's negatives
    assert abs(ranks[0]["even"][0] - alone) > 1e-3
