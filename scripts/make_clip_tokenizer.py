"""Build CLIP's byte-level BPE tokenizer (49,408 ids) as the tokenizer.json shipped in
recipes/_tokenizers/clip-bpe-49408.json, from OpenAI's merge list.

OpenAI publishes CLIP's tokenizer as one file, bpe_simple_vocab_16e6.txt.gz (in the openai/CLIP
repository under clip/, and in the `openai-clip` wheel on PyPI), a header line and 262,144
merges of which CLIP uses the first 48,894. Its vocabulary is laid out in a fixed order:

    the 256 byte symbols (GPT-2's byte-to-unicode table: the printable bytes in order, then the
    others mapped above U+0100), the same 256 with the word end `</w>`, one token per merge,
    then <|startoftext|> (49406) and <|endoftext|> (49407, the highest id: CLIP's text tower
    pools there)

This script writes that vocab.json + merges.txt, loads them with transformers' CLIPTokenizer
(CLIP's normalisation: NFC, whitespace folded, lower case; its word split; `</w>` word ends) and
saves the result as a compact tokenizer.json. The output is the tokenizer.json of Hugging Face's
openai/clip-vit-* repositories: "a photo of a cat" -> 49406 320 1125 539 320 2368 49407.

    python scripts/make_clip_tokenizer.py path/to/bpe_simple_vocab_16e6.txt.gz [OUT.json]
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
from pathlib import Path

MERGES = 49152 - 256 - 2  # CLIP's SimpleTokenizer keeps this many merges
SPECIALS = ["<|startoftext|>", "<|endoftext|>"]
DEFAULT_OUT = (Path(__file__).resolve().parent.parent / "recipes" / "_tokenizers"
               / "clip-bpe-49408.json")
CHECK = ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407])


def byte_symbols() -> list[str]:
    """GPT-2's and CLIP's 256 byte symbols in vocabulary order: the printable bytes stand for
    themselves, the rest (control characters, space, a few Latin-1 ones) get U+0100 upwards."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def vocabulary(merges: list[str]) -> list[str]:
    symbols = byte_symbols()
    return [*symbols, *(s + "</w>" for s in symbols), *("".join(m.split()) for m in merges),
            *SPECIALS]


def build(source: Path, out: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import CLIPTokenizer

    lines = gzip.open(source, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:MERGES + 1]  # line 0 is the header
    vocab = vocabulary(merges)
    if len(vocab) != 49408 or len(set(vocab)) != len(vocab):
        raise SystemExit(f"{source}: {len(vocab)} tokens ({len(set(vocab))} distinct), not "
                         "49,408: is it CLIP's bpe_simple_vocab_16e6.txt.gz?")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)},
                                                      ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                           encoding="utf-8")
        tok = CLIPTokenizer.from_pretrained(str(folder))
        tok.save_pretrained(str(folder / "saved"))
        backend = Tokenizer.from_file(str(folder / "saved" / "tokenizer.json"))
    text, want = CHECK
    got = backend.encode(text).ids
    if got != want:
        raise SystemExit(f"{text!r} -> {got}, CLIP's is {want}")
    out.parent.mkdir(parents=True, exist_ok=True)
    backend.save(str(out), pretty=False)
    print(f"wrote {out} ({out.stat().st_size:,} bytes, {backend.get_vocab_size()} ids)")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    build(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else DEFAULT_OUT)
