"""The `cls` target and the padding-aware poolings it uses, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from tpcli.errors import DataError, TpError
from tpcli.layers.pooling import first_pool, last_pool, max_pool, mean_pool, pool
from tpcli.model.module import BuildContext, Features

from tp_text.cls import ClsTarget

# one feature per row: each token's value is easy to follow by hand
HIDDEN = torch.tensor([
    [[1.0, -1.0], [2.0, 5.0], [3.0, 0.0], [9.0, 9.0]],    # right-padded: 3 real tokens
    [[7.0, 7.0], [4.0, 1.0], [-2.0, 3.0], [6.0, -4.0]],   # left-padded: last 3 real
    [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]],     # no padding
    [[5.0, 5.0], [6.0, 6.0], [7.0, 7.0], [8.0, 8.0]],     # all padding
])
MASK = torch.tensor([
    [True, True, True, False],
    [False, True, True, True],
    [True, True, True, True],
    [False, False, False, False],
])


def test_first_last_pick_the_real_tokens_on_either_side() -> None:
    expected_first = torch.tensor([[1.0, -1.0], [4.0, 1.0], [1.0, 2.0], [0.0, 0.0]])
    expected_last = torch.tensor([[3.0, 0.0], [6.0, -4.0], [7.0, 8.0], [0.0, 0.0]])
    torch.testing.assert_close(first_pool(HIDDEN, MASK), expected_first, rtol=0, atol=0)
    torch.testing.assert_close(last_pool(HIDDEN, MASK), expected_last, rtol=0, atol=0)


def test_mean_max_ignore_padding_and_all_padding_gives_zeros() -> None:
    expected_mean = torch.tensor([[2.0, 4.0 / 3.0], [8.0 / 3.0, 0.0], [4.0, 5.0], [0.0, 0.0]])
    expected_max = torch.tensor([[3.0, 5.0], [6.0, 3.0], [7.0, 8.0], [0.0, 0.0]])
    torch.testing.assert_close(mean_pool(HIDDEN, MASK), expected_mean)
    torch.testing.assert_close(max_pool(HIDDEN, MASK), expected_max, rtol=0, atol=0)


def test_no_mask_is_plain_reduction() -> None:
    torch.testing.assert_close(pool("first", HIDDEN), HIDDEN[:, 0])
    torch.testing.assert_close(pool("last", HIDDEN), HIDDEN[:, -1])
    torch.testing.assert_close(pool("mean", HIDDEN), HIDDEN.mean(1))
    torch.testing.assert_close(pool("max", HIDDEN), HIDDEN.amax(1))
    with pytest.raises(ValueError, match="unknown pooling"):
        pool("median", HIDDEN)


@pytest.mark.parametrize("kind", ["first", "last", "mean", "max"])
def test_padding_values_do_not_matter_and_get_no_gradient(kind: str) -> None:
    h = HIDDEN.clone().requires_grad_()
    garbage = HIDDEN.masked_fill(~MASK.unsqueeze(-1), 1e4)
    torch.testing.assert_close(pool(kind, garbage, MASK), pool(kind, HIDDEN, MASK))
    pool(kind, h, MASK).sum().backward()
    assert h.grad is not None
    assert (h.grad[~MASK] == 0).all()
    assert torch.isfinite(h.grad).all()


def _target(pooling: str, pooler: bool = False, labels: int = 3) -> ClsTarget:
    ctx = BuildContext(hidden_size=2, vocab_size=10, dropout=0.0)
    t = ClsTarget(ClsTarget.Config(labels=labels, pooling=pooling, pooler=pooler), ctx)
    with torch.no_grad():
        t.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        t.classifier.bias.copy_(torch.tensor([0.0, 0.5, 0.0]))
        if t.pooler is not None:
            t.pooler.weight.copy_(torch.tensor([[0.5, 0.0], [0.0, -0.25]]))
            t.pooler.bias.copy_(torch.tensor([0.1, 0.0]))
    return t.eval()


def _ce(logits: list[float], label: int) -> float:
    return math.log(sum(math.exp(z) for z in logits)) - logits[label]


def test_cls_loss_metrics_predict_by_hand() -> None:
    # a sentence pair packed in one row: [CLS] a [SEP] b [SEP] with segment ids; the pooling
    # covers the whole pair (all five real tokens), padding excluded
    hidden = torch.tensor([[[1.0, 0.0], [2.0, 2.0], [0.0, 1.0], [3.0, -1.0], [-1.0, 3.0],
                            [50.0, 50.0]]])
    mask = torch.tensor([[True] * 5 + [False]])
    t = _target("mean")
    feats = Features(hidden, mask)
    out = t(feats, {"labels": torch.tensor([1]), "segment_ids": torch.tensor([[0, 0, 0, 1, 1, 0]])})
    mean = [5.0 / 5, 5.0 / 5]  # (1+2+0+3-1, 0+2+1-1+3) / 5
    logits = [mean[0], mean[1] + 0.5, -mean[0] - mean[1]]
    assert out.loss.item() == pytest.approx(_ce(logits, 1), rel=1e-6)
    assert out.metrics["acc"].item() == 1.0 and out.metrics["count"].item() == 1.0
    torch.testing.assert_close(t.predict(feats, {}), torch.tensor([logits]))


def test_cls_pooler_and_batch_accuracy() -> None:
    t = _target("max", pooler=True)
    out = t(Features(HIDDEN[:3], MASK[:3]), {"labels": torch.tensor([0, 2, 1])})
    rows = [[3.0, 5.0], [6.0, 3.0], [7.0, 8.0]]
    expected, correct = 0.0, 0
    for r, label in zip(rows, [0, 2, 1]):
        p = [math.tanh(0.5 * r[0] + 0.1), math.tanh(-0.25 * r[1])]
        logits = [p[0], p[1] + 0.5, -p[0] - p[1]]
        expected += _ce(logits, label) / 3
        correct += int(max(range(3), key=lambda k: logits[k]) == label)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["acc"].item() == pytest.approx(correct / 3)
    assert out.metrics["count"].item() == 3.0


def test_stack_pooling_takes_precedence() -> None:
    t = _target("first")
    pooled = torch.tensor([[2.0, -1.0]])
    feats = Features(torch.zeros(1, 3, 2), torch.ones(1, 3, dtype=torch.bool), pooled)
    torch.testing.assert_close(t.predict(feats, {}), torch.tensor([[2.0, -0.5, -1.0]]))


def test_cls_bad_input_errors() -> None:
    t = _target("first")
    feats = Features(HIDDEN[:3], MASK[:3])
    with pytest.raises(TpError, match="needs `labels`"):
        t(feats, {})
    with pytest.raises(DataError, match="label 3 is outside 0..2"):
        t(feats, {"labels": torch.tensor([0, 3, 1])})
    with pytest.raises(DataError, match="label -1"):
        t(feats, {"labels": torch.tensor([0, -1, 1])})
    with pytest.raises(TpError, match="needs hidden states"):
        t(Features(None), {"labels": torch.tensor([0])})


def test_first_pooling_with_pooler_equals_hf_bert_sequence_classification() -> None:
    """HF BertForSequenceClassification's head: pooler(dense + tanh) on [CLS] -> classifier."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, num_labels=3)
    hf = BertForSequenceClassification(cfg).eval()
    ids = torch.tensor([[2, 5, 6, 3, 7, 3], [2, 8, 3, 9, 3, 0]])  # sentence pairs, row 1 padded
    mask = ids != 0
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
    t = ClsTarget(ClsTarget.Config(labels=3, pooling="first", pooler=True),
                  BuildContext(hidden_size=8, vocab_size=30, dropout=0.0)).eval()
    assert sorted(t.state_dict()) == ["classifier.bias", "classifier.weight", "pooler.bias",
                                      "pooler.weight"]
    t.pooler.load_state_dict(hf.bert.pooler.dense.state_dict())  # type: ignore[union-attr]
    t.classifier.load_state_dict(hf.classifier.state_dict())
    with torch.no_grad():
        ours = t.predict(Features(out.hidden_states[-1], mask), {})
    torch.testing.assert_close(ours, out.logits, rtol=1e-5, atol=1e-6)


def test_two_streams_are_classified_from_u_v_their_difference_and_product() -> None:
    """A siamese model (TencentPretrain's siamese LSTM, SBERT): the classifier reads
    [u, v, |u - v|, u * v] of the two streams' pooled vectors."""
    torch.manual_seed(0)
    ctx = BuildContext(hidden_size=4, vocab_size=10, dropout=0.0,
                       stream_sizes={"stream_0": 4, "stream_1": 4})
    target = ClsTarget(ClsTarget.Config(labels=3), ctx)
    assert target.classifier.weight.shape == (3, 16)
    u, v = torch.randn(2, 4), torch.randn(2, 4)
    features = Features(None, streams=(Features(None, pooled=u), Features(None, pooled=v)))
    w, b = target.classifier.weight, target.classifier.bias
    by_hand = torch.cat([u, v, (u - v).abs(), u * v], dim=-1) @ w.T + b
    assert torch.allclose(target.predict(features, {}), by_hand, atol=1e-6)
    out = target(features, {"labels": torch.tensor([0, 2])})
    assert math.isclose(out.loss.item(), torch.nn.functional.cross_entropy(
        by_hand, torch.tensor([0, 2])).item(), rel_tol=1e-6)
    with pytest.raises(TpError, match="equally wide"):
        ClsTarget(ClsTarget.Config(), BuildContext(hidden_size=4, vocab_size=10,
                                                   stream_sizes={"stream_0": 4, "stream_1": 6}))
