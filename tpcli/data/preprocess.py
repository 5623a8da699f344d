"""`tp preprocess`: stream a text corpus through the recipe's tokenizer into a dataset folder.

The corpus (a local path or any fsspec URL; `.gz`, `.bz2`, ... are decompressed by extension) is
read line by line in the processor's `corpus_format`, tokenized in large batches (the `tokenizers`
library spreads a batch over all cores) and streamed into `tpcli.data.format.Writer`, so memory
stays flat however large the corpus. Every failure leaves nothing behind.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import numpy as np

from tpcli.data import build_processor, build_tokenizer
from tpcli.data.format import Writer
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


def _raw_lines(f: IO[bytes], corpus: str) -> Iterator[bytes]:
    """The lines of `f`; a read failure (a corrupt or truncated .gz) is a DataError."""
    it = iter(f)
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except (OSError, EOFError) as e:
            raise DataError(f"cannot read corpus {corpus}: {e}",
                            hint="check the file; a compressed corpus may be truncated") from e


def decoded_lines(f: IO[bytes], corpus: str) -> Iterator[str]:
    """UTF-8 lines without their line break; undecodable bytes are reported by line and offset.

    A line is decoded straight from a view of its bytes without the break, and the bytes are
    dropped before it is handed on: a line of many megabytes is held about once, not three
    times (bytes, decoded, stripped)."""
    offset = 0
    for number, raw in enumerate(_raw_lines(f, corpus), start=1):
        size = end = len(raw)
        while end and raw[end - 1] in b"\r\n":
            end -= 1
        try:
            line = str(memoryview(raw)[:end], "utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"corpus {corpus} is not valid UTF-8: line {number}, byte offset "
                f"{offset + e.start}: {e.reason} (byte 0x{raw[e.start]:02x})",
                hint="re-encode the corpus as UTF-8, e.g. `iconv -f LATIN1 -t UTF-8 in > out`",
            ) from None
        del raw
        if number == 1 and line.startswith("\ufeff"):
            line = line[1:]  # a UTF-8 byte-order mark is not text
        offset += size
        yield line


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
    if corpus_format == "documents":
        for line in lines:
            if line.strip():
                yield [line]
        return
    if corpus_format == "tsv":
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield tsv_fields(line, number)
        return
    doc: list[str] = []
    for line in lines:
        if line.strip():
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


def batches(items: Iterable[Piece]) -> Iterator[list[Piece]]:
    """Pieces grouped into batches of about BATCH_LINES pieces / BATCH_CHARS characters."""
    batch: list[Piece] = []
    chars = 0
    for item in items:
        batch.append(item)
        chars += len(item[0])
        if len(batch) >= BATCH_LINES or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


class Assembler:
    """Puts encoded pieces back together into sequences and documents for the writer.

    A document in progress is held as compact arrays (2-4 bytes a token), not Python ints
    (~36 bytes each), so a one-line document of millions of tokens costs about its text's size."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.dtype = writer.dtype
        self.doc: list[Any] = []  # finished sequences of the document in progress
        self.seq: list[np.ndarray] = []  # pieces of the sequence in progress

    def add(self, ids: list[int], ends_seq: bool, ends_doc: bool) -> None:
        if ends_seq and not self.seq:
            self.doc.append(ids)  # a whole line: the usual case, no copy
        else:
            self.seq.append(np.asarray(ids, dtype=self.dtype))
            if ends_seq:
                self.doc.append(np.concatenate(self.seq))
                self.seq = []
        if ends_doc:
            self.writer.append_document(self.doc)
            self.doc = []


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

        def write(batch: list[Piece], encoded: Future[list[list[int]]]) -> None:
            for ids, (_, ends_seq, ends_doc) in zip(encoded.result(), batch):
                assembler.add(ids, ends_seq, ends_doc)
            if progress is not None:
                c = writer.counts
                progress.update(task, description=f"tokenizing: {c['documents']:,} documents, "
                                f"{c['tokens']:,} tokens")

        # Double buffering: while `tokenizers` encodes batch k (in Rust, without the GIL), this
        # thread writes batch k-1 and reads batch k+1.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending: tuple[list[Piece], Future[list[list[int]]]] | None = None
            for batch in batches(split_pieces(documents(decoded_lines(f, request.corpus), fmt))):
                encoded = pool.submit(tokenizer.encode_batch, [text for text, _, _ in batch])
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
