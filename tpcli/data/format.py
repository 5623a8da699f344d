"""tp's dataset format: sharded, memory-mapped token files, versioned by `meta.json`.

A dataset folder holds, per shard ``shard-NNNNN``:

- ``.tokens.bin``: every token id of the shard, back to back (uint16 when the vocabulary fits,
  else uint32);
- ``.seqs.idx``: int64 offsets into the tokens, one more than the sequences (sentence or line)
  so sequence ``i`` is ``tokens[seqs[i]:seqs[i+1]]``;
- ``.docs.idx``: int64 offsets into the sequences, one more than the documents.

and one ``meta.json`` (format version, tokenizer and processor that made it, counts). Offsets are
local to their shard and a document never spans two shards. Datasets are written by `Writer`
into a temporary folder next to the target and renamed into place only when complete, so a
failed run leaves nothing half-written.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from tpcli.errors import DataError

FORMAT = "tp-dataset"
FORMAT_VERSION = 1
META = "meta.json"
FLUSH_TOKENS = 1 << 20  # buffered tokens before a write: memory stays flat, writes stay large


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class _ShardWriter:
    """Appends to one shard's three files; holds at most ~FLUSH_TOKENS tokens in memory."""

    def __init__(self, folder: Path, index: int, dtype: np.dtype) -> None:
        self.name = shard_name(index)
        self.dtype = dtype
        self._tok = open(folder / f"{self.name}.tokens.bin", "wb")
        self._seq = open(folder / f"{self.name}.seqs.idx", "wb")
        self._doc = open(folder / f"{self.name}.docs.idx", "wb")
        self._pending: list[np.ndarray] = []  # compact arrays, not Python ints (28 bytes each)
        self._pending_tokens = 0
        self._seq_ends: list[int] = []
        self._doc_ends: list[int] = []
        self.tokens = self.sequences = self.documents = 0
        np.zeros(1, np.int64).tofile(self._seq)  # the leading 0 offset of both indexes
        np.zeros(1, np.int64).tofile(self._doc)

    def add(self, doc: list[list[int]]) -> None:
        n = 0
        for seq in doc:
            n += len(seq)
            self._seq_ends.append(self.tokens + n)
        self._pending.append(np.fromiter(itertools.chain.from_iterable(doc), self.dtype, n))
        self._pending_tokens += n
        self.tokens += n
        self.sequences += len(doc)
        self.documents += 1
        self._doc_ends.append(self.sequences)
        if self._pending_tokens >= FLUSH_TOKENS:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            np.concatenate(self._pending).tofile(self._tok)
        np.asarray(self._seq_ends, dtype=np.int64).tofile(self._seq)
        np.asarray(self._doc_ends, dtype=np.int64).tofile(self._doc)
        self._pending, self._pending_tokens, self._seq_ends, self._doc_ends = [], 0, [], []

    def close(self) -> dict[str, Any]:
        self.flush()
        for f in (self._tok, self._seq, self._doc):
            f.close()
        return {"name": self.name, "documents": self.documents, "sequences": self.sequences,
                "tokens": self.tokens}


class Writer:
    """Streams documents into a new dataset folder; use as a context manager.

    ``append_document(seqs)`` takes one document as a list of token-id sequences; empty sequences
    are dropped and an empty document is skipped. On leaving the ``with`` block normally the
    folder is completed (``meta.json``) and renamed to ``out``; on an exception it is deleted.
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
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)
        self._shards: list[dict[str, Any]] = []
        self._shard = _ShardWriter(self.tmp, 0, self.dtype)

    def append_document(self, seqs: list[list[int]]) -> bool:
        """Add one document; False when it had no tokens (and was skipped)."""
        doc = [s for s in seqs if len(s)]
        if not doc:
            return False
        if self._shard.tokens >= self.shard_tokens:
            self._shards.append(self._shard.close())
            self._shard = _ShardWriter(self.tmp, len(self._shards), self.dtype)
        self._shard.add(doc)
        return True

    @property
    def counts(self) -> dict[str, int]:
        done = self._shards + [{"documents": self._shard.documents,
                                "sequences": self._shard.sequences, "tokens": self._shard.tokens}]
        return {k: sum(s[k] for s in done) for k in ("documents", "sequences", "tokens")}

    def finish(self) -> dict[str, Any]:
        """Complete the dataset, rename it into place and return its meta."""
        from tpcli import __version__

        self._shards.append(self._shard.close())
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
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
        (self.tmp / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if self.out.exists():
            raise DataError(f"output {self.out} appeared while writing",
                            hint="choose another --out or delete it")
        os.rename(self.tmp, self.out)
        return meta

    def abort(self) -> None:
        for f in (self._shard._tok, self._shard._seq, self._shard._doc):
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
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
        self.dtype = np.dtype(self.meta.get("dtype", "uint16"))
        self._infos: list[dict[str, Any]] = list(self.meta.get("shards") or [])
        if not self._infos:
            raise DataError(f"dataset {self.folder} lists no shards in {META}")
        self._check_files()
        seq_counts = [int(s["sequences"]) for s in self._infos]
        doc_counts = [int(s["documents"]) for s in self._infos]
        self._seq_start = np.concatenate([[0], np.cumsum(seq_counts)]).astype(np.int64)
        self._doc_start = np.concatenate([[0], np.cumsum(doc_counts)]).astype(np.int64)
        self._shards: list[_Shard] | None = None

    def _check_files(self) -> None:
        for info in self._infos:
            sizes = {
                "tokens.bin": int(info["tokens"]) * self.dtype.itemsize,
                "seqs.idx": (int(info["sequences"]) + 1) * 8,
                "docs.idx": (int(info["documents"]) + 1) * 8,
            }
            for suffix, size in sizes.items():
                path = self.folder / f"{info['name']}.{suffix}"
                if not path.is_file():
                    raise DataError(f"dataset {self.folder} is missing {path.name}",
                                    hint="re-run `tp preprocess` to rebuild it")
                if path.stat().st_size != size:
                    raise DataError(
                        f"dataset {self.folder}: {path.name} has {path.stat().st_size} bytes, "
                        f"{META} says {size} (truncated or corrupt)",
                        hint="re-run `tp preprocess` to rebuild it",
                    )

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

    def sequence(self, i: int) -> np.ndarray:
        """Token ids of sequence `i` (a read-only view into the map)."""
        shard, local = self._locate(self._seq_start, i, self.n_sequences, "sequence")
        s = self._open()[shard]
        return s.tokens[s.seqs[local]:s.seqs[local + 1]]

    def sequences(self, first: int, end: int) -> np.ndarray:
        """Token ids of sequences `first..end-1` back to back (one view within a shard)."""
        if end <= first:
            return np.zeros(0, self.dtype)
        shard, local = self._locate(self._seq_start, first, self.n_sequences, "sequence")
        if end <= self._seq_start[shard + 1]:
            s = self._open()[shard]
            return s.tokens[s.seqs[local]:s.seqs[local + end - first]]
        return np.concatenate([self.sequence(i) for i in range(first, end)])

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
