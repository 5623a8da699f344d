"""Dynamic masking: rates, the 80/10/10 split, determinism, special and whole-word handling."""

from __future__ import annotations

import pytest
import torch

from tpcli.data.masking import (
    IGNORE,
    MaskingConfig,
    choose_positions,
    example_generator,
    example_seed,
    mask_tokens,
)

MASK, VOCAB = 3, 1000


def sequence(t: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids >= 10 framed as [CLS] ... [SEP] ... [SEP] (ids 1, 2); maskable excludes them."""
    ids = torch.randint(10, VOCAB, (t,), generator=g)
    ids[0], ids[t // 2], ids[-1] = 1, 2, 2
    return ids, ids >= 10


def test_rate_and_split_over_many_tokens():
    g = torch.Generator().manual_seed(0)
    chosen = masked = random = kept = maskable_total = 0
    for i in range(400):
        ids, maskable = sequence(int(torch.randint(20, 130, (1,), generator=g)), g)
        inputs, labels = mask_tokens(ids, maskable, mask_id=MASK, vocab_size=VOCAB,
                                     generator=example_generator(1, 0, i))
        picked = labels != IGNORE
        assert torch.equal(labels[picked], ids[picked])  # labels are the original ids
        assert torch.equal(inputs[~picked], ids[~picked])  # nothing else changes
        assert not picked[~maskable].any()  # [CLS]/[SEP] are never predicted
        n = int(maskable.sum())
        assert int(picked.sum()) == max(1, round(0.15 * n))
        maskable_total += n
        chosen += int(picked.sum())
        masked += int((inputs[picked] == MASK).sum())
        kept += int((inputs[picked] == ids[picked]).sum())
        random += int(((inputs[picked] != MASK) & (inputs[picked] != ids[picked])).sum())
    assert chosen / maskable_total == pytest.approx(0.15, abs=0.005)
    # ~6000 predictions: 80/10/10 within a few standard deviations (sd ~0.4 points)
    assert masked / chosen == pytest.approx(0.8, abs=0.02)
    assert random / chosen == pytest.approx(0.1, abs=0.015)
    assert kept / chosen == pytest.approx(0.1, abs=0.015)  # includes random draws of the same id


def test_at_least_one_prediction_per_sequence():
    ids = torch.tensor([1, 50, 2])
    _, labels = mask_tokens(ids, ids >= 10, mask_id=MASK, vocab_size=VOCAB,
                            generator=example_generator(0, 0, 0))
    assert labels.tolist() == [IGNORE, 50, IGNORE]


def test_deterministic_per_seed_epoch_index():
    ids, maskable = sequence(128, torch.Generator().manual_seed(3))

    def run(seed: int, epoch: int, index: int) -> tuple[list[int], list[int]]:
        out = mask_tokens(ids, maskable, mask_id=MASK, vocab_size=VOCAB,
                          generator=example_generator(seed, epoch, index))
        return out[0].tolist(), out[1].tolist()

    assert run(7, 2, 11) == run(7, 2, 11)
    assert run(7, 2, 11) != run(7, 3, 11)
    assert run(7, 2, 11) != run(7, 2, 12)
    assert run(7, 2, 11) != run(8, 2, 11)
    seeds = {example_seed(7, e, i) for e in range(20) for i in range(200)}
    assert len(seeds) == 4000 and max(seeds) < 2**63


def test_whole_word_masking_takes_whole_words():
    # words: [10 11 12] [13] [14 15] [16 17 18 19] ..., continuations marked False in starts
    # ids would be torch.arange(10, 74); only the word structure matters here
    starts = torch.ones(64, dtype=torch.bool)
    starts[[1, 2, 5, 7, 8, 9] + list(range(11, 64, 3))] = False
    maskable = torch.ones(64, dtype=torch.bool)
    word = torch.cumsum(starts.long(), 0)
    for i in range(50):
        pos = choose_positions(maskable, 0.15, example_generator(0, 0, i), starts)
        picked = torch.zeros(64, dtype=torch.bool)
        picked[pos] = True
        for w in word[pos].unique():  # every piece of a chosen word is chosen
            assert picked[word == w].all()
        assert 1 <= len(pos) <= round(0.15 * 64)


def test_config_rejects_impossible_shares():
    with pytest.raises(ValueError, match="at most 1"):
        MaskingConfig(mask_token_prob=0.8, random_token_prob=0.3)
    with pytest.raises(ValueError):
        MaskingConfig(mask_prob=0.0)
