"""The base of every processor's dataset: deterministic examples, masking, padding collate.

An example depends only on (seed, epoch, index): `__getitem__` seeds a fresh generator from the
three and hands it to `example`, so a resumed run, any worker count and any shuffle order see
the same examples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tpcli.data.format import Reader
from tpcli.data.batch import BatchKey, collate
from tpcli.data.masking import MaskingConfig, example_generator, mask_tokens
from tpcli.errors import DataError, PluginError

UNMASKABLE = ("cls", "sep", "pad", "mask")  # never chosen for prediction


class Masker:
    """Dynamic masking for one tokenizer: which ids are special, which pieces start a word."""

    def __init__(self, tokenizer: Any, config: MaskingConfig) -> None:
        special = tokenizer.special_ids
        if "mask" not in special:
            raise DataError(
                "the tokenizer has no [MASK] token, which masked-language-model data needs",
                hint="use a vocabulary with [MASK]",
            )
        self.config = config
        self.mask_id = int(special["mask"])
        self.vocab_size = int(tokenizer.vocab_size)
        self.special = torch.tensor(sorted({int(special[k]) for k in UNMASKABLE if k in special}))
        self.continuation: torch.Tensor | None = None  # (V,) bool, for whole-word masking
        if config.whole_word_masking:
            fn = getattr(tokenizer, "continuation_mask", None)
            if fn is None:
                raise DataError(
                    "whole_word_masking needs a tokenizer that marks word pieces "
                    "(a continuation_mask() method)",
                    hint="set whole_word_masking: false or use the wordpiece tokenizer",
                )
            self.continuation = torch.from_numpy(np.asarray(fn(), dtype=bool))

    def __call__(self, ids: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(T,) ids -> (masked input_ids (T,), mlm_labels (T,))."""
        maskable = ~torch.isin(ids, self.special)  # (T,)
        starts = None if self.continuation is None else ~self.continuation[ids]
        c = self.config
        return mask_tokens(
            ids, maskable, mask_id=self.mask_id, vocab_size=self.vocab_size, generator=g,
            mask_prob=c.mask_prob, mask_token_prob=c.mask_token_prob,
            random_token_prob=c.random_token_prob, word_starts=starts, span=c.span,
            span_p=c.span_p, max_span=c.max_span,
        )


class ExampleDataset(Dataset):
    """Map-style dataset over a stored corpus; subclasses implement `__len__` and `example`."""

    def __init__(self, store: Any, tokenizer: Any, seed: int) -> None:
        # store: the dataset's reader (a token Reader, an ArrayReader) or any object a
        # subclass reads its examples from; tokenizer: None for a recipe without one
        self.store = store
        self.seed = int(seed)
        self.epoch = 0
        self.special_ids = dict(tokenizer.special_ids) if tokenizer is not None else {}
        self.pad_id = int(self.special_ids.get("pad", 0))

    def set_epoch(self, epoch: int) -> None:
        """Masking and sampling of the next `__getitem__` calls depend on this epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        raise NotImplementedError

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} out of range (0..{len(self) - 1})")
        return self.example(index, example_generator(self.seed, self.epoch, index))

    def batch_keys(self) -> tuple[BatchKey, ...]:
        """The keys of this dataset's examples (`tpcli.data.batch.BatchKey`): names, dtypes,
        shapes, padding, what tokens/s counts. `collate` pads and stacks by them."""
        raise PluginError(f"{type(self).__name__} declares no batch_keys()",
                          hint="return a tuple of tpcli.data.batch.BatchKey from the dataset's "
                          "batch_keys()")

    def collate(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """A batch of `examples`, padded and stacked as `batch_keys` declares (see
        `tpcli.data.batch.collate`)."""
        return collate(examples, self.batch_keys(), source=type(self).__name__)


def special_id(special_ids: dict[str, int], names: tuple[str, ...], processor: str,
               purpose: str) -> int:
    """The id of the first of `names` the vocabulary has; DataError naming them otherwise."""
    for name in names:
        if name in special_ids:
            return int(special_ids[name])
    wanted = " or ".join(f"'{n}'" for n in names)
    raise DataError(
        f"the {processor} processor needs a {wanted} special token ({purpose}); the tokenizer's "
        f"special tokens are {sorted(special_ids) or 'none'}",
        hint="use a vocabulary that has it (the tokenizer reports it in special_ids)",
    )


class TokenStore:
    """Gathers tokens of a dataset by global token index, a shard at a time (no Python loop over
    tokens). Holds no memory map itself, so it pickles small into DataLoader workers."""

    def __init__(self, store: Reader) -> None:
        self.store = store
        shards = store.meta["shards"]
        self.seq_start = np.concatenate(
            [[0], np.cumsum([int(s["sequences"]) for s in shards])]).astype(np.int64)  # (K+1,)
        self.tok_start = np.concatenate(
            [[0], np.cumsum([int(s["tokens"]) for s in shards])]).astype(np.int64)  # (K+1,)

    def gather(self, index: np.ndarray) -> np.ndarray:
        """Token ids (int64) at global token positions `index` (any shape)."""
        flat = np.asarray(index, dtype=np.int64).reshape(-1)
        out = np.empty(flat.shape, np.int64)
        shard = np.searchsorted(self.tok_start, flat, side="right") - 1
        for k in np.unique(shard):
            here = shard == k
            out[here] = self.store.tokens_at(int(k), flat[here] - self.tok_start[k])
        return out.reshape(np.shape(index))


class DocumentStream:
    """The documents of a dataset laid end to end, a separator token after each one.

    Stream position `p` holds either a document token or the separator that ends document
    `doc(p)`. `window(lo, hi)` returns ids and document indexes of positions [lo, hi)."""

    def __init__(self, store: Reader, separator: int) -> None:
        self.tokens = TokenStore(store)
        self.separator = int(separator)
        lengths = store.sequence_lengths()  # (S,)
        seq_cum = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])  # (S+1,)
        bounds = store.document_bounds()  # (D+1,)
        self.doc_first_token = seq_cum[bounds[:-1]]  # (D,) global token index of each document
        self.doc_tokens = np.diff(seq_cum[bounds])  # (D,)
        # (D+1,) stream position where each document starts (its tokens, then the separator)
        self.doc_start = np.concatenate([[0], np.cumsum(self.doc_tokens + 1)]).astype(np.int64)
        self.total = int(self.doc_start[-1])

    def window(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids (n,) int64, doc (n,) document index, is_separator (n,) bool) of [lo, hi)."""
        pos = np.arange(lo, hi, dtype=np.int64)  # (n,)
        doc = np.searchsorted(self.doc_start, pos, side="right") - 1  # (n,)
        offset = pos - self.doc_start[doc]
        is_sep = offset == self.doc_tokens[doc]
        ids = np.full(pos.shape, self.separator, np.int64)
        ids[~is_sep] = self.tokens.gather(self.doc_first_token[doc[~is_sep]] + offset[~is_sep])
        return ids, doc, is_sep
