"""The speech demo's corpora: synthesised speech (espeak-ng, `synth_speech.py`) of Debian's
fortunes, split by sentence so that the held-out utterances say sentences the model never heard.

    python scripts/speech_demo.py OUT [--sentences 600] [--speakers 2] [--every 10]

takes the first `sentences` sentences of the fortunes (of 3-30 words) and writes OUT/train
(every sentence but each `every`-th, spoken by `speakers` voices) and
OUT/heldout (the held-out sentences, by the first voice), both in the LibriSpeech layout, and
OUT/sentences.json (which sentence went where). `make demo-speech` then preprocesses OUT/train,
trains recipes/s2t-tiny on it and transcribes OUT/heldout with `tp infer`, which scores WER and
CER against the transcripts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from synth_speech import default_text, sentences  # noqa: E402


def split(all_sentences: list[str], every: int) -> tuple[list[str], list[str]]:
    """(train, held out): each `every`-th sentence is held out."""
    held = all_sentences[every - 1::every]
    chosen = set(held)
    return [s for s in all_sentences if s not in chosen], held


def synthesise(lines: list[str], out: Path, speakers: int) -> None:
    """`synth_speech.py` over `lines` (one block each), every line by each of `speakers`."""
    text = out.with_suffix(".txt")
    text.parent.mkdir(parents=True, exist_ok=True)
    text.write_text("\n\n".join(f"{s}." for s in lines) + "\n", encoding="utf-8")
    subprocess.run([sys.executable, str(ROOT / "synth_speech.py"), str(out), "--text", str(text),
                    "--utterances", str(len(lines) * speakers), "--speakers", str(speakers)],
                   check=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--sentences", type=int, default=600, help="sentences used, from the first")
    p.add_argument("--speakers", type=int, default=2, help="voices of the training sentences")
    p.add_argument("--every", type=int, default=10, help="hold out each N-th sentence")
    args = p.parse_args(argv)
    train, held = split(sentences(default_text())[:args.sentences], args.every)
    synthesise(train, args.out / "train", args.speakers)
    synthesise(held, args.out / "heldout", 1)
    (args.out / "sentences.json").write_text(json.dumps({"train": train, "heldout": held},
                                                        indent=1) + "\n")
    print(f"{len(train)} training sentences x {args.speakers} voices, {len(held)} held out")


if __name__ == "__main__":
    main()
