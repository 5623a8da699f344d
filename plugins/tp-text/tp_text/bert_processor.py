"""BERT's pre-training data: sentence pairs for next-sentence prediction plus dynamic masking.

The corpus is one sentence per line with a blank line between documents. At load time each
document is cut into chunks of about `seq_length - 3` tokens (sometimes shorter, with
`short_seq_prob`), as Google's create_pretraining_data.py does. Each epoch, chunk `i` becomes
``[CLS] A [SEP] B [SEP]``: A is its first sentences (a random split point); B is the rest of the
chunk (IsNext, `sp_labels` 0) or, with `random_next_prob`, sentences from a random other document
(NotNext, 1). The longer side is trimmed (randomly at its front or back) to fit, then tokens are
masked. Labels follow Hugging Face BertForPreTraining's `next_sentence_label`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from tp_text.batch_keys import TextDataset
from tpcli.data.dataset import Masker
from tpcli.data.format import Reader
from tpcli.data.masking import MaskingConfig
from tpcli.errors import DataError

IS_NEXT, NOT_NEXT = 0, 1


class BertProcessorConfig(MaskingConfig):
    """Options of the `bert` processor (sentence pairs + masking)."""

    seq_length: int = Field(128, ge=8, le=65536, description="tokens per example, with specials")
    short_seq_prob: float = Field(
        0.1, ge=0.0, le=1.0, description="share of examples with a random shorter target length"
    )
    random_next_prob: float = Field(
        0.5, ge=0.0, le=1.0, description="share of pairs whose B comes from another document"
    )


def chunk_documents(
    seq_lengths: np.ndarray, doc_bounds: np.ndarray, max_tokens: int, short_seq_prob: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut every document into chunks of whole sentences of at least a target length.

    `seq_lengths` (S,) tokens per sentence, `doc_bounds` (D+1,) first sentence of each document.
    A chunk grows sentence by sentence until it holds `target` tokens or its document ends;
    `target` is `max_tokens`, or with `short_seq_prob` uniform in [2, max_tokens]. All documents
    advance together (one vectorised step per chunk of the longest document).
    Returns (start, end, target, doc), each (N,), sorted by start.
    """
    cum = np.concatenate([[0], np.cumsum(seq_lengths, dtype=np.int64)])  # (S+1,)
    doc_end = doc_bounds[1:]
    cur = doc_bounds[:-1].copy()
    active = np.nonzero(doc_end > cur)[0]
    starts, ends, targets, docs = [], [], [], []
    while active.size:
        s0 = cur[active]
        target = np.full(active.size, max_tokens, dtype=np.int64)
        short = rng.random(active.size) < short_seq_prob
        target[short] = rng.integers(2, max_tokens + 1, int(short.sum()))
        end = np.searchsorted(cum, cum[s0] + target, side="left")
        end = np.clip(end, s0 + 1, doc_end[active])
        starts.append(s0), ends.append(end), targets.append(target), docs.append(active)
        cur[active] = end
        active = active[end < doc_end[active]]
    if not starts:
        return (np.zeros(0, np.int64),) * 4  # type: ignore[return-value]
    out = [np.concatenate(x) for x in (starts, ends, targets, docs)]
    order = np.argsort(out[0], kind="stable")
    return tuple(x[order] for x in out)  # type: ignore[return-value]


def trimmed_lengths(la: int, lb: int, max_total: int) -> tuple[int, int]:
    """Lengths after BERT's truncate_seq_pair: trim the longer side (B when equal) one token at
    a time until both fit (closed form)."""
    excess = la + lb - max_total
    if excess <= 0:
        return la, lb
    if la - lb >= excess:
        return la - excess, lb
    if lb - la >= excess:
        return la, lb - excess
    return (max_total + 1) // 2, max_total // 2


def _trim(x: np.ndarray, keep: int, g: torch.Generator) -> np.ndarray:
    """`keep` tokens of x: each removed token comes off the front or the back with odds 1/2."""
    removed = len(x) - keep
    front = int((torch.rand(removed, generator=g) < 0.5).sum()) if removed > 0 else 0
    return x[front:front + keep]


def pair_example(a: np.ndarray, b: np.ndarray, label: int, max_tokens: int,
                 special_ids: dict[str, int], masker: Masker,
                 g: torch.Generator) -> dict[str, torch.Tensor]:
    """[CLS] A [SEP] B [SEP] ([CLS] A [SEP] when B is empty), masked, with segment ids and the
    sentence-pair label `label`; A and B trimmed to `max_tokens` together, each trimmed token off
    the front or the back with equal odds, as in BERT."""
    la, lb = trimmed_lengths(len(a), len(b), max_tokens)
    a, b = _trim(a, la, g), _trim(b, lb, g)
    cls, sep = special_ids["cls"], special_ids["sep"]
    ids = np.concatenate([[cls], a, [sep], b, [sep]] if len(b) else [[cls], a, [sep]])
    ids_t = torch.from_numpy(ids.astype(np.int64))  # (T,)
    segments = torch.zeros_like(ids_t)
    segments[len(a) + 2:] = 1
    inputs, labels = masker(ids_t, g)
    return {"input_ids": inputs, "segment_ids": segments, "mlm_labels": labels,
            "sp_labels": torch.tensor(label)}


class BertDataset(TextDataset):
    """Sentence-pair examples: input_ids, segment_ids, mlm_labels (T,) and sp_labels ()."""

    def __init__(self, store: Reader, tokenizer: Any, seed: int, config: BertProcessorConfig):
        super().__init__(store, tokenizer, seed)
        for key in ("cls", "sep"):
            if key not in self.special_ids:
                raise DataError(f"the bert processor needs a [{key.upper()}] token in the vocabulary")
        self.config = config
        self.masker = Masker(tokenizer, config)
        self.max_tokens = config.seq_length - 3  # room for [CLS] A [SEP] B [SEP]
        lengths = store.sequence_lengths()
        self.doc_bounds = store.document_bounds()  # (D+1,)
        self.cum = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])  # (S+1,)
        self.n_docs = len(self.doc_bounds) - 1
        if self.n_docs < 2 and config.random_next_prob > 0:
            raise DataError(
                f"dataset {store.folder} has {self.n_docs} document; the bert processor needs at "
                "least 2 to draw NotNext pairs",
                hint="add documents (blank line between them) or use the mlm processor",
            )
        rng = np.random.default_rng(self.seed)
        self.start, self.end, self.target, self.doc = chunk_documents(
            lengths, self.doc_bounds, self.max_tokens, config.short_seq_prob, rng
        )

    def __len__(self) -> int:
        return len(self.start)

    def _fill(self, first: int, need: int, doc: int) -> int:
        """End (exclusive) of the sentences from `first` that hold `need` tokens, within `doc`."""
        end = int(np.searchsorted(self.cum, self.cum[first] + need, side="left"))
        return min(max(end, first + 1), int(self.doc_bounds[doc + 1]))

    def _random_b(self, doc: int, need: int, g: torch.Generator) -> tuple[int, int]:
        other = int(torch.randint(self.n_docs - 1, (1,), generator=g))
        other += other >= doc  # uniform over the other documents
        lo, hi = int(self.doc_bounds[other]), int(self.doc_bounds[other + 1])
        first = lo + int(torch.randint(hi - lo, (1,), generator=g))
        return first, self._fill(first, need, other)

    def _pair(self, i: int, g: torch.Generator) -> tuple[int, int, int, int, int]:
        """(a_first, a_end, b_first, b_end, label) as global sentence indexes."""
        s0, e, doc = int(self.start[i]), int(self.end[i]), int(self.doc[i])
        target = int(self.target[i])
        n = e - s0
        a_end = s0 + 1 + int(torch.randint(n - 1, (1,), generator=g)) if n > 1 else e
        random_next = float(torch.rand(1, generator=g)) < self.config.random_next_prob
        need = max(1, target - int(self.cum[a_end] - self.cum[s0]))
        if not random_next:
            if n > 1:
                return s0, a_end, a_end, e, IS_NEXT
            if e < self.doc_bounds[doc + 1]:  # a one-sentence chunk: continue into the document
                return s0, a_end, e, self._fill(e, need, doc), IS_NEXT
        if self.n_docs < 2:  # random_next_prob is 0 here: a true continuation does not exist
            return s0, a_end, a_end, a_end, IS_NEXT
        b0, b1 = self._random_b(doc, need, g)
        return s0, a_end, b0, b1, NOT_NEXT

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        a0, a1, b0, b1, label = self._pair(index, g)
        a = self.store.sequences(a0, a1)
        b = self.store.sequences(b0, b1)
        return pair_example(a, b, label, self.max_tokens, self.special_ids, self.masker, g)


class BertProcessor:
    """BERT pairs: [CLS] A [SEP] B [SEP] with IsNext/NotNext labels and dynamic masking."""

    Config = BertProcessorConfig
    corpus_format: ClassVar[str] = "sentences"

    def __init__(self, config: BertProcessorConfig | None = None) -> None:
        self.config = config or BertProcessorConfig()

    def dataset(self, store: Reader, tokenizer: Any, seed: int) -> BertDataset:
        return BertDataset(store, tokenizer, seed, self.config)
