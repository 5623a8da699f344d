"""BERT's dynamic masking, decided at load time from (seed, epoch, example index) alone.

Of the maskable positions (not [CLS]/[SEP]/[PAD]), `mask_prob` are chosen (at least one per
sequence); of those, 80% become [MASK], 10% a random token and 10% stay as they are (Devlin et
al., 2019, section 3.1). Labels hold the original id at chosen positions and -100 elsewhere, the
ignore index of `torch.nn.functional.cross_entropy`. Whole-word masking chooses whole words
(a piece plus its '##' continuations) until the budget is reached.

Span masking chooses contiguous spans of units (tokens, or whole words with whole-word masking):
`geometric` draws span lengths from Geometric(`span_p`) truncated to 1..`max_span` (SpanBERT,
Joshi et al., 2020: p = 0.2, at most 10 words, mean 3.8); `ngram` draws n in 1..`max_span` with
odds proportional to 1/n (ALBERT's n-gram masking, Lan et al., 2020: at most 3). Spans never
overlap and are laid at random; the last one is cut so the chosen tokens match the budget (with
whole words, spans count in words and the last one is cut at a word so the tokens stay within the
budget). The 80/10/10 replacement is then decided per token, not per span.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from tpcli.data.batch import IGNORE  # re-exported: processors import it from here
from tpcli.model.module import ModuleConfig

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


Span = Literal["none", "geometric", "ngram"]
DEFAULT_MAX_SPAN = {"geometric": 10, "ngram": 3}


def span_weights(kind: Span, span_p: float, max_span: int) -> torch.Tensor:
    """(max_span,) unnormalized odds of lengths 1..max_span: p (1-p)^(l-1) for 'geometric'
    (SpanBERT's truncated, renormalized geometric: mean 3.8 for p=0.2, max 10), 1/l for 'ngram'."""
    length = torch.arange(1, max_span + 1, dtype=torch.float64)
    if kind == "geometric":
        return span_p * (1.0 - span_p) ** (length - 1)
    return 1.0 / length


def span_lengths(kind: Span, count: int, generator: torch.Generator, *, span_p: float = 0.2,
                 max_span: int = 10) -> torch.Tensor:
    """`count` span lengths (long, in 1..max_span), drawn with `span_weights`."""
    odds = span_weights(kind, span_p, max_span)
    return torch.multinomial(odds, count, replacement=True, generator=generator) + 1


def place_spans(n: int, lengths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Start of each span (k,) when spans of `lengths` (k,) (sum <= n) are laid without overlap
    uniformly at random over n units: the n - sum(lengths) free units and the k spans are k + free
    items in random order, the spans themselves in random order too."""
    k = lengths.numel()
    free = n - int(lengths.sum())
    slots = torch.randperm(free + k, generator=generator)[:k].sort().values  # (k,) span slots
    order = torch.randperm(k, generator=generator)  # span order[j] takes the j-th slot
    placed = lengths[order]  # (k,)
    # Units before slot j: the free units before it plus the lengths of earlier spans.
    before = slots - torch.arange(k) + torch.cumsum(placed, 0) - placed  # (k,)
    starts = torch.empty_like(before)
    starts[order] = before
    return starts  # (k,)


def _choose_spans(pos: torch.Tensor, budget: int, generator: torch.Generator, kind: Span,
                  span_p: float, max_span: int, word_starts: torch.Tensor | None) -> torch.Tensor:
    """Span masking over maskable positions `pos` (n,): returns the chosen positions."""
    n = pos.numel()
    if word_starts is None:
        unit = torch.arange(n)
    else:
        unit = _word_units(pos, word_starts)  # (n,)
    n_units = int(unit[-1]) + 1
    unit_tokens = torch.bincount(unit, minlength=n_units)  # (U,)
    # Enough lengths to cover the budget (each is >= 1 unit); keep the prefix that reaches it.
    lengths = span_lengths(kind, min(budget, n_units), generator, span_p=span_p,
                           max_span=max_span)
    cum = torch.cumsum(lengths, 0)
    k = int(torch.searchsorted(cum, torch.tensor(min(budget, n_units)))) + 1
    lengths = lengths[:k].clone()
    lengths[-1] -= int(cum[k - 1]) - min(budget, n_units)  # sum(lengths) == min(budget, units)
    starts = place_spans(n_units, lengths, generator)  # (k,)
    # Span index + 1 inside each span, 0 outside (spans never overlap): a difference array.
    marks = torch.zeros(n_units + 1, dtype=torch.long)
    marks.index_add_(0, starts, torch.arange(1, k + 1))
    marks.index_add_(0, starts + lengths, -torch.arange(1, k + 1))
    span_of_unit = torch.cumsum(marks, 0)[:n_units] - 1  # (U,) -1 outside every span
    chosen_unit = span_of_unit >= 0
    if word_starts is not None:
        # Whole words: the spans' words in drawn order while the token count stays within the
        # budget (the last span is cut at a word; the first word is always taken).
        units = chosen_unit.nonzero().squeeze(1)  # (u,)
        units = units[torch.argsort(span_of_unit[units] * n_units + units)]
        keep = torch.cumsum(unit_tokens[units], 0) <= budget
        keep[0] = True
        chosen_unit = torch.zeros(n_units, dtype=torch.bool)
        chosen_unit[units[keep]] = True
    return pos[chosen_unit[unit]]


def choose_positions(
    maskable: torch.Tensor,
    mask_prob: float,
    generator: torch.Generator,
    word_starts: torch.Tensor | None = None,
    span: Span = "none",
    span_p: float = 0.2,
    max_span: int | None = None,
) -> torch.Tensor:
    """Positions to predict: round(mask_prob * #maskable), at least 1 (whole words if given;
    contiguous spans with `span` "geometric" or "ngram")."""
    pos = maskable.nonzero().squeeze(1)  # (n,)
    n = pos.numel()
    if n == 0:
        return pos
    budget = max(1, int(round(n * mask_prob)))
    if span != "none":
        limit = DEFAULT_MAX_SPAN[span] if max_span is None else max_span
        return _choose_spans(pos, budget, generator, span, span_p, limit, word_starts)
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
    span: Span = "none",
    span_p: float = 0.2,
    max_span: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask one sequence. `ids` (T,) long, `maskable` (T,) bool, `word_starts` (T,) bool or None.

    Returns (input_ids (T,), labels (T,)) with labels = -100 where nothing is predicted."""
    chosen = choose_positions(maskable, mask_prob, generator, word_starts, span, span_p,
                              max_span)  # (k,)
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
    span: Span = Field(
        "none",
        description="mask contiguous spans: 'geometric' (SpanBERT lengths), 'ngram' (ALBERT "
        "n-grams, odds 1/n) or 'none' (independent units); in words with whole_word_masking",
    )
    span_p: float = Field(
        0.2, gt=0.0, lt=1.0, description="parameter p of the geometric span length distribution"
    )
    max_span: int | None = Field(
        None, ge=1, le=64,
        description="longest span in units (default: 10 for 'geometric', 3 for 'ngram')",
    )

    @model_validator(mode="after")
    def _shares(self) -> "MaskingConfig":
        if self.mask_token_prob + self.random_token_prob > 1.0:
            raise ValueError("mask_token_prob + random_token_prob must be at most 1")
        return self
