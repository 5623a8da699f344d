"""T5's pre-training data: span corruption with sentinel tokens (Raffel et al., 2020, 3.1.4).

The corpus is one document per line. At load time the documents are laid end to end with `eos`
after each one (as Hugging Face's run_t5_mlm_flax, which tokenizes each text with its `</s>`)
and cut into chunks of `raw_length` tokens, the longest whose corrupted input fits `seq_length`
with its final `eos`; the last, partial chunk is dropped. Each epoch, a chunk gets a noise mask
from T5's random_spans_noise_mask: round(noise_density * L) noise tokens in
round(noise / mean_noise_span_length) spans, span and gap lengths from random segmentations, the
chunk starting with a non-noise gap. Then, with sentinels s0, s1, ...:

    input_ids     = gap0 s0 gap1 s1 ... gap_{k-1} s_{k-1} eos        (length <= seq_length)
    lm_labels     = s0 span0 s1 span1 ... s_{k-1} span_{k-1} eos
    tgt_input_ids = pad lm_labels[:-1]        (T5's decoder start token is the pad token)

Sentinels come from `tokenizer.sentinel_ids()`, else from the tokens named `<extra_id_N>`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from tp_text.batch_keys import TextDataset
from tpcli.data.dataset import DocumentStream, special_id
from tpcli.data.format import Reader
from tpcli.errors import DataError
from tpcli.model.module import ModuleConfig


class T5ProcessorConfig(ModuleConfig):
    """Options of the `t5` processor (span corruption)."""

    seq_length: int = Field(512, ge=4, le=1 << 20,
                            description="tokens of each corrupted input, with its final eos")
    noise_density: float = Field(0.15, gt=0.0, lt=1.0, description="share of tokens corrupted")
    mean_noise_span_length: float = Field(3.0, ge=1.0, le=1000.0,
                                          description="mean length of a corrupted span")


def span_counts(length: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a chunk of `length` tokens, as random_spans_noise_mask."""
    noise = min(max(int(round(length * noise_density)), 1), length - 1)
    spans = max(int(round(noise / mean_span)), 1)
    return noise, min(spans, noise, length - noise)


def raw_length(seq_length: int, noise_density: float, mean_span: float) -> int:
    """The longest chunk whose corrupted input (non-noise + one sentinel per span + eos) fits
    `seq_length` (T5's compute_input_and_target_lengths)."""

    def inputs(length: int) -> int:
        noise, spans = span_counts(length, noise_density, mean_span)
        return length - noise + spans + 1

    length = 2
    while inputs(length + 1) <= seq_length:
        length += 1
    return length


def random_segmentation(items: int, segments: int, g: torch.Generator) -> torch.Tensor:
    """Split `items` into `segments` non-empty runs uniformly at random -> (segments,) lengths."""
    first = torch.zeros(items, dtype=torch.long)
    first[torch.randperm(items - 1, generator=g)[: segments - 1] + 1] = 1
    return torch.bincount(torch.cumsum(first, 0), minlength=segments)  # (segments,)


def random_spans_noise_mask(length: int, noise_density: float, mean_span: float,
                            g: torch.Generator) -> torch.Tensor:
    """(length,) bool, True on noise: alternating gap/span runs, starting with a gap."""
    noise, spans = span_counts(length, noise_density, mean_span)
    span_len = random_segmentation(noise, spans, g)  # (k,)
    gap_len = random_segmentation(length - noise, spans, g)  # (k,)
    runs = torch.stack([gap_len, span_len], dim=1).reshape(-1)  # (2k,)
    starts = torch.zeros(length, dtype=torch.long)
    starts[torch.cumsum(runs, 0)[:-1]] = 1
    return torch.cumsum(starts, 0) % 2 == 1


def corrupt(ids: torch.Tensor, noise: torch.Tensor, sentinels: torch.Tensor, eos: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (L,), noise (L,) bool -> (inputs, targets): each span replaced by / announced with its
    sentinel, both ending with eos."""
    prev = torch.zeros_like(noise)
    prev[1:] = noise[:-1]
    span_start = noise & ~prev  # (L,)
    span_index = torch.cumsum(span_start.long(), 0) - 1  # (L,) index of the span at noise
    inputs = ids.clone()
    inputs[span_start] = sentinels[span_index[span_start]]
    inputs = inputs[~noise | span_start]
    # Targets: every span's tokens preceded by its sentinel, ordered by key 2*pos (sentinel) and
    # 2*pos+1 (token).
    pos = torch.arange(ids.numel())
    keys = torch.cat([2 * pos[span_start], 2 * pos[noise] + 1])
    values = torch.cat([sentinels[span_index[span_start]], ids[noise]])
    targets = values[torch.argsort(keys)]
    end = torch.tensor([eos])
    return torch.cat([inputs, end]), torch.cat([targets, end])


def find_sentinels(tokenizer: Any) -> list[int]:
    """The tokenizer's sentinel ids in order: `sentinel_ids()` or the tokens `<extra_id_N>`."""
    fn = getattr(tokenizer, "sentinel_ids", None)
    if fn is not None:
        return [int(i) for i in fn()]
    lookup = getattr(tokenizer, "token_to_id", None)
    found: list[int] = []
    while lookup is not None:
        i = lookup(f"<extra_id_{len(found)}>")
        if i is None:
            break
        found.append(int(i))
    return found


class T5Dataset(TextDataset):
    """Span-corrupted chunks: input_ids (T,), tgt_input_ids (T',), lm_labels (T',)."""

    def __init__(self, store: Reader, tokenizer: Any, seed: int, config: T5ProcessorConfig):
        super().__init__(store, tokenizer, seed)
        self.config = config
        self.eos = special_id(self.special_ids, ("eos",), "t5", "the end of inputs and targets")
        self.start = special_id(self.special_ids, ("pad",), "t5", "the decoder start token")
        c = config
        self.length = raw_length(c.seq_length, c.noise_density, c.mean_noise_span_length)
        spans = span_counts(self.length, c.noise_density, c.mean_noise_span_length)[1]
        sentinels = find_sentinels(tokenizer)
        if len(sentinels) < spans:
            raise DataError(
                f"the t5 processor needs {spans} sentinel tokens (<extra_id_0> ...) for "
                f"seq_length {c.seq_length} (one per corrupted span); the vocabulary has "
                f"{len(sentinels)}",
                hint="use a T5 vocabulary (100 <extra_id_N> tokens), or lower seq_length, "
                "noise_density, or raise mean_noise_span_length",
            )
        self.sentinels = torch.tensor(sentinels[:spans], dtype=torch.long)
        self.stream = DocumentStream(store, self.eos)
        self.n_chunks = self.stream.total // self.length
        if self.n_chunks == 0:
            raise DataError(
                f"dataset {store.folder} is too short for span corruption: it has "
                f"{self.stream.total} tokens (with an eos after each document) and one t5 "
                f"example with seq_length {c.seq_length} needs {self.length}",
                hint="preprocess a larger corpus or lower seq_length",
            )

    def __len__(self) -> int:
        return self.n_chunks

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        c = self.config
        ids, _, _ = self.stream.window(index * self.length, (index + 1) * self.length)
        ids_t = torch.from_numpy(ids)  # (L,)
        noise = random_spans_noise_mask(self.length, c.noise_density, c.mean_noise_span_length, g)
        inputs, targets = corrupt(ids_t, noise, self.sentinels, self.eos)
        decoder = torch.cat([torch.tensor([self.start]), targets[:-1]])  # (T',) shifted right
        return {"input_ids": inputs, "tgt_input_ids": decoder, "lm_labels": targets}


class T5Processor:
    """T5 span corruption: sentinel-marked inputs, sentinel-announced targets."""

    Config = T5ProcessorConfig
    corpus_format: ClassVar[str] = "documents"

    def __init__(self, config: T5ProcessorConfig | None = None) -> None:
        self.config = config or T5ProcessorConfig()

    def dataset(self, store: Reader, tokenizer: Any, seed: int) -> T5Dataset:
        return T5Dataset(store, tokenizer, seed, self.config)

    def seq2seq_layout(self, special: dict[str, int]) -> tuple[int | None, list[int], list[int]]:
        """(decoder start id, ids before a source, ids after it): T5 starts its decoder with
        pad and ends a source with eos."""
        end = special.get("eos", special.get("sep"))
        return special.get("pad"), [], [end] if end is not None else []
