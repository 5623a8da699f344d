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

Paths in a TSV or JSONL are relative to that file's folder. Pairs are read one at a time
(`read_pairs` is a generator), so a corpus of any size is read in flat memory. Every problem (a
missing image, an empty caption, a line without a tab, a line that is not JSON or lacks a key, a
cut-off shard) is a DataError naming the file and line or member, with the fix.
"""

from __future__ import annotations

import glob
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


def read_pairs(corpus: str | Path) -> Iterator[Pair]:
    """The pairs of `corpus` in order, in whichever layout it is (see the module docstring)."""
    text = str(corpus)
    if any(c in text for c in "*?[{"):
        yield from _shards(_expand(text))
        return
    path = Path(corpus)
    if not path.exists():
        raise DataError(f"image-text corpus {corpus} does not exist", hint=LAYOUT_HINT)
    if path.is_dir():
        shards = sorted(p for p in path.iterdir() if p.suffix.lower() == ".tar" and p.is_file())
        if not shards:
            raise DataError(f"folder {path} holds no .tar shards", hint=LAYOUT_HINT)
        yield from _shards(shards)
        return
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".txt"):
        yield from _tsv(path)
    elif suffix == ".jsonl":
        yield from _jsonl(path)
    elif suffix == ".tar":
        yield from _shards([path])
    else:
        raise DataError(f"image-text corpus {corpus}: cannot tell its layout from the extension "
                        f"{suffix or '(none)'}", hint=LAYOUT_HINT)


# -- TSV and JSONL ------------------------------------------------------------------------------

def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its break) of the non-blank lines of a UTF-8 file."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{number} is not valid UTF-8 ({e.reason})",
                                hint="re-encode the file as UTF-8") from None
            if number == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark is not text
            if line.strip():
                yield number, line


def _tsv(path: Path) -> Iterator[Pair]:
    for number, line in _lines(path):
        if "\t" not in line:
            raise DataError(f"{path}:{number} is not `text<TAB>path`: it has no tab: "
                            f"{line[:80]!r}", hint="write one pair a line: the caption, a tab, "
                            "the image's path (relative to the TSV's folder)")
        text, file = (p.strip() for p in line.rsplit("\t", 1))
        if number == 1 and [text.lower(), file.lower()] in HEADERS:
            continue
        yield _pair(text, file, path, f"{path}:{number}")


def _jsonl(path: Path) -> Iterator[Pair]:
    for number, line in _lines(path):
        where = f"{path}:{number}"
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
        yield _pair(text, image, path, where)


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


def _pair(text: str, file: str, listing: Path, where: str) -> Pair:
    text = text.strip()
    if not text:
        raise DataError(f"{where}: the caption is empty", hint="give every image a caption, or "
                        "remove the line")
    image = listing.parent / file.strip()
    if not file.strip() or not image.is_file():
        raise DataError(f"{where}: image {file.strip() or '(empty)'} does not exist (looked at "
                        f"{image})", hint="paths are relative to the list's folder; fix the path "
                        "or remove the line")
    return Pair(text, image, where)


# -- WebDataset shards --------------------------------------------------------------------------

def _expand(pattern: str) -> list[Path]:
    """The shard files of a brace and/or glob pattern, in the pattern's order (each glob's
    matches sorted); DataError when it names none or a file that is not there."""
    found: list[Path] = []
    for piece in _braces(pattern):
        if any(c in piece for c in "*?["):
            found += [Path(p) for p in sorted(glob.glob(piece)) if Path(p).is_file()]
        elif Path(piece).is_file():
            found.append(Path(piece))
        else:
            raise DataError(f"shard {piece} (of the pattern {pattern}) does not exist",
                            hint="check the pattern's range against the shards on disk")
    if not found:
        raise DataError(f"the pattern {pattern} matches no shard", hint=LAYOUT_HINT)
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


def _shards(paths: list[Path]) -> Iterator[Pair]:
    for path in paths:
        yield from _shard(path)


def _shard(path: Path) -> Iterator[Pair]:
    """The samples of one shard, checked to its end-of-archive block (a cut-off shard is an
    error, wherever it was cut: in a member's data, in a header, or between members)."""
    try:
        tar = tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"shard {path} is not a readable tar archive: {e}",
                        hint="give WebDataset .tar shards (img2dataset's output_format: "
                        "webdataset)") from None
    with tar:
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
            tar.fileobj.seek(tar.offset)
            end = tar.fileobj.read(BLOCK)
        except (tarfile.ReadError, EOFError) as e:
            raise _cut(path, str(e)) from None
        if len(end) != BLOCK or end.count(0) != BLOCK:  # checked before the last sample is
            raise _cut(path, "its end-of-archive block is missing")  # judged whole
        if key is not None:
            yield from _sample(path, key, members)


def _cut(path: Path, detail: str) -> DataError:
    return DataError(f"shard {path} is cut off (truncated): {detail}",
                     hint="re-download or re-write the shard (e.g. re-run img2dataset for it), "
                     "or leave it out of the corpus")


def _sample(path: Path, key: str, members: dict[str, bytes]) -> Iterator[Pair]:
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
