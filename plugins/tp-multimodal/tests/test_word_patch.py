"""word_patch (ViLT's joined text + image embedding) against HF ViltModel on tiny random models:
the joined sequence through tp's encoder, the mask it declares, patch sampling, its errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tp_multimodal.convert_vilt import CONVERTER
from tp_multimodal.word_patch import WordPatchEmbedding, sampled
from tpcli.errors import TpError
from tpcli.plugins import get_plugins
from tpcli.testing import contract
sys.path.insert(0, str(Path(__file__).parent))  # the shared helpers (pytest imports by path)
from vilt_models import CONFIG, batch, hf_inputs, hf_model, tp_from_hf

TOL = 1e-5


@pytest.fixture(scope="module")
def models():
    hf = hf_model()
    return hf, tp_from_hf(CONVERTER, hf)


def text_and_class(tp, b):
    """tp's final hidden states at the text positions and the class token (B, T + 1, H)."""
    with torch.no_grad():
        return tp.features(b).hidden[:, : b["input_ids"].shape[1] + 1]


@pytest.mark.parametrize("padded", [False, True])
def test_text_and_class_positions_match_hf(models, padded):
    """Last hidden states of every real text token and of the image's class token equal HF's,
    on 40x48 images (the 5x5 position table interpolated to 5x6 patches) with and without
    padded pixels (per-image grids 5x5 and 3x4: the table interpolated to each)."""
    hf, tp = models
    b = batch(padded=padded)
    with torch.no_grad():
        ref = hf.vilt(**hf_inputs(b)).last_hidden_state
    t = b["input_ids"].shape[1]
    ours = text_and_class(tp, b)
    real = torch.cat((b["attention_mask"], torch.ones(3, 1, dtype=torch.bool)), dim=1)
    assert (ours - ref[:, : t + 1])[real].abs().max() <= TOL


def test_all_patches_match_hf_up_to_order(models):
    """Unpadded, every patch's output is HF's: HF shuffles the patches (torch.multinomial over
    all of them), so each tp patch row must equal one HF row."""
    hf, tp = models
    b = batch(padded=False)
    t = b["input_ids"].shape[1]
    with torch.no_grad():
        ref = hf.vilt(**hf_inputs(b)).last_hidden_state[:, t + 1:]  # (B, N, H), shuffled
        ours = tp.features(b).hidden[:, t + 1:]
    assert ours.shape == ref.shape == (3, 30, CONFIG["hidden_size"])
    dist = torch.cdist(ours, ref, compute_mode="donot_use_mm_for_euclid_dist")  # (B, N, N)
    assert dist.min(dim=2).values.max() <= 1e-4
    assert (dist.argmin(dim=2).sort(dim=1).values == torch.arange(30)).all()  # a permutation


def test_no_pixel_mask_is_all_real(models):
    """Without pixel_mask the images are real all over: the same sequence and mask as an
    all-ones pixel_mask (one shared position table, no per-image resizing)."""
    _, tp = models
    b = batch(padded=False)
    emb = tp.stack.embedding.parts["word_patch"]
    bare = {k: v for k, v in b.items() if k != "pixel_mask"}
    with torch.no_grad():
        assert torch.equal(emb(bare), emb(b))
    assert torch.equal(emb.output_mask(bare), emb.output_mask(b))


def test_output_mask(models):
    """text mask, then the class token, then the real patches (5x5, 3x4 of 5x6)."""
    _, tp = models
    b = batch()
    emb = tp.stack.embedding.parts["word_patch"]
    mask = emb.output_mask(b)
    t = b["input_ids"].shape[1]
    assert mask.shape == (3, t + 1 + 30) == tuple(emb(b).shape[:2])
    assert torch.equal(mask[:, :t], b["attention_mask"])
    assert mask[:, t].all()
    assert mask[:, t + 1:].sum(dim=1).tolist() == [30, 25, 12]
    grid = mask[1, t + 1:].reshape(5, 6)
    assert grid[:, :5].all() and not grid[:, 5:].any()


def test_max_image_length_samples_in_training_only():
    """Training keeps `max_image_length` random real patches per image (all when fewer);
    evaluation keeps every real one; the draw follows torch's seed."""
    ctx = contract.make_ctx()
    cfg = WordPatchEmbedding.Config(image_size=40, patch_size=8, max_image_length=15,
                                    max_length=11, segments=3)
    emb = WordPatchEmbedding(cfg, ctx)
    b = batch()
    b["input_ids"] = b["input_ids"] % contract.V
    t = b["input_ids"].shape[1]
    assert emb.eval().output_mask(b)[:, t + 1:].sum(dim=1).tolist() == [30, 25, 12]
    emb.train()
    torch.manual_seed(3)
    first = emb.output_mask(b)[:, t + 1:]
    assert first.sum(dim=1).tolist() == [15, 15, 12]
    full = emb.eval().output_mask(b)[:, t + 1:]
    assert not (first & ~full).any()  # only real patches are kept
    torch.manual_seed(3)
    assert torch.equal(emb.train().output_mask(b)[:, t + 1:], first)
    real = torch.tensor([[True, False, True, True], [False, False, True, False]])
    kept = sampled(real, 2) & real
    assert kept.sum(dim=1).tolist() == [2, 1]


def test_errors_name_the_problem():
    emb = WordPatchEmbedding(WordPatchEmbedding.Config(image_size=40, patch_size=8,
                                                       max_length=4), contract.make_ctx())
    b = batch()
    with pytest.raises(TpError, match="more than the 4 positions"):
        emb({**b, "input_ids": b["input_ids"] % contract.V, "token_type_ids": None})
    with pytest.raises(TpError, match="no pixel_values"):
        emb({"input_ids": b["input_ids"][:, :4] % contract.V})
    with pytest.raises(TpError, match="pixel_mask has shape"):
        emb({"input_ids": b["input_ids"][:, :4] % contract.V, "pixel_values": b["pixel_values"],
             "pixel_mask": b["pixel_mask"][:, :8]})
    with pytest.raises(ValueError, match="does not divide"):
        WordPatchEmbedding.Config(image_size=40, patch_size=7)


def test_contract():
    """The module contract (tpcli.testing.contract) on word_patch and its mask."""
    cls = get_plugins().registry.get("embedding", "word_patch")
    m = contract.build(cls).train()
    loss, outputs = contract.run("embedding", m)
    loss.backward()
    assert torch.isfinite(outputs[0]).all()
    batch_ = contract.declared_inputs(m)
    assert m.output_mask(batch_).shape == outputs[0].shape[:2]
    assert m.projection.weight.grad is not None and m.word.weight.grad is not None
