"""Train the SentencePiece Unigram vocabulary shipped for the speech recipes
(recipes/_tokenizers/s2t-unigram-256.model).

S2T's layout (fairseq's and Hugging Face's Speech2Text vocabularies): `<s>`=0, `<pad>`=1,
`</s>`=2, `<unk>`=3, then the learned pieces; transcripts lower-cased, as fairseq's and
TencentPretrain's LibriSpeech preparation writes them. The text is what the speech demo
synthesises (`scripts/synth_speech.py`: Debian's fortunes, else Python's documentation), so its
words are covered; the paper's LibriSpeech recipes train a 10,000-piece vocabulary on the
LibriSpeech transcripts the same way (`--text`, `--vocab-size 10000`). With a fixed seed on one
thread the same text gives the same pieces in the same order (scores agree to 1e-3; the last
bits of the floats may differ from run to run).

    python scripts/train_speech_vocab.py [--out FILE.model] [--vocab-size 256] [--text FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from synth_speech import default_text, sentences  # noqa: E402

DEFAULT_OUT = ROOT / "recipes" / "_tokenizers" / "s2t-unigram-256.model"


def transcripts(text_file: Path | None) -> list[str]:
    """Lower-cased transcripts: one per line of `text_file` (the text column of a transcript
    list), or the synthesised demo's sentences."""
    if text_file is not None:
        return [line.strip().lower() for line in text_file.read_text(encoding="utf-8")
                .splitlines() if line.strip()]
    return [s.lower() for s in sentences(default_text())]


def train(lines: list[str], out: Path, vocab_size: int) -> None:
    spm.set_random_generator_seed(7)  # with one thread: the same text gives the same file
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "text.txt"
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "spm"), vocab_size=vocab_size,
            model_type="unigram", character_coverage=1.0, bos_id=0, pad_id=1, eos_id=2,
            unk_id=3, num_threads=1, minloglevel=2,
            normalization_rule_name="identity")  # transcripts come normalised; a small file
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_suffix(".part")
        part.write_bytes((Path(tmp) / "spm.model").read_bytes())
        part.replace(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--vocab-size", type=int, default=256)
    p.add_argument("--text", type=Path, default=None,
                   help="transcripts, one per line (default: the speech demo's sentences)")
    args = p.parse_args(argv)
    lines = transcripts(args.text)
    train(lines, args.out, args.vocab_size)
    print(f"{args.out}: {args.vocab_size} pieces from {len(lines):,} transcripts")


if __name__ == "__main__":
    main()
