"""BART's pre-training data: sentence permutation + text infilling (Lewis et al., 2020, 2.2).

The corpus is one sentence per line, a blank line between documents. At load time each document
is cut into blocks of whole sentences holding at most `seq_length - 2` tokens (a longer single
sentence is split into pieces of that size, so no text is lost). Each epoch, block i becomes:

- target: ``bos s1 s2 ... sn eos`` (the original order);
- source: the sentences permuted (with `permute_sentences`), then text infilling: span lengths
  are drawn from Poisson(`poisson_lambda`) until they cover ceil(`mask_ratio` * n) tokens (the
  last one cut to fit), the spans are laid without overlap at random, and each span becomes ONE
  mask token; a 0-length span inserts a mask. ``bos noised eos``, at most `seq_length` long.

Batch keys, as Hugging Face BartForConditionalGeneration with `labels`: `input_ids` the source,
`lm_labels` the target ``bos ... eos`` and `tgt_input_ids` = shift_tokens_right(target,
decoder_start_token_id=eos) = ``eos bos ...`` (fairseq's prev_output_tokens).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from tp_text.batch_keys import TextDataset
from tpcli.data.dataset import special_id
from tpcli.data.format import Reader
from tpcli.data.masking import place_spans
from tpcli.model.module import ModuleConfig


class BartProcessorConfig(ModuleConfig):
    """Options of the `bart` processor (text infilling + sentence permutation)."""

    seq_length: int = Field(512, ge=4, le=1 << 20,
                            description="tokens per example, bos/eos included")
    mask_ratio: float = Field(0.3, ge=0.0, lt=1.0, description="share of tokens masked by spans")
    poisson_lambda: float = Field(3.0, gt=0.0, le=100.0,
                                  description="mean of the Poisson span length distribution")
    permute_sentences: bool = Field(True, description="shuffle the sentences of each block")


def sentence_blocks(seq_lengths: np.ndarray, doc_bounds: np.ndarray, max_tokens: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut every document into blocks of whole sentences of at most `max_tokens` tokens; a
    sentence longer than that is split into pieces of `max_tokens`. All documents advance
    together. Returns (start, end, skip), each (N,): block i is the tokens of sentences
    start..end-1 from token `skip` on (at most max_tokens of them), sorted by position."""
    cum = np.concatenate([[0], np.cumsum(seq_lengths, dtype=np.int64)])  # (S+1,)
    cur, doc_end = doc_bounds[:-1].copy(), doc_bounds[1:]
    active = np.nonzero(doc_end > cur)[0]
    starts, ends = [], []
    while active.size:
        s0 = cur[active]
        end = np.searchsorted(cum, cum[s0] + max_tokens, side="right") - 1  # last fitting end
        end = np.clip(end, s0 + 1, doc_end[active])
        starts.append(s0), ends.append(end)
        cur[active] = end
        active = active[end < doc_end[active]]
    if not starts:
        return (np.zeros(0, np.int64),) * 3  # type: ignore[return-value]
    start, end = np.concatenate(starts), np.concatenate(ends)
    order = np.argsort(start, kind="stable")
    start, end = start[order], end[order]
    pieces = np.maximum(-(-(cum[end] - cum[start]) // max_tokens), 1)  # (N,) >1: a long sentence
    first = np.cumsum(pieces) - pieces
    skip = (np.arange(int(pieces.sum())) - np.repeat(first, pieces)) * max_tokens
    return np.repeat(start, pieces), np.repeat(end, pieces), skip


def poisson_spans(total: int, lam: float, g: torch.Generator) -> torch.Tensor:
    """Poisson(lam) lengths until they sum to `total` exactly (the last one cut); zeros kept."""
    if total <= 0:
        return torch.zeros(0, dtype=torch.long)
    draws: list[torch.Tensor] = []
    covered = 0
    while covered < total:  # one draw almost always suffices
        batch = max(8, int(2 * total / max(lam, 1.0)) + 8)
        d = torch.poisson(torch.full((batch,), float(lam)), generator=g).long()
        draws.append(d)
        covered += int(d.sum())
    lengths = torch.cat(draws)
    cum = torch.cumsum(lengths, 0)
    k = int(torch.searchsorted(cum, torch.tensor(total))) + 1  # first prefix reaching total
    lengths = lengths[:k].clone()
    lengths[-1] -= int(cum[k - 1]) - total
    return lengths


def infill(body: torch.Tensor, lengths: torch.Tensor, mask_id: int, g: torch.Generator
           ) -> torch.Tensor:
    """body (n,) -> each span of `lengths` (k,) (placed at random, no overlap) replaced by one
    mask; a 0-length span inserts one."""
    n, k = body.numel(), lengths.numel()
    if k == 0:
        return body.clone()
    starts = place_spans(n, lengths, g)  # (k,)
    covered = torch.zeros(n + 1, dtype=torch.long)  # difference array of covered units
    covered.index_add_(0, starts, torch.ones(k, dtype=torch.long))
    covered.index_add_(0, starts + lengths, -torch.ones(k, dtype=torch.long))
    keep = torch.cumsum(covered, 0)[:n] == 0  # (n,) not inside any span
    # Order the kept tokens (key 2*pos+1) and the masks (key 2*start: before the span's place).
    pos = torch.arange(n)
    keys = torch.cat([2 * pos[keep] + 1, 2 * starts])
    values = torch.cat([body[keep], torch.full((k,), mask_id, dtype=body.dtype)])
    return values[torch.argsort(keys, stable=True)]


class BartDataset(TextDataset):
    """Denoising pairs: input_ids (T,), tgt_input_ids (T',), lm_labels (T',)."""

    def __init__(self, store: Reader, tokenizer: Any, seed: int, config: BartProcessorConfig):
        super().__init__(store, tokenizer, seed)
        self.config = config
        self.bos = special_id(self.special_ids, ("bos", "cls"), "bart", "the start of a text")
        self.eos = special_id(self.special_ids, ("eos", "sep"), "bart", "the end of a text")
        self.mask = special_id(self.special_ids, ("mask",), "bart", "text infilling")
        lengths = store.sequence_lengths()
        self.cum = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])  # (S+1,)
        self.start, self.end, self.skip = sentence_blocks(lengths, store.document_bounds(),
                                                          config.seq_length - 2)

    def __len__(self) -> int:
        return len(self.start)

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        c = self.config
        s0, s1 = int(self.start[index]), int(self.end[index])
        skip = int(self.skip[index])  # > 0 only for a later piece of one long sentence
        body = self.store.sequences(s0, s1)[skip:skip + c.seq_length - 2]
        body = torch.from_numpy(body.astype(np.int64))  # (n,)
        n = body.numel()
        source = body
        if c.permute_sentences and s1 - s0 > 1:
            sent_len = np.diff(self.cum[s0:s1 + 1])  # (m,)
            sent = torch.from_numpy(np.repeat(np.arange(s1 - s0), sent_len))  # (n,) sentence
            rank = torch.empty(s1 - s0, dtype=torch.long)
            rank[torch.randperm(s1 - s0, generator=g)] = torch.arange(s1 - s0)
            source = body[torch.argsort(rank[sent] * n + torch.arange(n))]  # sentences permuted
        spans = poisson_spans(math.ceil(n * c.mask_ratio), c.poisson_lambda, g)
        source = infill(source, spans, self.mask, g)[: c.seq_length - 2]
        bos, eos = torch.tensor([self.bos]), torch.tensor([self.eos])
        target = torch.cat([bos, body, eos])  # (T',)
        return {"input_ids": torch.cat([bos, source, eos]),
                "tgt_input_ids": torch.cat([eos, target[:-1]]), "lm_labels": target}


class BartProcessor:
    """BART denoising: permuted, span-infilled source; the original text as target."""

    Config = BartProcessorConfig
    corpus_format: ClassVar[str] = "sentences"

    def __init__(self, config: BartProcessorConfig | None = None) -> None:
        self.config = config or BartProcessorConfig()

    def dataset(self, store: Reader, tokenizer: Any, seed: int) -> BartDataset:
        return BartDataset(store, tokenizer, seed, self.config)

    def seq2seq_layout(self, special: dict[str, int]) -> tuple[int | None, list[int], list[int]]:
        """(decoder start id, ids before a source, ids after it): BART wraps a source in
        bos ... eos and starts its decoder with eos."""
        end = special.get("eos", special.get("sep"))
        bos = special.get("bos", special.get("cls"))
        return end, [bos] if bos is not None else [], [end] if end is not None else []
