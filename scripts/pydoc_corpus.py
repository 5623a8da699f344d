"""Write Python's own documentation (pydoc_data.topics, present in every CPython) as a corpus.

Format: one sentence per line, a blank line between documents (one document per help topic),
which is what the `bert` processor reads. `--documents` writes one document per line instead.

One distinct sentence in ten (chosen by a hash of its text, so the same sentences on every run
and every Python) is held out: it appears nowhere in the corpus, and `--heldout FILE` writes the
held-out sentences there, one a line, for `scripts/demo_eval.py` to test the trained model on.
`--tokenizer FILE` trains a WordPiece vocabulary (BERT's normalisation and pre-tokeniser) on the
corpus alone and writes it as a tokenizer.json: that is how recipes/bert-tiny/tokenizer.json was
made (`--tokenizer recipes/bert-tiny/tokenizer.json`, Python 3.11).

    python scripts/pydoc_corpus.py build/demo/corpus.txt --heldout build/demo/heldout.txt
"""

from __future__ import annotations

import argparse
import os
import re
import zlib
from pathlib import Path
from typing import Any

from pydoc_data.topics import topics

DECOR = re.compile(r"^[*=~^+-]{3,}$")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
HELD_OUT_ONE_IN = 10
VOCAB_SIZE = 4096
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0-4


def sentences(text: str) -> list[str]:
    # drop the reST underlines ("*****", "=====") that frame each topic's title
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not DECOR.match(ln.strip())]
    flat = " ".join(lines)
    return [s.strip() for s in SENTENCE_END.split(flat) if len(s.strip()) > 1]


def is_held_out(sentence: str) -> bool:
    # a hash of the text, not a position: a sentence repeated in several topics (the topics
    # overlap a lot) is held out everywhere or nowhere
    return zlib.crc32(sentence.encode("utf-8")) % HELD_OUT_ONE_IN == 0


def split_topics() -> tuple[list[list[str]], list[str]]:
    """(training documents: each topic's sentences less the held-out ones, in topic order;
    the distinct held-out sentences, in order of first appearance)."""
    docs: list[list[str]] = []
    held: dict[str, None] = {}  # an ordered set
    for name in sorted(topics):
        sents = sentences(topics[name])
        held.update((s, None) for s in sents if is_held_out(s))
        kept = [s for s in sents if not is_held_out(s)]
        if kept:
            docs.append(kept)
    return docs, list(held)


def train_tokenizer(docs: list[list[str]], vocab_size: int, out: Path) -> None:
    """A lower-cased WordPiece vocabulary of the training documents, as a tokenizer.json that
    tp's `wordpiece` tokenizer (`tokenizer_json:`) and `transformers` both read."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                        min_frequency=2, show_progress=False,
                                        continuing_subword_prefix="##")
    tok.train_from_iterator([s for d in docs for s in d], trainer)
    add_bert_template(tok)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))


def add_bert_template(tok: Any) -> None:
    """[CLS] A [SEP] (B [SEP]) when `transformers` encodes with this tokenizer.json (an exported
    model's tokenizer); tp's processors add the special tokens themselves."""
    from tokenizers import processors

    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.BertProcessing(("[SEP]", sep), ("[CLS]", cls))


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--documents", action="store_true", help="one document per line")
    ap.add_argument("--heldout", type=Path, help="write the held-out sentences here")
    ap.add_argument("--tokenizer", type=Path, help="train a WordPiece tokenizer.json here")
    ap.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    args = ap.parse_args()
    docs, held = split_topics()
    sep = " " if args.documents else "\n"
    write_atomic(args.out, "".join(sep.join(d) + ("\n" if args.documents else "\n\n")
                                   for d in docs))
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes, {len(docs)} topics, "
          f"{sum(map(len, docs)):,} sentences)")
    if args.heldout:
        write_atomic(args.heldout, "".join(s + "\n" for s in held))
        print(f"wrote {args.heldout} ({len(held)} held-out sentences)")
    if args.tokenizer:
        train_tokenizer(docs, args.vocab_size, args.tokenizer)
        print(f"wrote {args.tokenizer} (WordPiece, {args.vocab_size:,} ids at most)")


if __name__ == "__main__":
    main()
