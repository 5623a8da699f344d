"""Train the SentencePiece-style Unigram tokenizer shipped as recipes/_tokenizers/unigram-8k.json.

T5's layout: NFKC normalisation, whitespace runs folded to one space, Metaspace pre-tokeniser
('▁' marks a word start), `<pad>`=0, `</s>`=1, `<unk>`=2, then the learned pieces, then `<mask>`
and the 100 sentinels at the END of the vocabulary in T5's order (`<extra_id_0>` is the last id).
8,000 ids in all. The corpus is Python's own documentation (`pydoc_data.topics` and the standard
library's docstrings), so anyone with the same Python can rebuild the file; scores are rounded
so the output is the same on every run.

    python scripts/train_unigram.py [OUT.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

VOCAB_SIZE = 8000
HEAD = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5
SENTINELS = 100
TAIL = ["<mask>"] + [f"<extra_id_{n}>" for n in reversed(range(SENTINELS))]
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "recipes" / "_tokenizers" / "unigram-8k.json"


def corpus() -> list[str]:
    """Every non-blank line of the pydoc topics (sorted by topic) and of the docstrings of the
    standard library's top-level modules (sorted by file name): English prose about Python,
    the same for everyone with the same Python version."""
    import ast
    import sysconfig
    from pydoc_data.topics import topics

    texts = [text for _, text in sorted(topics.items())]
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
    return [line for text in texts for line in text.splitlines() if line.strip()]


def build() -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.Replace(Regex(r"\s+"), " "),  # sentencepiece folds whitespace runs
        normalizers.Strip(),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=VOCAB_SIZE - len(TAIL),
        special_tokens=HEAD,
        unk_token="<unk>",
        max_piece_length=16,
        shrinking_factor=0.75,
        n_sub_iterations=2,
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    # The trainer sums floats in a thread-dependent order: the last bits of the scores (and so
    # the order of near-equal pieces) vary between runs. Rounded scores, ties broken by the
    # piece, give one file.
    spec = json.loads(tok.to_str())
    pieces = [(p, round(s, 6)) for p, s in spec["model"]["vocab"]]
    # The characters the trainer had to keep come last, scored well below every learned piece
    # (min - 1e-4, min - 2e-4, ...) in hash-map order: give them those scores in piece order.
    start = len(pieces)
    for k in range(len(pieces) - 1, max(len(HEAD) + 1, len(pieces) - 1000), -1):
        if pieces[k - 1][1] - pieces[k][1] >= 0.1:  # the gap between learned and kept
            start = k
            break
    tail_scores = sorted((sc for _, sc in pieces[start:]), reverse=True)
    tail = list(zip(sorted(p for p, _ in pieces[start:]), tail_scores))
    pieces = pieces[:start] + tail
    head, rest = pieces[:len(HEAD)], sorted(pieces[len(HEAD):], key=lambda ps: (-ps[1], ps[0]))
    tok.model = models.Unigram(head + rest, unk_id=HEAD.index("<unk>"), byte_fallback=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TAIL])
    eos = tok.token_to_id("</s>")
    # what `transformers` appends (T5 ends every sequence with </s>); tp's ids never carry it
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)])
    return tok


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    tok = build()
    size = tok.get_vocab_size(with_added_tokens=True)
    if size != VOCAB_SIZE:
        raise SystemExit(f"trained {size} ids, wanted {VOCAB_SIZE}: the corpus is too small")
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out), pretty=False)
    print(f"wrote {out} ({size} ids, {out.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv)
