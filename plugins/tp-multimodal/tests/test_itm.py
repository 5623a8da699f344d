"""The itm (image-text matching), rank (retrieval score) and vqa targets: numbers against
torch / HF references, HF parity of ViLT's pooler, of ViltForImageAndTextRetrieval's score and
of ViltForQuestionAnswering's logits and loss, the contract."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tp_multimodal.convert_vilt import CONVERTER
from tp_multimodal.itm import ItmTarget
from tp_multimodal.rank import RankTarget
from tp_multimodal.vqa import VqaTarget
from tpcli.errors import DataError, TpError
from tpcli.model.module import Features
from tpcli.plugins import get_plugins
from tpcli.testing import contract

sys.path.insert(0, str(Path(__file__).parent))  # the shared helpers (pytest imports by path)
from vilt_models import CONFIG, batch, hf_inputs, hf_model, tp_from_hf  # noqa: E402


def features(seed: int = 0) -> Features:
    g = torch.Generator().manual_seed(seed)
    return Features(torch.randn(4, 6, contract.H, generator=g), torch.ones(4, 6, dtype=torch.bool))


def test_itm_loss_and_accuracy_by_hand():
    """logits = classifier(tanh(pooler(hidden[:, 0]))); cross-entropy and accuracy of them."""
    torch.manual_seed(0)
    itm = ItmTarget(ItmTarget.Config(), contract.make_ctx()).eval()
    f = features()
    labels = torch.tensor([1, 0, 0, 1])
    out = itm(f, {"itm_labels": labels})
    logits = F.linear(torch.tanh(F.linear(f.hidden[:, 0], itm.pooler.weight, itm.pooler.bias)),
                      itm.classifier.weight, itm.classifier.bias)
    assert torch.allclose(itm.predict(f, {}), logits, atol=0, rtol=0)
    assert torch.allclose(out.loss, F.cross_entropy(logits, labels), atol=1e-7)
    hits = (logits.argmax(-1) == labels).float().mean()
    assert out.metrics["acc"] == hits and out.metrics["count"] == 4


def test_rank_loss_and_accuracy_by_hand():
    """One score per pair: binary cross-entropy; matched when the score is positive."""
    torch.manual_seed(0)
    rank = RankTarget(RankTarget.Config(), contract.make_ctx()).eval()
    f = features()
    labels = torch.tensor([1, 0, 0, 1])
    score = rank.predict(f, {})
    assert score.shape == (4, 1)
    out = rank(f, {"itm_labels": labels})
    assert torch.allclose(out.loss, F.binary_cross_entropy_with_logits(score[:, 0],
                                                                       labels.float()))
    assert out.metrics["acc"] == ((score[:, 0] > 0).long() == labels).float().mean()


def test_retrieval_score_matches_hf():
    """ViltForImageAndTextRetrieval converted: tp's rank score = HF's logits (B, 1)."""
    hf = hf_model("ViltForImageAndTextRetrieval")
    tp = tp_from_hf(CONVERTER, hf)
    b = batch()
    with torch.no_grad():
        ref = hf(**hf_inputs(b)).logits
        ours = tp.predict(b)["rank"]
    assert ours.shape == ref.shape == (3, 1)
    assert (ours - ref).abs().max() <= 1e-5


def test_itm_errors():
    itm = ItmTarget(ItmTarget.Config(), contract.make_ctx())
    with pytest.raises(TpError, match="needs `itm_labels`"):
        itm(features(), {})
    with pytest.raises(DataError, match="must be 0 or 1"):
        itm(features(), {"itm_labels": torch.tensor([0, 1, 2, 1])})


def test_itm_pooler_matches_hf():
    """tp's itm pooler over tp's encoder = HF ViltModel's pooler_output (padded images)."""
    hf = hf_model()
    tp = tp_from_hf(CONVERTER, hf)
    b = batch()
    with torch.no_grad():
        ref = hf.vilt(**hf_inputs(b)).pooler_output
        ours = tp.targets["itm"].pooled(tp.features(b))
    assert (ours - ref).abs().max() <= 1e-5


def test_vqa_matches_hf_logits_and_loss():
    """ViltForQuestionAnswering converted: tp's vqa logits and loss (BCE over soft scores,
    times the answer count) equal HF's."""
    hf = hf_model("ViltForQuestionAnswering")
    tp = tp_from_hf(CONVERTER, hf)
    b = batch()
    scores = torch.rand(3, CONFIG["num_labels"], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(**hf_inputs(b), labels=scores)
        ours = tp.predict(b)["vqa"]
        loss = tp({**b, "vqa_scores": scores}).losses["vqa"]
    assert ours.shape == ref.logits.shape == (3, CONFIG["num_labels"])
    assert (ours - ref.logits).abs().max() <= 1e-5
    assert abs(float(loss) - float(ref.loss)) <= 1e-5


def test_vqa_accuracy_and_errors():
    torch.manual_seed(0)
    vqa = VqaTarget(VqaTarget.Config(answers=5), contract.make_ctx()).eval()
    f = features()
    scores = torch.zeros(4, 5)
    top = vqa.predict(f, {}).argmax(-1)
    scores[0, top[0]], scores[1, top[1]], scores[2, (top[2] + 1) % 5] = 1.0, 0.3, 1.0
    assert torch.isclose(vqa(f, {"vqa_scores": scores}).metrics["acc"], torch.tensor(1.3 / 4))
    with pytest.raises(DataError, match=r"expected \(batch, 5\)"):
        vqa(f, {"vqa_scores": torch.zeros(4, 6)})
    with pytest.raises(TpError, match="needs `vqa_scores`"):
        vqa(f, {})


@pytest.mark.parametrize("name", ["itm", "rank", "vqa"])
def test_contract(name):
    """The module contract on the targets (labels drawn from their declared inputs)."""
    cls = get_plugins().registry.get("target", name)
    m = contract.build(cls).train()
    loss, outputs = contract.run("target", m)
    loss.backward()
    assert all(torch.isfinite(y).all() for y in outputs)
    assert m.pooler.weight.grad is not None and m.classifier.weight.grad is not None
