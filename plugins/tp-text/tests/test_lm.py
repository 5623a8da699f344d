"""The `lm` target: labels, label smoothing, prefix LM and T5's hidden rescaling, by hand and
against torch / HF references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tpcli.errors import DataError
from tpcli.model.module import BuildContext, Features

from tp_text.lm import IGNORE, LmTarget, drop_prefix, next_token_labels

H, V = 4, 7


def build(**options: object) -> LmTarget:
    torch.manual_seed(0)
    t = LmTarget(LmTarget.Config(**options), BuildContext(hidden_size=H, vocab_size=V))
    with torch.no_grad():
        assert t.decoder is not None
        t.decoder.weight.copy_(torch.randn(V, H))
    return t


def _ce(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(z) for z in logits)) - logits[target]


def test_next_token_labels_respect_padding() -> None:
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    labels = next_token_labels(ids, ids != 0)
    assert labels.tolist() == [[2, 3, 4, IGNORE], [6, IGNORE, IGNORE, IGNORE]]


def test_label_smoothing_equals_torch_cross_entropy() -> None:
    t = build(label_smoothing=0.1)
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 5, 4, 0, 0]])
    mask = ids != 0
    hidden = torch.randn(2, 5, H)
    out = t(Features(hidden, mask), {"input_ids": ids, "attention_mask": mask})
    # predicted positions: row 0 t=0..3, row 1 t=0..1
    rows = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    logits = torch.stack([hidden[r, c] @ t.decoder.weight.T for r, c in rows])  # type: ignore[union-attr]
    targets = torch.tensor([ids[r, c + 1].item() for r, c in rows])
    expected = F.cross_entropy(logits, targets, label_smoothing=0.1)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # and by hand: (1 - eps) * nll + eps * mean over classes of -log p
    eps, total = 0.1, 0.0
    for z, y in zip(logits.tolist(), targets.tolist()):
        lse = math.log(sum(math.exp(v) for v in z))
        total += (1 - eps) * (lse - z[y]) + eps * sum(lse - v for v in z) / V
    assert out.loss.item() == pytest.approx(total / len(rows), rel=1e-6)
    assert out.metrics["count"].item() == 6


def test_prefix_lm_predicts_only_the_continuation() -> None:
    labels = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, IGNORE, IGNORE], [30, 31, 32, 33, 34]])
    # row 0: prefix of 3 -> positions 2.. predict; row 1: prefix 1 -> all; row 2: prefix 0 -> all
    got = drop_prefix(labels, torch.tensor([3, 1, 0]))
    assert got.tolist() == [[IGNORE, IGNORE, 12, 13, 14], [20, 21, 22, IGNORE, IGNORE],
                            [30, 31, 32, 33, 34]]

    t = build(prefix_lm=True)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 0, 0]])
    mask = ids != 0
    hidden = torch.randn(2, 6, H)
    batch = {"input_ids": ids, "attention_mask": mask, "prefix_lengths": torch.tensor([4, 2])}
    out = t(Features(hidden, mask), batch)
    w = t.decoder.weight.tolist()  # type: ignore[union-attr]

    def logits(vec: list[float]) -> list[float]:
        return [sum(a * b for a, b in zip(w[k], vec)) for k in range(V)]

    # row 0: prefix [1 2 3 4], continuation [5 6]: positions 3, 4 predict 5, 6
    # row 1: prefix [2 3], continuation [4 5]: positions 1, 2 predict 4, 5
    pairs = [(0, 3, 5), (0, 4, 6), (1, 1, 4), (1, 2, 5)]
    expected = sum(_ce(logits(hidden[r, c].tolist()), y) for r, c, y in pairs) / len(pairs)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.metrics["count"].item() == 4

    # the same through lm_labels (a processor's labels are masked the same way)
    lm_labels = next_token_labels(ids, mask)
    out2 = t(Features(hidden, mask), {"lm_labels": lm_labels, "prefix_lengths": torch.tensor([4, 2])})
    assert out2.loss.item() == pytest.approx(expected, rel=1e-5)

    with pytest.raises(DataError, match="prefix_lengths"):
        t(Features(hidden, mask), {"input_ids": ids, "attention_mask": mask})
    # off by default: every next token counts
    assert build()(Features(hidden, mask), batch).metrics["count"].item() == 8


def test_rescale_hidden_matches_hf_t5_tied_head() -> None:
    """HF T5ForConditionalGeneration with tied embeddings: lm_head(hidden * d_model ** -0.5)."""
    t = build(rescale_hidden=True)
    shared = torch.nn.Parameter(torch.randn(V, H))
    t.tie_weights(lambda: shared)
    hidden = torch.randn(2, 3, H)
    expected = (hidden * H ** -0.5) @ shared.T
    torch.testing.assert_close(t.predict(Features(hidden), {}), expected)
    # off: the plain projection
    plain = build()
    plain.tie_weights(lambda: shared)
    torch.testing.assert_close(plain.predict(Features(hidden), {}), hidden @ shared.T)


def test_rescale_hidden_equals_hf_t5_logits() -> None:
    """A tiny random HF T5: its logits are our tied, rescaled projection of its decoder output."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=V * 3, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2,
                   dropout_rate=0.0)
    hf = T5ForConditionalGeneration(cfg).eval()
    ids = torch.tensor([[3, 4, 5, 1]])
    dec = torch.tensor([[0, 7, 8]])
    with torch.no_grad():
        out = hf(input_ids=ids, decoder_input_ids=dec, output_hidden_states=True)
    t = LmTarget(LmTarget.Config(rescale_hidden=True),
                 BuildContext(hidden_size=8, vocab_size=V * 3))
    t.tie_weights(lambda: hf.shared.weight)
    with torch.no_grad():
        ours = t.predict(Features(out.decoder_hidden_states[-1]), {})
    torch.testing.assert_close(ours, out.logits, rtol=1e-5, atol=1e-6)
