"""tp's dataset format: sharded, memory-mapped token files, versioned by `meta.json`.

A dataset folder holds, per shard ``shard-NNNNN``:

- ``.tokens.bin``: every token id of the shard, back to back (uint16 when the vocabulary fits,
  else uint32);
- ``.seqs.idx``: int64 offsets into the tokens, one more than the sequences (sentence or line)
  so sequence ``i`` is ``tokens[seqs[i]:seqs[i+1]]``;
- ``.docs.idx``: int64 offsets into the sequences, one more than the documents.

and one ``meta.json`` (format version, tokenizer and processor that made it, counts, and per
shard the sha256 of its index files). Offsets are local to their shard and a document never
spans two shards. Datasets are written by `Writer` into a temporary folder next to the target
and renamed into place only when complete, so a failed run leaves nothing half-written (see
`tpcli.data.staging`). `Reader` checks a dataset when it opens it and as it reads tokens (see
`tpcli.data.integrity`); datasets written before the digests were recorded are checked without
them.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from tpcli.data.integrity import (
    INDEXES, check_ids, check_index, check_shard_info, check_sizes, file_digest, rebuild_hint,
)
from tpcli.data.staging import complete, make_temp, remove_stale, write_error
from tpcli.errors import DataError, PluginError

FORMAT = "tp-dataset"
FORMAT_VERSION = 2  # the newest this tp reads: 1 token datasets, 2 array datasets (data/arrays.py)
TOKENS_VERSION = 1  # what a token dataset is written as
META = "meta.json"
FLUSH_TOKENS = 1 << 20  # buffered tokens before a write: memory stays flat, writes stay large


def check_token_ids(tokens: np.ndarray, vocab_size: int) -> None:
    """PluginError unless every id is inside the vocabulary (one vectorised min and max)."""
    if len(tokens) and (tokens.max() >= vocab_size or tokens.min() < 0):
        raise PluginError(f"the tokenizer produced id {int(tokens.max())} (or a negative "
                          f"one), outside its vocabulary of {vocab_size}")


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class _ShardWriter:
    """Appends to one shard's three files; holds at most ~FLUSH_TOKENS tokens in memory."""

    def __init__(self, folder: Path, index: int, dtype: np.dtype) -> None:
        self.folder = folder
        self.name = shard_name(index)
        self.dtype = dtype
        self._files: list[IO[bytes]] = []
        try:
            self._tok, self._seq, self._doc = (self._open(s) for s in ("tokens.bin", *INDEXES))
        except BaseException:
            self.close_files()  # the ones already open: their folder is about to be deleted
            raise
        self._pending: list[np.ndarray] = []  # compact arrays, not Python ints (28 bytes each)
        self._pending_tokens = 0
        self._seq_ends: list[np.ndarray] = []  # int64 offsets, in parts
        self._doc_ends: list[np.ndarray] = []
        self.tokens = self.sequences = self.documents = 0
        np.zeros(1, np.int64).tofile(self._seq)  # the leading 0 offset of both indexes
        np.zeros(1, np.int64).tofile(self._doc)

    def _open(self, suffix: str) -> IO[bytes]:
        f = open(self.folder / f"{self.name}.{suffix}", "wb")
        self._files.append(f)
        return f

    def add(self, seq_lengths: np.ndarray, doc_seqs: np.ndarray, tokens: np.ndarray) -> None:
        """Whole documents: (S,) their sequences' lengths, (D,) each one's count of sequences
        and their (n,) tokens back to back."""
        self._seq_ends.append(self.tokens + np.cumsum(seq_lengths, dtype=np.int64))
        self._doc_ends.append(self.sequences + np.cumsum(doc_seqs, dtype=np.int64))
        self.tokens += len(tokens)
        self.sequences += len(seq_lengths)
        self.documents += len(doc_seqs)
        self._pending.append(tokens)
        self._pending_tokens += len(tokens)
        if self._pending_tokens >= FLUSH_TOKENS:
            self.flush()

    def flush(self) -> None:
        for f, parts in ((self._tok, self._pending), (self._seq, self._seq_ends),
                         (self._doc, self._doc_ends)):
            if parts:
                (np.concatenate(parts) if len(parts) > 1 else parts[0]).tofile(f)
        self._pending, self._pending_tokens, self._seq_ends, self._doc_ends = [], 0, [], []

    def close_files(self) -> None:
        for f in self._files:
            f.close()

    def close(self) -> dict[str, Any]:
        self.flush()
        self.close_files()
        # The index files are small (8 bytes a sequence): their digests let a reader verify
        # them in full each time it opens the dataset.
        digests = {s: file_digest(self.folder / f"{self.name}.{s}") for s in INDEXES}
        return {"name": self.name, "documents": self.documents, "sequences": self.sequences,
                "tokens": self.tokens, "sha256": digests}


class Writer:
    """Streams documents into a new dataset folder; use as a context manager.

    ``append_document(seqs)`` takes one document as a list of token-id sequences (lists or
    arrays); empty sequences are dropped and an empty document is skipped. On leaving the
    ``with`` block normally the folder is completed (``meta.json``) and renamed to ``out``; on
    any exception, Ctrl-C and SIGTERM included, it is deleted (see `tpcli.data.staging`).
    """

    def __init__(self, out: Path, vocab_size: int, meta: dict[str, Any],
                 shard_tokens: int = 100_000_000) -> None:
        self.out = Path(out)
        if self.out.exists():
            raise DataError(
                f"output {self.out} already exists",
                hint="choose another --out or delete it",
            )
        self.dtype = token_dtype(vocab_size)
        self.vocab_size = vocab_size
        self.meta = dict(meta)
        self.shard_tokens = max(1, shard_tokens)
        remove_stale(self.out.parent)
        self.tmp = make_temp(self.out)
        self._shards: list[dict[str, Any]] = []
        try:
            self._shard = _ShardWriter(self.tmp, 0, self.dtype)
        except BaseException as e:  # Ctrl-C too: `__exit__` does not run for a failed __init__
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(e, OSError):
                raise write_error(self.out, e, "creating its first shard") from None
            raise

    def append_document(self, seqs: list[Any]) -> bool:
        """Add one document; False when it had no tokens (and was skipped)."""
        doc = [np.asarray(s) for s in seqs if len(s)]
        if not doc:
            return False
        tokens = np.concatenate(doc) if len(doc) > 1 else doc[0]
        lengths = np.array([len(s) for s in doc], dtype=np.int64)
        return self.append_documents(tokens, lengths, np.array([len(doc)], dtype=np.int64)) > 0

    def append_documents(self, tokens: np.ndarray, seq_lengths: np.ndarray,
                         doc_seqs: np.ndarray) -> int:
        """Add documents given as arrays: (n,) their tokens back to back, (S,) each sequence's
        length, (D,) each document's count of sequences. The dataset is the one
        `append_document` per document writes (empty sequences dropped, documents left with
        none skipped, a shard started before the document that finds it full); returns the
        documents added."""
        seq_lengths = np.asarray(seq_lengths, dtype=np.int64)
        doc_of_seq = np.repeat(np.arange(len(doc_seqs)), doc_seqs)  # (S,)
        keep = seq_lengths > 0
        seq_lengths, doc_of_seq = seq_lengths[keep], doc_of_seq[keep]
        doc_seqs = np.bincount(doc_of_seq, minlength=len(doc_seqs))
        doc_seqs = doc_seqs[doc_seqs > 0]  # (D',) documents with tokens
        if not len(doc_seqs):
            return 0
        tokens = np.asarray(tokens)
        check_token_ids(tokens, self.vocab_size)
        tokens = tokens.astype(self.dtype, copy=False)
        seq_start = np.concatenate([[0], np.cumsum(doc_seqs)])  # (D'+1,) first sequence
        tok_start = np.concatenate([[0], np.cumsum(seq_lengths)])[seq_start]  # (D'+1,)
        first, n = 0, len(doc_seqs)
        try:
            while first < n:
                if self._shard.tokens >= self.shard_tokens:
                    self._shards.append(self._shard.close())
                    self._shard = _ShardWriter(self.tmp, len(self._shards), self.dtype)
                # the documents that start while the shard holds fewer than shard_tokens
                room = self.shard_tokens - self._shard.tokens + tok_start[first]
                end = max(int(np.searchsorted(tok_start[:n], room, side="left")), first + 1)
                s0, s1 = seq_start[first], seq_start[end]
                self._shard.add(seq_lengths[s0:s1], doc_seqs[first:end],
                                tokens[tok_start[first]:tok_start[end]])
                first = end
        except OSError as e:
            raise write_error(self.out, e, "writing a shard") from None
        return n

    @property
    def counts(self) -> dict[str, int]:
        done = self._shards + [{"documents": self._shard.documents,
                                "sequences": self._shard.sequences, "tokens": self._shard.tokens}]
        return {k: sum(s[k] for s in done) for k in ("documents", "sequences", "tokens")}

    def finish(self) -> dict[str, Any]:
        """Complete the dataset, rename it into place and return its meta."""
        try:
            self._shards.append(self._shard.close())
        except OSError as e:
            raise write_error(self.out, e, "completing it") from None
        meta = self._final_meta()
        complete(self.tmp, self.out, meta, META)
        return meta

    def _final_meta(self) -> dict[str, Any]:
        from tpcli import __version__

        return {
            "format": FORMAT,
            "format_version": TOKENS_VERSION,
            **self.meta,
            "dtype": self.dtype.name,
            "vocab_size": self.vocab_size,
            "shards": self._shards,
            "documents": sum(s["documents"] for s in self._shards),
            "sequences": sum(s["sequences"] for s in self._shards),
            "tokens": sum(s["tokens"] for s in self._shards),
            "tp_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def abort(self) -> None:
        self._shard.close_files()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # BaseException: KeyboardInterrupt (Ctrl-C, and SIGTERM as tp's CLI raises it) and
        # SystemExit must not leave a hidden temporary folder behind either.
        if kind is not None:
            self.abort()


# ---------------------------------------------------------------- reading


def read_meta(folder: Path) -> dict[str, Any]:
    """The checked meta.json of a dataset folder (DataError when it is not a readable dataset)."""
    path = Path(folder) / META
    hint = "create it with `tp preprocess RECIPE --corpus FILE --out DIR`"
    if not Path(folder).is_dir():
        raise DataError(f"dataset {folder} does not exist", hint=hint)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{folder} is not a tp dataset: it has no {META}", hint=hint) from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"dataset {folder}: cannot read {META}: {e}", hint=hint) from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{folder} is not a tp dataset ({META} has no format {FORMAT!r})", hint=hint)
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise DataError(
            f"dataset {folder} has format version {version!r}; this tp reads versions up to "
            f"{FORMAT_VERSION}",
            hint="upgrade tp, or re-run `tp preprocess` with this version",
        )
    return meta


@dataclass
class _Shard:
    tokens: np.ndarray  # (n_tokens,) memmap
    seqs: np.ndarray  # (n_seqs + 1,) int64 memmap
    docs: np.ndarray  # (n_docs + 1,) int64 memmap


class Reader:
    """Memory-maps a dataset: sequence `i` and document `j` (global indexes) are cheap slices.

    Pickles without its maps (they reopen lazily), so DataLoader workers can share it.
    """

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.meta = read_meta(self.folder)
        if self.meta.get("layout", "tokens") != "tokens":
            raise DataError(f"dataset {self.folder} holds arrays ({self.meta.get('layout')}), "
                            "not token sequences",
                            hint="use a recipe whose processor reads it (the one that made it), "
                            "or re-run `tp preprocess` with this recipe")
        dtype = self.meta.get("dtype", "uint16")
        if dtype not in ("uint16", "uint32"):
            raise DataError(f"dataset {self.folder}: {META} gives token dtype {dtype!r}, "
                            "not uint16 or uint32", hint=rebuild_hint(self.folder))
        self.dtype = np.dtype(dtype)
        self._infos: list[dict[str, Any]] = list(self.meta.get("shards") or [])
        if not self._infos:
            raise DataError(f"dataset {self.folder} lists no shards in {META}")
        self.vocab_size = int(self.meta.get("vocab_size") or 0)
        # an id of the dtype may fall outside the vocabulary: check every read (a vectorized max)
        self._check_vocab = 0 < self.vocab_size <= np.iinfo(self.dtype).max
        self._check_files()
        seq_counts = [int(s["sequences"]) for s in self._infos]
        doc_counts = [int(s["documents"]) for s in self._infos]
        self._seq_start = np.concatenate([[0], np.cumsum(seq_counts)]).astype(np.int64)
        self._doc_start = np.concatenate([[0], np.cumsum(doc_counts)]).astype(np.int64)
        self._shards: list[_Shard] | None = None

    def _check_files(self) -> None:
        """Sizes of every file and the index files in full: cheap, and it turns a damaged
        dataset into an error before training rather than a run on garbage."""
        for k, info in enumerate(self._infos):
            check_shard_info(self.folder, k, info, shard_name(k))
            check_sizes(self.folder, info, self.dtype.itemsize)
            check_index(self.folder, info)

    def _open(self) -> list[_Shard]:
        if self._shards is None:
            shards = []
            for info in self._infos:
                base = self.folder / info["name"]

                def mm(suffix: str, dtype: np.dtype, n: int) -> np.ndarray:
                    # np.memmap refuses empty files; an empty shard is a valid empty array.
                    if n == 0:
                        return np.zeros(0, dtype)
                    return np.memmap(f"{base}.{suffix}", dtype=dtype, mode="r", shape=(n,))

                shards.append(_Shard(
                    mm("tokens.bin", self.dtype, int(info["tokens"])),
                    mm("seqs.idx", np.dtype(np.int64), int(info["sequences"]) + 1),
                    mm("docs.idx", np.dtype(np.int64), int(info["documents"]) + 1),
                ))
            self._shards = shards
        return self._shards

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_shards"] = None  # maps reopen in the receiving process instead of being copied
        return state

    @property
    def n_documents(self) -> int:
        return int(self._doc_start[-1])

    @property
    def n_sequences(self) -> int:
        return int(self._seq_start[-1])

    @property
    def n_tokens(self) -> int:
        return int(self.meta["tokens"])

    def _locate(self, starts: np.ndarray, i: int, n: int, what: str) -> tuple[int, int]:
        if not 0 <= i < n:
            raise IndexError(f"{what} {i} out of range (0..{n - 1})")
        shard = int(np.searchsorted(starts, i, side="right")) - 1
        return shard, i - int(starts[shard])

    def _ids(self, shard: int, tokens: np.ndarray) -> np.ndarray:
        """`tokens` read from `shard`, once checked to be inside the vocabulary."""
        if self._check_vocab:
            check_ids(self.folder, self._infos[shard]["name"], tokens, self.vocab_size)
        return tokens

    def sequence(self, i: int) -> np.ndarray:
        """Token ids of sequence `i` (a read-only view into the map)."""
        shard, local = self._locate(self._seq_start, i, self.n_sequences, "sequence")
        s = self._open()[shard]
        return self._ids(shard, s.tokens[s.seqs[local]:s.seqs[local + 1]])

    def sequences(self, first: int, end: int) -> np.ndarray:
        """Token ids of sequences `first..end-1` back to back (one view within a shard)."""
        if end <= first:
            return np.zeros(0, self.dtype)
        shard, local = self._locate(self._seq_start, first, self.n_sequences, "sequence")
        if end <= self._seq_start[shard + 1]:
            s = self._open()[shard]
            return self._ids(shard, s.tokens[s.seqs[local]:s.seqs[local + end - first]])
        return np.concatenate([self.sequence(i) for i in range(first, end)])

    def tokens_at(self, shard: int, positions: np.ndarray) -> np.ndarray:
        """Token ids at `positions` (any shape) of `shard`'s tokens, checked like any read."""
        return self._ids(shard, self._open()[shard].tokens[positions])

    def document_range(self, j: int) -> tuple[int, int]:
        """Global indexes `(first, end)` of document `j`'s sequences."""
        shard, local = self._locate(self._doc_start, j, self.n_documents, "document")
        docs = self._open()[shard].docs
        base = int(self._seq_start[shard])
        return base + int(docs[local]), base + int(docs[local + 1])

    def document(self, j: int) -> list[np.ndarray]:
        first, end = self.document_range(j)
        return [self.sequence(i) for i in range(first, end)]

    def sequence_lengths(self) -> np.ndarray:
        """(n_sequences,) int64: the length of every sequence (reads only the offsets)."""
        parts = [np.diff(np.asarray(s.seqs)) for s in self._open()]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def document_bounds(self) -> np.ndarray:
        """(n_documents + 1,) int64: global sequence index where each document starts, then the
        total number of sequences."""
        parts = [np.asarray(s.docs[:-1]) + self._seq_start[k] for k, s in enumerate(self._open())]
        return np.concatenate(parts + [np.array([self.n_sequences], np.int64)]).astype(np.int64)
