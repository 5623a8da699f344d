"""`tp preprocess`: stream a text corpus through the recipe's tokenizer into a dataset folder.

The corpus (a local path or any fsspec URL; `.gz`, `.bz2`, ... are decompressed by extension) is
read a block of lines at a time (`tpcli.data.lines`) in the processor's `corpus_format`,
tokenized in large batches (the `tokenizers` library spreads a batch over all cores) and streamed
into `tpcli.data.format.Writer`, so memory stays flat however large the corpus. Every failure
leaves nothing behind.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from bisect import bisect_left
from itertools import accumulate, chain
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, NamedTuple

import numpy as np

from tpcli.data import build_processor, build_tokenizer
from tpcli.data.format import Writer, check_token_ids
from tpcli.data.lines import decoded_lines
from tpcli.data.staging import remove_own
from tpcli.errors import DataError, PluginError, TpError
from tpcli.plugins.requests import PreprocessRequest

BATCH_LINES = 8192  # lines per encode_batch call: large enough to keep every core busy
BATCH_CHARS = 1_000_000  # ...but bounded in characters: the tokenizer needs ~100 bytes a char
MAX_PIECE_CHARS = 1 << 16  # longer lines are tokenized in pieces (see `pieces`)
FORMATS = ("sentences", "documents", "tsv", "records")


CORPUS_HINT = "give a text file path or an fsspec URL (file://, memory://, s3://, ...)"


def check_corpus(corpus: str) -> None:
    """DataError unless the corpus exists and is a file."""
    from fsspec.core import url_to_fs

    hint = CORPUS_HINT
    try:
        fs, path = url_to_fs(corpus)
        exists = fs.exists(path)
        is_dir = exists and fs.isdir(path)
    except (ImportError, ValueError, OSError) as e:
        raise DataError(f"cannot open corpus {corpus}: {e}", hint=hint) from e
    if not exists:
        raise DataError(f"corpus {corpus} not found", hint=hint)
    if is_dir:
        raise DataError(f"corpus {corpus} is a folder, not a text file", hint=hint)


@contextmanager
def open_corpus(corpus: str) -> Iterator[IO[bytes]]:
    """The corpus as a binary stream, decompressed by extension (.gz, .bz2, .xz, ...)."""
    import fsspec

    hint = CORPUS_HINT
    check_corpus(corpus)
    try:
        opened = fsspec.open(corpus, "rb", compression="infer").open()
    except (OSError, ValueError) as e:
        raise DataError(f"cannot open corpus {corpus}: {e}", hint=hint) from e
    try:
        yield opened
    finally:
        opened.close()


def tsv_fields(line: str, number: int) -> list[str]:
    """`label<TAB>text` or `label<TAB>text_a<TAB>text_b` -> its stripped fields (DataError
    naming the line otherwise)."""
    fields = [f.strip() for f in line.split("\t")]
    if len(fields) not in (2, 3) or not all(fields):
        raise DataError(
            f"corpus line {number} is not `label<TAB>text` or `label<TAB>text_a<TAB>text_b`: "
            f"it has {len(fields)} tab-separated field(s){'' if all(fields) else ', some empty'}: "
            f"{line[:80]!r}",
            hint="write one example per line: the label, a tab, the text (a tab and a second "
            "text for pairs)",
        )
    return fields


def documents(lines: Iterable[str], corpus_format: str) -> Iterator[list[str]]:
    """Documents as lists of lines: `sentences` ends a document at a blank line, `documents` is
    one document per (non-blank) line, `tsv` one document per (non-blank) line whose sequences
    are its tab-separated fields, the label first."""
    # `line and not line.isspace()`: what `line.strip()` is true for, without a copy of the line
    if corpus_format == "documents":
        for line in lines:
            if line and not line.isspace():
                yield [line]
        return
    if corpus_format == "tsv":
        for number, line in enumerate(lines, start=1):
            if line and not line.isspace():
                yield tsv_fields(line, number)
        return
    doc: list[str] = []
    for line in lines:
        if line and not line.isspace():
            doc.append(line)
        elif doc:
            yield doc
            doc = []
    if doc:
        yield doc


def pieces(text: str, limit: int) -> Iterator[str]:
    """`text` in pieces of at most `limit` characters, each cut just before a space that starts a
    word, so the next piece begins with ` word` as the word stood in the line. Tokenizers split
    words at spaces (WordPiece, byte-level BPE's `Ġword`, SentencePiece's `▁word`), so the pieces'
    ids, back to back, are the line's. A stretch of `limit` characters without a space (CJK text,
    base64) is cut where it must: there, and only there, a token may differ from tokenizing the
    line whole (one boundary in 64k characters)."""
    start, n = 0, len(text)
    while n - start > limit:
        end = start + limit
        cut = text.rfind(" ", start + 1, end)
        while cut > start and text[cut + 1] == " ":  # in a run of spaces: cut before its last
            cut = text.rfind(" ", start + 1, cut)
        cut = cut if cut > start else end
        yield text[start:cut]
        start = cut
    yield text[start:]


Piece = tuple[str, bool, bool]  # text, ends its sequence (line), ends its document


def split_pieces(docs: Iterable[list[str]], limit: int | None = None) -> Iterator[Piece]:
    """The documents' lines as pieces of at most `limit` characters (MAX_PIECE_CHARS): the
    tokenizer's working memory (offsets, alignments: ~100 bytes a character) then stays bounded
    however long a line is."""
    limit = limit or MAX_PIECE_CHARS
    for doc in docs:
        for i, line in enumerate(doc):
            ends_doc = i == len(doc) - 1
            if len(line) <= limit:
                yield line, True, ends_doc
                continue
            parts = pieces(line, limit)
            part = next(parts)
            for following in parts:
                yield part, False, False
                part = following
            yield part, True, ends_doc


class Batch(NamedTuple):
    """Pieces to encode in one call, with where sequences (lines) and documents end."""

    texts: list[str]
    ends_seq: np.ndarray  # (P,) bool: the piece ends its sequence
    ends_doc: np.ndarray  # (P,) bool: the piece ends its document (and its sequence)


def batches(docs: Iterable[list[str]], limit: int | None = None) -> Iterator[Batch]:
    """The documents' lines, those over `limit` (MAX_PIECE_CHARS) characters in pieces
    (`split_pieces`), in batches that close at the piece that brings them to BATCH_LINES pieces
    or BATCH_CHARS characters. A document's whole lines are added a run at a time with list
    operations (the run's end found by bisection), not a Python step a line."""
    limit = limit or MAX_PIECE_CHARS
    texts: list[str] = []
    ends_seq: list[bool] = []
    ends_doc: list[bool] = []
    chars = 0
    for doc in docs:
        sizes = list(map(len, doc))
        if not sizes:
            continue
        if max(sizes) > limit:  # a long line: piece by piece
            for text, seq_end, doc_end in split_pieces([doc], limit):
                texts.append(text)
                ends_seq.append(seq_end)
                ends_doc.append(doc_end)
                chars += len(text)
                if len(texts) >= BATCH_LINES or chars >= BATCH_CHARS:
                    yield _batch(texts, ends_seq, ends_doc)
                    texts, ends_seq, ends_doc, chars = [], [], [], 0
            continue
        start = 0
        while start < len(doc):
            room = BATCH_LINES - len(texts)  # >= 1: a full batch is sent at once
            total = list(accumulate(sizes[start:start + room], initial=chars))[1:]
            n = min(bisect_left(total, BATCH_CHARS) + 1, len(total))  # lines up to the full one
            texts += doc[start:start + n]
            ends_seq += [True] * n
            ends_doc += [False] * n
            start += n
            ends_doc[-1] = start == len(doc)
            chars = total[n - 1]
            if len(texts) >= BATCH_LINES or chars >= BATCH_CHARS:
                yield _batch(texts, ends_seq, ends_doc)
                texts, ends_seq, ends_doc, chars = [], [], [], 0
    if texts:
        yield _batch(texts, ends_seq, ends_doc)


def _batch(texts: list[str], ends_seq: list[bool], ends_doc: list[bool]) -> Batch:
    return Batch(texts, np.array(ends_seq, dtype=bool), np.array(ends_doc, dtype=bool))


def encode(tokenizer: Any, texts: list[str], vocab_size: int,
           dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The ids of `texts` back to back, as `dtype`, and each text's count of ids.

    Run in the tokenizer's thread, so the writing thread gets compact arrays. A tokenizer may
    offer `encode_batch_arrays(texts) -> (ids, counts)` (tp-text's do): its ids go straight into
    one array with no list of Python ints for the batch; else `encode_batch`'s lists are
    flattened."""
    as_arrays = getattr(tokenizer, "encode_batch_arrays", None)  # optional: (ids, counts)
    if as_arrays is not None:
        flat, lengths = as_arrays(texts)
    else:
        ids = tokenizer.encode_batch(texts)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        del ids
    check_token_ids(flat, vocab_size)
    return flat.astype(dtype), lengths


class Assembler:
    """Puts encoded batches back together into sequences and whole documents for the writer.

    Each batch is handled with array operations, not a step per line: the ids of its pieces
    come back to back, so a sequence's length is the sum of its pieces' and a document's tokens
    are one slice. A document still in progress at the batch's end is held as compact arrays
    (2-4 bytes a token), so a one-line document of millions of tokens costs about its text's
    size."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.tokens: list[np.ndarray] = []  # ids of the document in progress
        self.seqs: list[np.ndarray] = []  # lengths of its finished sequences
        self.open = 0  # ids of its sequence in progress (a long line's pieces so far)

    def add(self, flat: np.ndarray, lengths: np.ndarray, batch: Batch) -> None:
        """One encoded batch: `flat` the ids of its pieces back to back, `lengths` (P,) each
        piece's count of them."""
        ends = np.cumsum(lengths)  # (P,) where each piece's ids end in `flat`
        seq_last = np.flatnonzero(batch.ends_seq)  # (S,) the last piece of each sequence
        seq_lens = np.diff(ends[seq_last], prepend=0)  # (S,) ids of each sequence
        if seq_last.size:
            seq_lens[0] += self.open
            self.open = int(ends[-1] - ends[seq_last[-1]]) if ends.size else 0
        else:
            self.open += int(ends[-1]) if ends.size else 0
        doc_last = np.flatnonzero(batch.ends_doc)  # (D,) the last piece of each document
        if doc_last.size:
            n_seqs = np.cumsum(batch.ends_seq)[doc_last]  # (D,) sequences up to each doc's end
            doc_seqs = np.diff(n_seqs, prepend=0)
            doc_seqs[0] += sum(len(s) for s in self.seqs)
            n_tokens, n_seq = int(ends[doc_last[-1]]), int(n_seqs[-1])
            self.writer.append_documents(_joined(self.tokens, flat[:n_tokens]),
                                         _joined(self.seqs, seq_lens[:n_seq]), doc_seqs)
            self.tokens, self.seqs = [], []
            flat, seq_lens = flat[n_tokens:], seq_lens[n_seq:]
        if flat.size:
            self.tokens.append(flat)
        if seq_lens.size:
            self.seqs.append(seq_lens)


def _joined(parts: list[np.ndarray], last: np.ndarray) -> np.ndarray:
    return np.concatenate([*parts, last]) if parts else last


def _meta(request: PreprocessRequest, recipe: Any, tokenizer: Any, fmt: str) -> dict[str, Any]:
    def dump(options: Any) -> dict[str, Any]:
        return options.model_dump(mode="json") if options is not None else {}

    return {
        "tokenizer": {"name": recipe.tokenizer.name, "options": dump(recipe.tokenizer.options),
                      "fingerprint": tokenizer.fingerprint(), "special_ids": tokenizer.special_ids}
        if tokenizer is not None else {"name": None, "fingerprint": None},
        "processor": {"name": recipe.processor.name, "options": dump(recipe.processor.options),
                      "corpus_format": fmt},
        "recipe": recipe.name,
        "corpus": str(request.corpus),
    }


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    """A live rich progress line on an interactive stderr; a no-op otherwise."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        yield progress


def _tokenize(request: PreprocessRequest, tokenizer: Any, fmt: str,
              meta: dict[str, Any]) -> dict[str, Any]:
    """The pass over the corpus: read, tokenize (in a second thread), write; the dataset's meta."""
    with open_corpus(request.corpus) as f, _progress(sys.stderr.isatty()) as progress, \
            Writer(request.out, tokenizer.vocab_size, meta, request.shard_tokens) as writer:
        task = progress.add_task("tokenizing", total=None) if progress else None
        assembler = Assembler(writer)

        def write(batch: Batch, encoded: Future[tuple[np.ndarray, np.ndarray]]) -> None:
            assembler.add(*encoded.result(), batch)
            if progress is not None:
                c = writer.counts
                progress.update(task, description=f"tokenizing: {c['documents']:,} documents, "
                                f"{c['tokens']:,} tokens")

        # Double buffering: while `tokenizers` encodes batch k (in Rust, without the GIL), this
        # thread writes batch k-1 and reads batch k+1. (Two encoding threads, so that one
        # batch's ids become arrays while the next is encoded, measured slower on two cores.)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending: tuple[Batch, Future[tuple[np.ndarray, np.ndarray]]] | None = None
            for batch in batches(documents(decoded_lines(f, request.corpus), fmt)):
                encoded = pool.submit(encode, tokenizer, batch.texts, writer.vocab_size,
                                      writer.dtype)
                if pending is not None:
                    write(*pending)
                pending = (batch, encoded)
            if pending is not None:
                write(*pending)
        if writer.counts["tokens"] == 0:
            raise DataError(f"corpus {request.corpus} is empty: it holds no tokens",
                            hint="check the file, and that its lines are text")
        return writer.finish()


def _records(request: PreprocessRequest, processor: Any, tokenizer: Any, meta: dict[str, Any],
             setup_seconds: float) -> dict[str, Any]:
    """A processor that reads its corpus itself (images, audio): its `records` stream into an
    array dataset (`tpcli.data.arrays`); what it reports (`contents()`: class names, files
    skipped) goes into meta.json and the summary."""
    from tpcli.data.arrays import ArrayWriter

    start = time.perf_counter()
    records = processor.records(request.corpus, tokenizer, request.workers)
    with ArrayWriter(Path(request.out), processor.fields(), meta) as writer:
        for record in records:
            writer.append(record)
        if writer.examples == 0:
            raise DataError(f"corpus {request.corpus} holds no examples",
                            hint="check the path and the processor's corpus layout "
                            "(`tp modules processor`)")
        contents = processor.contents() if hasattr(processor, "contents") else {}
        writer.meta["contents"] = contents
        done = writer.finish()
    seconds = time.perf_counter() - start
    return {"examples": done["examples"], "shards": len(done["shards"]), "out": str(request.out),
            **{k: v for k, v in contents.items() if not isinstance(v, (list, dict))},
            "seconds": round(seconds, 3), "setup_seconds": round(setup_seconds, 3),
            "examples_per_s": round(done["examples"] / max(seconds, 1e-9), 1)}


def run_preprocess(request: PreprocessRequest) -> dict[str, Any]:
    """Tokenize `request.corpus` into a new dataset folder `request.out`; return a summary."""
    from tpcli.plugins import get_plugins
    from tpcli.recipes import load_recipe

    start = time.perf_counter()
    if request.workers < 0:
        raise TpError(f"--workers {request.workers}: the number of tokenizer threads cannot be "
                      "negative", hint="pass --workers 0 to use every core, or a positive number "
                      "of threads")
    if request.workers > 0:  # read by the tokenizers thread pool when it first starts
        os.environ["RAYON_NUM_THREADS"] = str(request.workers)
    out = Path(request.out)
    # The cheap checks first: a typo in a path should not wait for the recipe's imports.
    if out.exists():
        raise DataError(f"output {out} already exists", hint="choose another --out or delete it")
    plugins = request.plugins or get_plugins()
    recipe = load_recipe(request.recipe, request.overrides, plugins)
    processor = build_processor(recipe, plugins)
    fmt = getattr(processor, "corpus_format", None)
    if fmt not in FORMATS:
        raise PluginError(f"processor {recipe.processor.name!r} has corpus_format {fmt!r}; "
                          f"it must be one of {FORMATS}")
    if fmt != "records":  # a records processor checks its corpus (a folder, a manifest) itself
        check_corpus(request.corpus)
    tokenizer = build_tokenizer(recipe, plugins)
    if tokenizer is None and fmt != "records":
        raise TpError(f"recipe {recipe.name} has no tokenizer, and its processor "
                      f"{recipe.processor.name!r} reads text",
                      hint="name one in data.tokenizer (`tp modules tokenizer`)")
    meta = _meta(request, recipe, tokenizer, fmt)
    setup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    try:
        if fmt == "records":
            return _records(request, processor, tokenizer, meta, setup_seconds)
        done = _tokenize(request, tokenizer, fmt, meta)
    except BaseException:  # Ctrl-C / SIGTERM in any window, even before the Writer owns its folder
        remove_own(out)
        raise
    seconds = time.perf_counter() - start
    return {
        "documents": done["documents"],
        "sequences": done["sequences"],
        "tokens": done["tokens"],
        "shards": len(done["shards"]),
        "out": str(out),
        "seconds": round(seconds, 3),  # the pass over the corpus: read, tokenize, write
        "setup_seconds": round(setup_seconds, 3),  # recipe, plugins and tokenizer loading
        "tokens_per_s": round(done["tokens"] / max(seconds, 1e-9), 1),
    }
