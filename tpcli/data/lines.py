"""A text corpus's lines, decoded from UTF-8 a block of whole lines at a time.

What `tp preprocess` reads: one C call decodes and splits a block of about READ_BYTES, where a
line at a time took several Python steps a line. A line break is `\\n` (a run of `\\r` before it
is dropped too), a UTF-8 byte-order mark at the start is not text, and undecodable bytes are a
DataError naming the line and the byte offset, after the lines before it.
"""

from __future__ import annotations

from typing import IO, Iterator

from tpcli.errors import DataError

READ_BYTES = 1 << 16  # bytes read at a time, completed to the end of their last line


def _read(f: IO[bytes], corpus: str, size: int) -> bytes:
    """`size` bytes of `f` (0: up to and including the next line break); a read failure (a
    corrupt or truncated .gz) is a DataError."""
    try:
        return f.read(size) if size else f.readline()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read corpus {corpus}: {e}",
                        hint="check the file; a compressed corpus may be truncated") from e


def _chunks(f: IO[bytes], corpus: str) -> Iterator[bytes]:
    """The corpus in blocks of about READ_BYTES that end at a line break (or at the end): a line
    longer than a block comes whole, in one block."""
    while True:
        block = _read(f, corpus, READ_BYTES)
        if not block:
            return
        if not block.endswith(b"\n"):
            block += _read(f, corpus, 0)
        yield block


def _decode_line(raw: bytes, number: int, offset: int, corpus: str) -> str:
    """One line's bytes (its break included) as text without the break; undecodable bytes are a
    DataError naming the line `number` and the byte offset (`offset`: where the line starts)."""
    end = len(raw)
    while end and raw[end - 1] in b"\r\n":
        end -= 1
    try:
        return str(memoryview(raw)[:end], "utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"corpus {corpus} is not valid UTF-8: line {number}, byte offset "
            f"{offset + e.start}: {e.reason} (byte 0x{raw[e.start]:02x})",
            hint="re-encode the corpus as UTF-8, e.g. `iconv -f LATIN1 -t UTF-8 in > out`",
        ) from None


def _split(text: str, first: bool) -> list[str]:
    """A block of whole lines as its lines without their breaks (a BOM dropped from the first)."""
    if not text:
        return []
    lines = text.split("\n")  # only \n breaks a line, as in a binary file's lines
    if text.endswith("\n"):
        lines.pop()  # the empty string after the last break
    if "\r" in text:
        lines = [line.rstrip("\r") for line in lines]
    if first and lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]  # a UTF-8 byte-order mark is not text
    return lines


def decoded_lines(f: IO[bytes], corpus: str) -> Iterator[str]:
    """UTF-8 lines without their line break (a run of \\r and \\n); undecodable bytes are
    reported by line and byte offset.

    The corpus is decoded a block of whole lines at a time (`_chunks`), not line by line: one
    C call per block instead of several Python steps a line. A line of many megabytes is one
    block: held as bytes and text, about twice."""
    number = offset = 0  # lines and bytes before the block
    for chunk in _chunks(f, corpus):
        try:
            lines = _split(chunk.decode("utf-8"), number == 0)
        except UnicodeDecodeError as e:
            # the lines before the bad one go on as usual (a bad line further on is reported
            # after their own errors), then the bad line, decoded alone, names the error
            start = chunk.rfind(b"\n", 0, e.start) + 1
            yield from _split(chunk[:start].decode("utf-8"), number == 0)
            end = chunk.find(b"\n", e.start)
            _decode_line(chunk[start:len(chunk) if end < 0 else end + 1],
                         number + chunk.count(b"\n", 0, start) + 1, offset + start, corpus)
            raise  # not reached: the line alone fails to decode as well
        offset += len(chunk)
        number += len(lines)
        del chunk
        yield from lines
