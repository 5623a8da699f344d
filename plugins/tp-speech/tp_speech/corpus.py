"""Speech corpora: which audio files, with which transcripts.

Four layouts, as the speech tools people use write them:

- LibriSpeech's folder: ``speaker/chapter/speaker-chapter-NNNN.flac`` beside
  ``speaker-chapter.trans.txt``, whose lines are ``UTTID TRANSCRIPT``;
- a TSV of ``text<TAB>path`` lines (TencentPretrain's S2T pre-training corpus); a first line
  naming the columns (``text<TAB>path``, or ``text<TAB>wav_path`` in TencentPretrain's
  fine-tuning files, in any order) is a header;
- a JSONL manifest, one ``{"audio_filepath": ..., "duration": ..., "text": ...}`` a line
  (NeMo's manifests);
- CMU Sphinx's test layout (``/usr/share/pocketsphinx/test/data/librivox``): a ``fileids`` file
  of paths without extension and a ``transcription`` file of ``<s> text </s> (uttid)`` lines,
  given as the folder or as the fileids file.

Relative audio paths are relative to the list's folder (TencentPretrain reads them from the
working directory: absolute paths serve both). Every problem (an audio file that does
not exist, an audio file with no transcript, an empty transcript, a malformed line) is a
DataError naming the file or line and the fix, or, with ``on_error="skip"``, a line in
`Corpus.skipped` that the processor counts and reports: never dropped silently.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tpcli.errors import DataError

AUDIO = (".flac", ".wav", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au", ".sph")
LAYOUT_HINT = ("give a LibriSpeech-style folder (speaker/chapter/*.flac + *.trans.txt), a TSV "
               "of `text<TAB>path` lines, a JSONL manifest with audio_filepath and text, or a "
               "Sphinx folder with fileids and transcription files")
TEXT_COLUMNS = ("text",)
PATH_COLUMNS = ("wav_path", "path", "audio", "audio_filepath")  # TSV header names of the path
OnError = Literal["raise", "skip"]


@dataclass(frozen=True)
class Utterance:
    """One audio file and what is said in it; `source` says where it was listed (for errors)."""

    path: Path
    text: str
    uttid: str
    source: str


@dataclass
class Corpus:
    """The utterances of a corpus in a fixed order, and what was skipped (one line each)."""

    utterances: list[Utterance] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    layout: str = ""


class _Problems:
    """Raises the first problem (on_error="raise") or collects them all ("skip")."""

    def __init__(self, on_error: OnError) -> None:
        self.on_error = on_error
        self.found: list[str] = []

    def __call__(self, message: str, hint: str) -> None:
        if self.on_error == "raise":
            raise DataError(message, hint=f"{hint}, or set data.processor.on_error=skip to skip "
                            "such utterances (counted in the dataset's meta.json)")
        self.found.append(message)


def read_corpus(corpus: str | Path, on_error: OnError = "raise") -> Corpus:
    """The utterances of `corpus` in one of the four layouts, in a fixed order (LibriSpeech's
    by transcript file then line; the lists' in their order)."""
    path = Path(corpus)
    if not path.exists():
        raise DataError(f"speech corpus {corpus} does not exist", hint=LAYOUT_HINT)
    problems = _Problems(on_error)
    if path.is_dir():
        sphinx = _sphinx_files(path)
        if next(path.rglob("*.trans.txt"), None) is not None:
            out = _librispeech(path, problems)
        elif sphinx is not None:
            out = _sphinx(*sphinx, problems)
        else:
            raise DataError(f"speech corpus folder {path} holds no *.trans.txt files (LibriSpeech "
                            "layout) and no fileids + transcription files (Sphinx layout)",
                            hint=LAYOUT_HINT)
    elif path.name.endswith("fileids"):
        transcription = (path.parent / "transcription" if path.name == "fileids"
                         else path.with_suffix(".transcription"))
        if not transcription.is_file():
            raise DataError(f"Sphinx corpus {path} has no transcription file {transcription}",
                            hint="put the `<s> text </s> (uttid)` lines beside the fileids")
        out = _sphinx(path, transcription, problems)
    elif path.suffix.lower() in (".tsv", ".txt"):
        out = _tsv(path, problems)
    elif path.suffix.lower() in (".jsonl", ".json"):
        out = _jsonl(path, problems)
    else:
        raise DataError(f"speech corpus {corpus}: cannot tell its layout from the extension "
                        f"{path.suffix or '(none)'}", hint=LAYOUT_HINT)
    out.skipped = problems.found
    if not out.utterances:
        raise DataError(f"speech corpus {corpus} lists no usable utterances"
                        + (f" ({len(out.skipped)} skipped: {out.skipped[0]})" if out.skipped
                           else ""), hint=LAYOUT_HINT)
    return out


def _audio_file(path: Path, source: str, problems: _Problems) -> bool:
    """True when `path` is a file; a problem naming it and `source` otherwise."""
    if path.is_file():
        return True
    what = "is a folder, not an audio file" if path.is_dir() else "does not exist"
    problems(f"{source}: audio file {path} {what}",
             hint="fix the path (relative paths are relative to the list's folder) or remove "
             "the line")
    return False


def _text(text: str, source: str, problems: _Problems) -> bool:
    if text.strip():
        return True
    problems(f"{source}: the transcript is empty", hint="write the words said in the audio file")
    return False


# ------------------------------------------------------------------------- LibriSpeech


SPLITS = ("train-", "dev-", "test-")  # LibriSpeech's split folders: train-clean-100, dev-other


def _librispeech(root: Path, problems: _Problems) -> Corpus:
    out = Corpus(layout="librispeech")
    listed: set[Path] = set()
    transcripts = sorted(root.rglob("*.trans.txt"))
    splits = sorted({t.relative_to(root).parts[0] for t in transcripts
                     if t.relative_to(root).parts[0].startswith(SPLITS)})
    kinds = {s.split("-")[0] for s in splits}
    if len(kinds) > 1:  # the LibriSpeech/ folder itself: evaluation speech would be trained on
        raise DataError(f"speech corpus {root} holds LibriSpeech splits of training and "
                        f"evaluation ({', '.join(splits)})",
                        hint=f"give one split's folder, e.g. {root / splits[-1]}, or a folder "
                        "of the training splits alone (train-960/ with links to the three)")
    for trans in transcripts:
        with open(trans, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                line = line.strip()
                if not line:
                    continue
                source = f"{trans}:{number}"
                uttid, _, text = line.partition(" ")
                audio = _find_audio(trans.parent, uttid)
                listed.add(audio)
                if _audio_file(audio, source, problems) and _text(text, source, problems):
                    out.utterances.append(Utterance(audio, text.strip(), uttid, source))
    for audio in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO):
        if audio not in listed:
            problems(f"audio file {audio} has no transcript: no line `{audio.stem} TEXT` in a "
                     f"{audio.parent}/*.trans.txt file",
                     hint=f"add the line to {_trans_name(audio)} or remove the audio file")
    return out


def _find_audio(folder: Path, uttid: str) -> Path:
    """The audio file of `uttid` in `folder` (.flac first); the .flac path when none exists."""
    for ext in AUDIO:
        if (folder / (uttid + ext)).is_file():
            return folder / (uttid + ext)
    return folder / (uttid + ".flac")


def _trans_name(audio: Path) -> Path:
    """Where LibriSpeech keeps `audio`'s transcript: speaker-chapter.trans.txt beside it."""
    parts = audio.stem.split("-")
    stem = "-".join(parts[:-1]) if len(parts) > 1 else audio.parent.name
    return audio.parent / f"{stem}.trans.txt"


# ------------------------------------------------------------------------- TSV


def _tsv(path: Path, problems: _Problems) -> Corpus:
    out = Corpus(layout="tsv")
    columns = (0, 1)  # text, path
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split("\t")]
            if number == 1 and (header := _header(parts)) is not None:
                columns = header
                continue
            source = f"{path}:{number}"
            if len(parts) <= max(columns) or len(parts) < 2:
                raise DataError(f"{source} is not `text<TAB>path`: it has {len(parts)} "
                                f"tab-separated field(s): {line[:80]!r}",
                                hint="write one utterance per line: its transcript, a tab, the "
                                "path of its audio file")
            text, audio = parts[columns[0]], parts[columns[1]]
            full = path.parent / audio
            if _text(text, source, problems) and _audio_file(full, source, problems):
                out.utterances.append(Utterance(full, text, Path(audio).stem, source))
    return out


def _header(parts: list[str]) -> tuple[int, int] | None:
    """(text column, path column) when `parts` name the columns, else None."""
    names = [p.lower() for p in parts]
    text = next((names.index(n) for n in TEXT_COLUMNS if n in names), None)
    audio = next((names.index(n) for n in PATH_COLUMNS if n in names), None)
    return None if text is None or audio is None else (text, audio)


# ------------------------------------------------------------------------- JSONL manifest


def _jsonl(path: Path, problems: _Problems) -> Corpus:
    out = Corpus(layout="jsonl")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            source = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{source} is not JSON: {e}",
                                hint="write one JSON object per line") from None
            if not isinstance(record, dict) or "audio_filepath" not in record \
                    or "text" not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"{source} has no audio_filepath and text (it has {keys})",
                                hint='write {"audio_filepath": "a.flac", "duration": 2.5, '
                                '"text": "..."} per line')
            audio, text = str(record["audio_filepath"]), str(record["text"])
            full = path.parent / audio
            if _text(text, source, problems) and _audio_file(full, source, problems):
                out.utterances.append(Utterance(full, text.strip(), Path(audio).stem, source))
    return out


# ------------------------------------------------------------------------- Sphinx


def _sphinx_files(folder: Path) -> tuple[Path, Path] | None:
    """(fileids, transcription) of a Sphinx test folder: `fileids` + `transcription`, or one
    `NAME.fileids` + `NAME.transcription` pair; None when there is no such pair."""
    pairs = [(f, f.parent / "transcription") for f in folder.glob("fileids")]
    pairs += [(f, f.with_suffix(".transcription")) for f in folder.glob("*.fileids")]
    pairs = [(a, b) for a, b in pairs if b.is_file()]
    return pairs[0] if len(pairs) == 1 else None


SPHINX_LINE = re.compile(r"^(?P<text>.*?)\s*\((?P<uttid>[^()\s]+)(?:\s+[-\d.]+)?\)\s*$")
SPHINX_MARKS = ("<s>", "</s>", "<sil>")


def _sphinx(fileids: Path, transcription: Path, problems: _Problems) -> Corpus:
    """Fileids are paths without extension, relative to the fileids' folder; transcripts are
    matched by utterance id (the fileid's last part), Sphinx's <s> </s> <sil> marks dropped."""
    texts: dict[str, tuple[str, str]] = {}  # uttid -> (text, source)
    with open(transcription, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            match = SPHINX_LINE.match(line.strip())
            if match is None:
                raise DataError(f"{transcription}:{number} is not `<s> text </s> (uttid)`: "
                                f"{line.strip()[:80]!r}",
                                hint="end each transcription line with its utterance id in "
                                "parentheses")
            words = [w for w in match["text"].split() if w.lower() not in SPHINX_MARKS]
            texts[match["uttid"]] = (" ".join(words), f"{transcription}:{number}")
    out = Corpus(layout="sphinx")
    with open(fileids, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fileid = line.strip()
            if not fileid:
                continue
            source = f"{fileids}:{number}"
            uttid = Path(fileid).name
            if uttid not in texts:
                problems(f"{source}: utterance {uttid} has no transcript in {transcription}",
                         hint=f"add a line `<s> TEXT </s> ({uttid})` to {transcription}")
                continue
            text, _ = texts[uttid]
            audio = _find_audio((fileids.parent / fileid).parent, uttid)
            if _text(text, texts[uttid][1], problems) and _audio_file(audio, source, problems):
                out.utterances.append(Utterance(audio, text, uttid, source))
    return out
