"""Synthesise a speech corpus with exact transcripts: espeak-ng speaks each sentence, sox
resamples it to 16 kHz 16-bit mono FLAC.

Why synthetic speech: tests and benchmarks need real audio files of any size with transcripts
that are exactly what is said, offline. Text-to-speech gives both: the transcript is the text
espeak-ng was given. The output is deterministic (fixed voice, speed and pitch per speaker; sox
run without dither), so the same command gives the same bytes.

The default text is a real text that ships offline: Debian's fortunes (every file of
/usr/share/games/fortunes, in name order: about 24,000 sentences, over 20 hours of speech), else
Python's own documentation (pydoc_data.topics).
Sentences are normalised as LibriSpeech's transcripts are (upper-case letters, apostrophes
inside words, single spaces); a sentence with anything espeak-ng would speak that the transcript
cannot say (digits, symbols, letters outside A-Z) is left out, and espeak-ng is given the
lower-cased transcript (so it never spells an upper-case word letter by letter).

    python scripts/synth_speech.py OUT [--utterances N] [--text FILE] [--format librispeech|jsonl]
        [--speakers K] [--voice en-us] [--speed 160] [--pitch 50] [--workers 2]

librispeech: OUT/<speaker>/1/<speaker>-1-NNNN.flac + OUT/<speaker>/1/<speaker>-1.trans.txt;
jsonl: OUT/audio/NNNNNN.flac + OUT/manifest.jsonl (audio_filepath, duration, text). More
utterances than sentences: the sentences repeat, each time by the next speaker.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile

FORTUNES = Path("/usr/share/games/fortunes")
SAMPLE_RATE = 16000
MIN_WORDS, MAX_WORDS = 3, 30
PITCH_STEP = 12  # speaker k speaks at pitch + k * PITCH_STEP (mod 100): distinct, fixed voices
SPOKEN = re.compile(r"[^A-Za-z'\s.,;:!?\"()\-]")  # what espeak-ng would say that a transcript can't


def default_text() -> str:
    """Every fortune file (about 24,000 usable sentences), else the pydoc topics."""
    files = sorted(p for p in FORTUNES.iterdir() if p.is_file() and p.suffix not in (".dat",
                                                                                    ".u8")) \
        if FORTUNES.is_dir() else []
    if files:
        return "\n\n".join(p.read_text(encoding="utf-8", errors="replace")
                           .replace("\n%\n", "\n\n") for p in files)
    from pydoc_data.topics import topics

    return "\n\n".join(text for _, text in sorted(topics.items()))


def sentences(text: str) -> list[str]:
    """Normalised transcripts of the sentences of `text` that can be spoken exactly."""
    out: dict[str, None] = {}  # insertion-ordered, without repeats
    for block in re.split(r"\n\s*\n", text):
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(block.split())):
            transcript = normalise(sentence)
            if transcript is not None:
                out[transcript] = None
    return list(out)


def normalise(sentence: str) -> str | None:
    """LibriSpeech style: upper case, letters and inner apostrophes, single spaces; None when
    the sentence holds something spoken that this cannot write (a digit, '&', '%', 'é', ...)."""
    if SPOKEN.search(sentence):
        return None
    words = []
    for word in re.sub(r"[^A-Za-z']+", " ", sentence).split():
        word = word.strip("'")
        if word:
            words.append(word.upper())
    return " ".join(words) if MIN_WORDS <= len(words) <= MAX_WORDS else None


def speak(text: str, out: Path, voice: str, speed: int, pitch: int) -> float:
    """Write `text` spoken to `out` (16 kHz 16-bit mono FLAC); its duration in seconds."""
    espeak = subprocess.run(["espeak-ng", "--stdout", "-v", voice, "-s", str(speed), "-p",
                             str(pitch), text.lower()], capture_output=True, check=True)
    # -D: no dither, so the bytes are a function of the text alone
    subprocess.run(["sox", "-D", "-t", "wav", "-", "-r", str(SAMPLE_RATE), "-b", "16", "-c",
                    "1", str(out)], input=espeak.stdout, capture_output=True, check=True)
    return soundfile.info(str(out)).frames / SAMPLE_RATE


def synthesise(out: Path, texts: list[str], utterances: int, layout: str, speakers: int,
               voice: str, speed: int, pitch: int, workers: int) -> float:
    """Write the corpus; the hours of audio written."""
    if not texts:
        raise SystemExit("no sentence of the text can be spoken exactly (3-30 words of letters)")
    jobs = []  # (speaker, transcript, audio path)
    for i in range(utterances):
        speaker = (i + i // len(texts)) % speakers + 1  # a repeated sentence: the next speaker
        if layout == "librispeech":
            folder = out / str(speaker) / "1"
            path = folder / f"{speaker}-1-{i:06d}.flac"
        else:
            folder = out / "audio"
            path = folder / f"{i:06d}.flac"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((speaker, texts[i % len(texts)], path))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        durations = list(pool.map(
            lambda j: speak(j[1], j[2], voice, speed, (pitch + (j[0] - 1) * PITCH_STEP) % 100),
            jobs))
    if layout == "librispeech":
        lines: dict[Path, list[str]] = {}
        for speaker, text, path in jobs:
            lines.setdefault(path.parent / f"{speaker}-1.trans.txt", []).append(
                f"{path.stem} {text}")
        for trans, rows in lines.items():
            trans.write_text("\n".join(rows) + "\n", encoding="utf-8")
    else:
        with open(out / "manifest.jsonl", "w", encoding="utf-8") as f:
            for (_, text, path), seconds in zip(jobs, durations):
                f.write(json.dumps({"audio_filepath": str(path.relative_to(out)),
                                    "duration": round(seconds, 4), "text": text}) + "\n")
    return sum(durations) / 3600


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="a new folder")
    p.add_argument("--utterances", type=int, default=100)
    p.add_argument("--text", type=Path, help="a text file (default: the fortunes, else pydoc)")
    p.add_argument("--format", choices=("librispeech", "jsonl"), default="librispeech")
    p.add_argument("--speakers", type=int, default=1)
    p.add_argument("--voice", default="en-us")
    p.add_argument("--speed", type=int, default=160, help="words per minute")
    p.add_argument("--pitch", type=int, default=50, help="0-99")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install espeak-ng sox)")
    if a.out.exists():
        raise SystemExit(f"{a.out} already exists: choose a new folder")
    text = a.text.read_text(encoding="utf-8") if a.text else default_text()
    hours = synthesise(a.out, sentences(text), a.utterances, a.format, max(1, a.speakers),
                       a.voice, a.speed, a.pitch, a.workers)
    print(f"wrote {a.utterances} utterances ({hours * 60:.1f} minutes) to {a.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
