"""BERT's dynamic masking, decided at load time from (seed, epoch, example index) alone.

Of the maskable positions (not [CLS]/[SEP]/[PAD]), `mask_prob` are chosen (at least one per
sequence); of those, 80% become [MASK], 10% a random token and 10% stay as they are (Devlin et
al., 2019, section 3.1). Labels hold the original id at chosen positions and -100 elsewhere, the
ignore index of `torch.nn.functional.cross_entropy`. Whole-word masking chooses whole words
(a piece plus its '##' continuations) until the budget is reached.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from tpcli.module import ModuleConfig

IGNORE = -100
_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of SplitMix64: a cheap, well-mixed hash of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def example_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch, index): resume replays the same data."""
    h = _splitmix64(seed & _M64)
    h = _splitmix64(h ^ (epoch & _M64))
    return _splitmix64(h ^ (index & _M64)) >> 1


def example_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(example_seed(seed, epoch, index))


def _word_units(maskable_pos: torch.Tensor, word_starts: torch.Tensor) -> torch.Tensor:
    """Word index of each maskable position: a new word begins at a word-start piece or after a
    gap (a special token), so a '##' piece after [SEP] is never glued to the previous word."""
    n = maskable_pos.numel()
    begins = word_starts[maskable_pos].clone()  # (n,)
    if n:
        begins[0] = True
        begins[1:] |= maskable_pos[1:] != maskable_pos[:-1] + 1
    return torch.cumsum(begins.long(), 0) - 1  # (n,)


def choose_positions(
    maskable: torch.Tensor,
    mask_prob: float,
    generator: torch.Generator,
    word_starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Positions to predict: round(mask_prob * #maskable), at least 1 (whole words if given)."""
    pos = maskable.nonzero().squeeze(1)  # (n,)
    n = pos.numel()
    if n == 0:
        return pos
    budget = max(1, int(round(n * mask_prob)))
    if word_starts is None:
        return pos[torch.randperm(n, generator=generator)[:budget]]
    word = _word_units(pos, word_starts)  # (n,)
    n_words = int(word[-1]) + 1
    order = torch.randperm(n_words, generator=generator)
    lengths = torch.bincount(word, minlength=n_words)[order]
    # Words in random order while the running count stays within the budget (the first word is
    # always taken, so a sequence of one long word still gets a prediction).
    keep = torch.cumsum(lengths, 0) <= budget
    keep[0] = True
    chosen = torch.zeros(n_words, dtype=torch.bool)
    chosen[order[keep]] = True
    return pos[chosen[word]]


def mask_tokens(
    ids: torch.Tensor,
    maskable: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
    mask_prob: float = 0.15,
    mask_token_prob: float = 0.8,
    random_token_prob: float = 0.1,
    word_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask one sequence. `ids` (T,) long, `maskable` (T,) bool, `word_starts` (T,) bool or None.

    Returns (input_ids (T,), labels (T,)) with labels = -100 where nothing is predicted."""
    chosen = choose_positions(maskable, mask_prob, generator, word_starts)  # (k,)
    labels = torch.full_like(ids, IGNORE)
    labels[chosen] = ids[chosen]
    inputs = ids.clone()
    r = torch.rand(chosen.numel(), generator=generator)  # (k,)
    to_mask = r < mask_token_prob
    to_random = (r >= mask_token_prob) & (r < mask_token_prob + random_token_prob)
    inputs[chosen[to_mask]] = mask_id
    rand_pos = chosen[to_random]
    inputs[rand_pos] = torch.randint(
        vocab_size, (rand_pos.numel(),), generator=generator, dtype=ids.dtype
    )
    return inputs, labels


class MaskingConfig(ModuleConfig):
    """Masking options shared by the masked-language-model processors."""

    mask_prob: float = Field(0.15, gt=0.0, lt=1.0, description="share of tokens to predict")
    mask_token_prob: float = Field(
        0.8, ge=0.0, le=1.0, description="of the predicted tokens, share replaced by [MASK]"
    )
    random_token_prob: float = Field(
        0.1, ge=0.0, le=1.0, description="of the predicted tokens, share replaced by a random token"
    )
    whole_word_masking: bool = Field(
        False, description="predict whole words (a piece and its '##' continuations) at once"
    )

    @model_validator(mode="after")
    def _shares(self) -> "MaskingConfig":
        if self.mask_token_prob + self.random_token_prob > 1.0:
            raise ValueError("mask_token_prob + random_token_prob must be at most 1")
        return self
