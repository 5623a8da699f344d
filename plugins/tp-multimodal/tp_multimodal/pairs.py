"""Image-text pair corpora: which image goes with which caption.

Three layouts, as the tools people caption images with write them:

- a TSV file (``.tsv``, ``.txt``) of ``text<TAB>path`` lines (TencentPretrain's format). A first
  line ``text<TAB>path`` (or ``caption<TAB>path``) is a header. The path is the part after the
  line's last tab, so a caption may itself hold a tab.
- a JSONL manifest (``.jsonl``): one JSON object a line, the image under ``image`` or
  ``image_path`` and the caption under ``text`` or ``caption`` (the first of each pair that the
  object has); other keys are ignored.
- WebDataset tar shards, as img2dataset writes them (LAION-scale corpora): each sample is the
  run of consecutive members sharing a key (the member name up to the first dot of its file
  name): ``00001.jpg`` + ``00001.txt`` (+ ``00001.json``, ignored). The corpus is one ``.tar``,
  a folder of ``*.tar`` shards (sorted by name), or a pattern of them: a glob
  (``shards/*.tar``) or braces (``shards/{00000..00031}.tar``, ``{train,extra}/*.tar``).

The corpus may live on any fsspec filesystem (``s3://bucket/laion/{00000..00999}.tar``,
``https://...``, ``memory://``): shards are read through it, and a remote TSV's or JSONL's
images are fetched as bytes. Paths in a TSV or JSONL are relative to that file's folder (on the
same filesystem). Pairs are read one at a time
(`read_pairs` is a generator), so a corpus of any size is read in flat memory. Every problem (a
missing image, an empty caption, a line without a tab, a line that is not JSON or lacks a key, a
cut-off shard) is a DataError naming the file and line or member, with the fix.
"""

from __future__ import annotations

import glob
import json
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tpcli.errors import DataError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")
IMAGE_KEYS = ("image", "image_path")  # JSONL: the image file, first found wins
TEXT_KEYS = ("text", "caption")  # JSONL: the caption, first found wins
HEADERS = (["text", "path"], ["caption", "path"])  # a TSV's optional first line
BLOCK = 512  # a tar block: the archive ends with (at least) one of zeros
LAYOUT_HINT = ("give a TSV of `text<TAB>path` lines, a JSONL manifest with `image` and `text` "
               "keys, a WebDataset .tar shard, a folder of .tar shards, or a shard pattern "
               "(shards/{00000..00009}.tar, shards/*.tar)")


@dataclass(frozen=True)
class Pair:
    """One caption and its image: a file on disk, or the encoded bytes of a shard's member."""

    text: str
    image: Path | bytes
    source: str  # "file:line" or "shard.tar:member", for messages


class Files:
    """Where the corpus lives: the local disk (paths as the user spelled them; images handed
    on as paths, read by the decoding processes) or an fsspec filesystem (images fetched here
    as bytes)."""

    def __init__(self, corpus: str) -> None:
        self.local = "://" not in corpus or corpus.startswith("file://")
        self.fs: Any = None
        if not self.local:
            from fsspec.core import url_to_fs

            try:
                self.fs, _ = url_to_fs(corpus)
            except (ImportError, ValueError, OSError) as e:
                raise DataError(f"cannot open image-text corpus {corpus}: {e}",
                                hint=LAYOUT_HINT) from None

    def path(self, corpus: str) -> str:
        """The corpus's path on its filesystem."""
        return corpus.removeprefix("file://") if self.local else self.fs._strip_protocol(corpus)

    def name(self, path: str) -> str:
        """`path` as messages show it (with its protocol)."""
        return path if self.local else self.fs.unstrip_protocol(path)

    def exists(self, path: str) -> bool:
        return Path(path).exists() if self.local else bool(self.fs.exists(path))

    def is_file(self, path: str) -> bool:
        return Path(path).is_file() if self.local else bool(self.fs.isfile(path))

    def is_dir(self, path: str) -> bool:
        return Path(path).is_dir() if self.local else bool(self.fs.isdir(path))

    def listdir(self, path: str) -> list[str]:
        if self.local:
            return [str(p) for p in Path(path).iterdir()]
        return [str(p) for p in self.fs.ls(path, detail=False)]

    def glob(self, pattern: str) -> list[str]:
        return sorted(glob.glob(pattern) if self.local else self.fs.glob(pattern))

    def open(self, path: str) -> IO[bytes]:
        return open(path, "rb") if self.local else self.fs.open(path, "rb")

    def join(self, listing: str, file: str) -> str:
        """`file` relative to `listing`'s folder (or absolute)."""
        return posixpath.join(posixpath.dirname(listing), file)

    def image(self, path: str, where: str, file: str) -> Path | bytes:
        """The image a line names: its path (local), or its bytes (fetched); DataError when
        it is not there."""
        missing = DataError(f"{where}: image {file or '(empty)'} does not exist (looked at "
                            f"{self.name(path)})", hint="paths are relative to the list's "
                            "folder; fix the path or remove the line")
        if not file:
            raise missing
        if self.local:
            if not Path(path).is_file():
                raise missing
            return Path(path)
        try:
            return bytes(self.fs.cat_file(path))
        except (FileNotFoundError, IsADirectoryError):
            raise missing from None
        except OSError as e:
            raise DataError(f"{where}: cannot read image {self.name(path)}: {e}",
                            hint="check the filesystem's credentials and the path") from None


def read_pairs(corpus: str | Path) -> Iterator[Pair]:
    """The pairs of `corpus` in order, in whichever layout it is (see the module docstring)."""
    text = str(corpus)
    files = Files(text)
    path = files.path(text)
    if any(c in path for c in "*?[{"):
        yield from _shards(files, _expand(files, path))
        return
    if not files.exists(path):
        raise DataError(f"image-text corpus {corpus} does not exist", hint=LAYOUT_HINT)
    if files.is_dir(path):
        shards = sorted(p for p in files.listdir(path)
                        if p.lower().endswith(".tar") and files.is_file(p))
        if not shards:
            raise DataError(f"folder {corpus} holds no .tar shards", hint=LAYOUT_HINT)
        yield from _shards(files, shards)
        return
    suffix = posixpath.splitext(path)[1].lower()
    if suffix in (".tsv", ".txt"):
        yield from _tsv(files, path)
    elif suffix == ".jsonl":
        yield from _jsonl(files, path)
    elif suffix == ".tar":
        yield from _shards(files, [path])
    else:
        raise DataError(f"image-text corpus {corpus}: cannot tell its layout from the extension "
                        f"{suffix or '(none)'}", hint=LAYOUT_HINT)


# -- TSV and JSONL ------------------------------------------------------------------------------

def _lines(files: Files, path: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its break) of the non-blank lines of a UTF-8 file."""
    with files.open(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{files.name(path)}:{number} is not valid UTF-8 ({e.reason})",
                                hint="re-encode the file as UTF-8") from None
            if number == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark is not text
            if line.strip():
                yield number, line


def _tsv(files: Files, path: str) -> Iterator[Pair]:
    for number, line in _lines(files, path):
        if "\t" not in line:
            raise DataError(f"{files.name(path)}:{number} is not `text<TAB>path`: it has no tab: "
                            f"{line[:80]!r}", hint="write one pair a line: the caption, a tab, "
                            "the image's path (relative to the TSV's folder)")
        text, file = (p.strip() for p in line.rsplit("\t", 1))
        if number == 1 and [text.lower(), file.lower()] in HEADERS:
            continue
        yield _pair(files, text, file, path, f"{files.name(path)}:{number}")


def _jsonl(files: Files, path: str) -> Iterator[Pair]:
    for number, line in _lines(files, path):
        where = f"{files.name(path)}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where} is not JSON: {e.msg} (column {e.colno})",
                            hint='write one JSON object a line: {"image": "a.jpg", '
                            '"text": "a caption"}') from None
        if not isinstance(record, dict):
            raise DataError(f"{where} is a JSON {type(record).__name__}, not an object",
                            hint='write one JSON object a line: {"image": "a.jpg", '
                            '"text": "a caption"}')
        image = _field(record, IMAGE_KEYS, where, "image file")
        text = _field(record, TEXT_KEYS, where, "caption")
        yield _pair(files, text, image, path, where)


def _field(record: dict, keys: tuple[str, ...], where: str, what: str) -> str:
    for key in keys:
        if key in record:
            value = record[key]
            if not isinstance(value, str):
                raise DataError(f"{where}: `{key}` is a JSON {type(value).__name__}, not a "
                                "string", hint=f"give the {what} as a string")
            return value
    names = " or ".join(f"`{k}`" for k in keys)
    raise DataError(f"{where} has no {names} key (it has {', '.join(sorted(record)) or 'none'})",
                    hint=f"name the {what} {names}; accepted keys: image / image_path for the "
                    "image file, text / caption for the caption")


def _pair(files: Files, text: str, file: str, listing: str, where: str) -> Pair:
    text = text.strip()
    if not text:
        raise DataError(f"{where}: the caption is empty", hint="give every image a caption, or "
                        "remove the line")
    file = file.strip()
    return Pair(text, files.image(files.join(listing, file), where, file), where)


# -- WebDataset shards --------------------------------------------------------------------------

def _expand(files: Files, pattern: str) -> list[str]:
    """The shard files of a brace and/or glob pattern, in the pattern's order (each glob's
    matches sorted); DataError when it names none or a file that is not there."""
    found: list[str] = []
    for piece in _braces(pattern):
        if any(c in piece for c in "*?["):
            found += [p for p in files.glob(piece) if files.is_file(p)]
        elif files.is_file(piece):
            found.append(piece)
        else:
            raise DataError(f"shard {files.name(piece)} (of the pattern "
                            f"{files.name(pattern)}) does not exist",
                            hint="check the pattern's range against the shards on disk")
    if not found:
        raise DataError(f"the pattern {files.name(pattern)} matches no shard", hint=LAYOUT_HINT)
    return found


BRACE = re.compile(r"\{([^{}]*)\}")


def _braces(pattern: str) -> list[str]:
    """Brace expansion, as the shell and WebDataset do it: `{a,b}` alternatives and `{0..9}` /
    `{000..123}` numeric ranges (zero-padded to the first bound's width), left to right."""
    m = BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    ranged = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if ranged:
        lo, hi = ranged.groups()
        if int(hi) < int(lo):
            raise DataError(f"the pattern {pattern} has the empty range {{{body}}}",
                            hint="write the range low to high, e.g. {00000..00009}")
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [e for o in options for e in _braces(head + o + tail)]


def _split_name(name: str) -> tuple[str, str]:
    """A member's (key, extension): `dir/00001.jpg` -> (`dir/00001`, `jpg`); WebDataset's rule
    (the extension is everything after the file name's first dot, lower-cased)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _shards(files: Files, paths: list[str]) -> Iterator[Pair]:
    for path in paths:
        yield from _shard(files, path)


def _shard(files: Files, shard: str) -> Iterator[Pair]:
    """The samples of one shard, checked to its end-of-archive block (a cut-off shard is an
    error, wherever it was cut: in a member's data, in a header, or between members)."""
    path = files.name(shard)
    with files.open(shard) as f:
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"shard {path} is not a readable tar archive: {e}",
                            hint="give WebDataset .tar shards (img2dataset's output_format: "
                            "webdataset)") from None
        with tar:
            yield from _samples(tar, f, path)


def _samples(tar: tarfile.TarFile, f: IO[bytes], path: str) -> Iterator[Pair]:
    """The pairs of an open shard: runs of members sharing a key."""
    key, members = None, {}
    try:
        while (info := tar.next()) is not None:
            tar.members.clear()  # tarfile keeps every header; a shard's memory stays flat
            if not info.isfile():
                continue
            k, ext = _split_name(info.name)
            if k != key and key is not None:
                yield from _sample(path, key, members)
                members = {}
            key = k
            if ext == "txt" or ext in IMAGE_EXTENSIONS:
                handle = tar.extractfile(info)
                members[ext] = handle.read() if handle is not None else b""
        f.seek(tar.offset)
        end = f.read(BLOCK)
    except (tarfile.ReadError, EOFError) as e:
        raise _cut(path, str(e)) from None
    except OSError as e:  # a remote filesystem that fails mid-shard
        raise DataError(f"cannot read shard {path}: {e}",
                        hint="check the filesystem and retry") from None
    if len(end) != BLOCK or end.count(0) != BLOCK:  # checked before the last sample is judged
        raise _cut(path, "its end-of-archive block is missing")  # whole
    if key is not None:
        yield from _sample(path, key, members)


def _cut(path: str, detail: str) -> DataError:
    return DataError(f"shard {path} is cut off (truncated): {detail}",
                     hint="re-download or re-write the shard (e.g. re-run img2dataset for it), "
                     "or leave it out of the corpus")


def _sample(path: str, key: str, members: dict[str, bytes]) -> Iterator[Pair]:
    """One WebDataset sample as a pair; a sample with neither an image nor a caption (metadata
    only) yields nothing."""
    image = next((e for e in IMAGE_EXTENSIONS if e in members), None)
    has_text = "txt" in members
    if image is None and not has_text:
        return
    where = f"{path}:{key}"
    if image is None or not has_text:
        missing = "image" if image is None else "caption (.txt)"
        raise DataError(f"{where}: the sample has no {missing}",
                        hint=f"each sample needs {key}.txt and an image ({key}.jpg, .png, "
                        "...); re-write the shard or remove the sample")
    try:
        text = members["txt"].decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise DataError(f"{where}.txt is not valid UTF-8 ({e.reason})",
                        hint="write captions as UTF-8") from None
    if not text:
        raise DataError(f"{where}.txt: the caption is empty",
                        hint="give every image a caption, or remove the sample")
    yield Pair(text, members[image], f"{where}.{image}")
