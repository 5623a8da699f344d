"""What the training loop does to a batch on the host before it moves to the device: every
all-real `*attention_mask` is dropped, so that the model takes its unpadded attention path
without reading the mask on the device (a sync per step); a padded one is kept."""

from __future__ import annotations

import torch

from tp_encoders.transformer import no_padding
from tpcli.train.loop import drop_full_masks


def test_full_masks_dropped_padded_kept() -> None:
    host = {
        "input_ids": torch.ones(2, 4, dtype=torch.long),
        "attention_mask": torch.ones(2, 4, dtype=torch.bool),
        "tgt_input_ids": torch.ones(2, 3, dtype=torch.long),
        "tgt_attention_mask": torch.tensor([[True, True, True], [True, True, False]]),
        "labels": torch.zeros(2, dtype=torch.long),
    }
    kept = dict(drop_full_masks(host))
    assert list(kept) == ["input_ids", "tgt_input_ids", "tgt_attention_mask", "labels"]
    assert kept["tgt_attention_mask"] is host["tgt_attention_mask"]


def test_mask_off_the_cpu_is_not_read() -> None:
    assert no_padding(torch.ones(2, 3, dtype=torch.bool))
    assert not no_padding(torch.tensor([[True, False]]))
    # on another device (meta stands in: it has no values to read) the mask counts as padded
    assert not no_padding(torch.ones(2, 3, dtype=torch.bool, device="meta"))
