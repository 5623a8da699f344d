"""The fast paths of `tp preprocess` give what the line-by-line ones gave: the corpus decoded a
block of lines at a time (line breaks, BOM, errors named by line and byte), and documents written
as arrays (`Writer.append_documents`) byte for byte as `append_document` one at a time."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

import tpcli.data.format as fmt
import tpcli.data.lines as text_lines
from tpcli.data.format import Writer
from tpcli.errors import DataError, PluginError


def line_by_line(data: bytes) -> list[str]:
    """The reference: each line of a binary file, trailing \\r and \\n stripped, then decoded."""
    lines = []
    for number, raw in enumerate(io.BytesIO(data), start=1):
        line = raw.rstrip(b"\r\n").decode("utf-8")
        lines.append(line[1:] if number == 1 and line.startswith("\ufeff") else line)
    return lines


CORPUS = ("\ufeffFirst line\r\nsecond\r\r\n\n\n\x01 tab\there\n" + "x" * 300 + "\n\n\u00e9t\u00e9 "
          "\u4e2d\u6587\nlone \r inside\n" * 7 + "end without a break\r").encode()


@pytest.mark.parametrize("block", [1, 5, 64, 1 << 16])
def test_blocks_decode_as_lines(monkeypatch, block):
    """Every block size, down to one byte (each block then completed to its line's end),
    gives the lines a line-by-line read gives: only \\n breaks a line, a BOM is dropped."""
    monkeypatch.setattr(text_lines, "READ_BYTES", block)
    for data in (CORPUS, CORPUS + b"\n", b"", b"\n\n", b"one"):
        assert list(text_lines.decoded_lines(io.BytesIO(data), "c.txt")) == line_by_line(data)


@pytest.mark.parametrize("block", [7, 1 << 16])
def test_bad_utf8_named_by_line_and_byte(monkeypatch, block):
    """A bad byte in the middle of a block: the lines before it come out first, then the error
    names its line and its offset in the file, as the line-by-line read did; a multi-byte
    character cut by the line's end is 'unexpected end of data', not the break's byte."""
    monkeypatch.setattr(text_lines, "READ_BYTES", block)
    head = b"good one\nand two\r\n"
    for bad, reason in ((b"ab\xffcd\n", "invalid start byte"),
                        (b"ab\xe2\x82\r\n", "unexpected end of data")):
        got: list[str] = []
        with pytest.raises(DataError) as info:
            for line in text_lines.decoded_lines(io.BytesIO(head + bad + b"after\n"), "c.txt"):
                got.append(line)
        assert got == ["good one", "and two"]
        assert info.value.message == (f"corpus c.txt is not valid UTF-8: line 3, byte offset "
                                      f"{len(head) + 2}: {reason} (byte 0x{bad[2]:02x})")


def write_each(out: Path, docs: list[list[list[int]]], **kw) -> Path:
    with Writer(out, 1000, {"corpus": "test"}, **kw) as w:
        for d in docs:
            w.append_document(d)
        w.finish()
    return out


def write_arrays(out: Path, docs: list[list[list[int]]], groups: int, **kw) -> Path:
    with Writer(out, 1000, {"corpus": "test"}, **kw) as w:
        for part in np.array_split(np.arange(len(docs)), groups):
            chosen = [docs[j] for j in part]
            seqs = [s for d in chosen for s in d]
            tokens = np.array([t for s in seqs for t in s], dtype=np.int64)
            w.append_documents(tokens, np.array([len(s) for s in seqs]),
                               np.array([len(d) for d in chosen]))
        w.finish()
    return out


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "meta.json"}


@pytest.mark.parametrize("shard_tokens", [1, 50, 400, 100_000])
def test_append_documents_writes_the_same_bytes(tmp_path, monkeypatch, shard_tokens):
    """Documents given as arrays, in groups of any size: the same shards, split before the same
    documents, the same files, with empty sequences dropped and empty documents skipped."""
    monkeypatch.setattr(fmt, "FLUSH_TOKENS", 64)
    rng = np.random.default_rng(0)
    docs = [[rng.integers(0, 1000, rng.integers(0, 30)).tolist()
             for _ in range(rng.integers(0, 6))] for _ in range(200)]
    docs[3] = [[], []]  # a document of empty lines
    one = write_each(tmp_path / "one", docs, shard_tokens=shard_tokens)
    for groups in (1, 7, 200):
        many = write_arrays(tmp_path / f"g{groups}", docs, groups, shard_tokens=shard_tokens)
        assert files(many) == files(one), groups
        assert fmt.read_meta(many)["shards"] == fmt.read_meta(one)["shards"]


def test_append_documents_refuses_ids_outside_the_vocabulary(tmp_path):
    with Writer(tmp_path / "ds", 1000, {}) as w:
        with pytest.raises(PluginError, match="produced id 1000 .* outside its vocabulary of 1000"):
            w.append_documents(np.array([1, 1000]), np.array([2]), np.array([1]))
