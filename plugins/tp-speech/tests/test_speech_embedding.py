"""The `speech` embedding against HF Speech2Text's encoder front end (conv subsampler, embed
scale, sinusoidal positions) on padded batches, its subsampled mask against the convolutions'
own output lengths (even kernels too), the padding it ignores, the table it grows, and the
errors a user sees."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch
from pydantic import ValidationError

from tpcli.errors import TpError
from tpcli.model.module import BuildContext
from tpcli.testing.convert import tp_from_hf
from tp_speech.convert_s2t import CONVERTER
from tp_speech.speech import SpeechConfig, SpeechEmbedding, subsampled_lengths
from tp_text.sinusoidalpos import sinusoid_table

pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: on a machine shared with other jobs a second torch thread only waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def padded_batch(frames: list[int], bins: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random features, row b real for its first frames[b] frames, zeros after (HF's padding)."""
    g = torch.Generator().manual_seed(seed)
    t = max(frames)
    mask = torch.arange(t)[None, :] < torch.tensor(frames)[:, None]  # (B, T)
    feats = torch.randn(len(frames), t, bins, generator=g).masked_fill(~mask[..., None], 0.0)
    return {"input_features": feats, "attention_mask": mask}


def hf_front_end(hf, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's encoder input (conv * embed_scale + positions) and its subsampled mask, computed
    by HF's own modules."""
    enc = hf.model.encoder
    with torch.no_grad():
        x = enc.conv(batch["input_features"]) * enc.embed_scale  # (B, T', E)
        mask = enc._get_feature_vector_attention_mask(x.shape[1],
                                                      batch["attention_mask"].long())
        return x + enc.embed_positions(mask.ne(1).long()), mask.bool()


@pytest.mark.parametrize("which", ["ODD", "PLAIN"])
def test_equals_hf_front_end_on_a_padded_batch(s2t, which: str) -> None:
    options = getattr(s2t, which)
    hf = s2t.random(options)
    speech = tp_from_hf(CONVERTER, hf).stack.embedding.parts["speech"]
    batch = padded_batch([37, 20, 9, 1], options["input_feat_per_channel"])
    want, want_mask = hf_front_end(hf, batch)
    with torch.no_grad():
        got = speech(batch)
    mask = speech.output_mask(batch)
    assert torch.equal(mask, want_mask)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-5  # fp32, every position (padding included)


def test_output_mask_is_each_rows_own_length_with_even_kernels() -> None:
    """Conv1d's length formula, (L + 2 (k // 2) - k) // 2 + 1 per layer, for odd and even
    kernels (HF's (L - 1) // 2 + 1 holds for odd ones only): a row run alone has as many
    positions as the mask of the padded batch gives it."""
    torch.manual_seed(0)
    config = SpeechConfig(features=6, kernel_sizes=[4, 3, 2], conv_channels=8)
    m = SpeechEmbedding(config, BuildContext(hidden_size=8, vocab_size=1)).eval()
    frames = [29, 16, 8, 5, 2, 1]
    batch = padded_batch(frames, 6)
    mask = m.output_mask(batch)
    with torch.no_grad():
        assert m(batch).shape[1] == mask.shape[1]
        for row, n in enumerate(frames):
            alone = {"input_features": batch["input_features"][row:row + 1, :n]}
            assert m(alone).shape[1] == int(mask[row].sum()), (row, n)
    assert subsampled_lengths(torch.tensor([29, 1, 0]), [4, 3, 2]).tolist() == [5, 1, 0]


def test_padded_frames_do_not_matter() -> None:
    """What the batch holds in padded frames (a collator's pad, garbage) changes nothing."""
    torch.manual_seed(0)
    m = SpeechEmbedding(SpeechConfig(features=5, kernel_sizes=[3, 3], conv_channels=6,
                                     scale=2.0), BuildContext(hidden_size=8, vocab_size=1))
    batch = padded_batch([17, 6], 5)
    noisy = dict(batch, input_features=batch["input_features"]
                 + (~batch["attention_mask"])[..., None] * 7.0)
    with torch.no_grad():
        assert torch.equal(m(batch), m(noisy))


def test_positions_grow_past_max_length_and_skip_padding() -> None:
    """An input longer than max_length extends the table (the rows are those of a longer
    table), and padded positions get no position vector."""
    small = SpeechConfig(features=4, kernel_sizes=[3], conv_channels=4, max_length=3)
    big = small.model_copy(update={"max_length": 500})
    ctx = BuildContext(hidden_size=8, vocab_size=1)
    torch.manual_seed(0)
    a = SpeechEmbedding(small, ctx)
    b = SpeechEmbedding(big, ctx)
    b.load_state_dict(a.state_dict(), strict=True)
    batch = padded_batch([40, 11], 4)
    with torch.no_grad():
        assert torch.equal(a(batch), b(batch))
        unpositioned = SpeechEmbedding(small.model_copy(update={"positions": False}), ctx)
        unpositioned.load_state_dict(a.state_dict(), strict=True)
        diff = a(batch) - unpositioned(batch)  # the positions alone
    mask = a.output_mask(batch)
    assert (diff[~mask] == 0).all() and (diff[mask].abs().sum(-1) > 0).all()
    first = sinusoid_table(3, 8)[2]  # each row's first position is row offset = 2
    torch.testing.assert_close(diff[:, 0], first.expand(2, -1), rtol=0, atol=1e-6)


def test_errors_name_the_problem_and_fix() -> None:
    m = SpeechEmbedding(SpeechConfig(features=5, conv_channels=4),
                        BuildContext(hidden_size=8, vocab_size=1))
    with pytest.raises(TpError, match="reads input_features") as e:
        m({"input_ids": torch.zeros(1, 3, dtype=torch.long)})
    assert "speech data processor" in e.value.hint
    with pytest.raises(TpError, match=r"expected \(batch, frames, 5\)") as e:
        m({"input_features": torch.zeros(1, 9, 80)})
    assert "model.embedding.speech.features" in e.value.hint
    with pytest.raises(ValidationError, match="odd"):
        SpeechConfig(conv_channels=25)
    with pytest.raises(ValidationError, match=">= 1"):
        SpeechConfig(kernel_sizes=[5, 0])
    with pytest.raises(ValidationError):
        SpeechConfig(kernel_sizes=[])
