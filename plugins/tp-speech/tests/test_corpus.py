"""Speech corpora on real files: LibriSpeech folders and JSONL manifests written by
scripts/synth_speech.py (espeak-ng + sox), TSV lists of them, the pocketsphinx LibriVox and
cards recordings in the Sphinx layout, and every bad input as a DataError naming the file."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import soundfile

from tp_speech.corpus import read_corpus
from tpcli.errors import DataError

ROOT = Path(__file__).resolve().parents[3]
SPHINX = Path("/usr/share/pocketsphinx/test/data")
LIBRIVOX = SPHINX / "librivox"
needs_tts = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                               reason="espeak-ng and sox are not installed")
needs_sphinx = pytest.mark.skipif(not LIBRIVOX.is_dir(), reason="pocketsphinx-testdata missing")


def synth_module() -> Any:
    spec = importlib.util.spec_from_file_location("synth_speech", ROOT / "scripts" /
                                                  "synth_speech.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def synthesise(out: Path, utterances: int, layout: str = "librispeech", speakers: int = 2,
               ) -> list[str]:
    """A corpus of `utterances` synthetic utterances; their transcripts in order."""
    synth = synth_module()
    synth.main([str(out), "--utterances", str(utterances), "--format", layout, "--speakers",
                str(speakers)])
    texts = synth.sentences(synth.default_text())
    return [texts[i % len(texts)] for i in range(utterances)]


@pytest.fixture(scope="module")
def libri(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are not installed")
    out = tmp_path_factory.mktemp("synth") / "libri"
    return out, synthesise(out, 6)


# ------------------------------------------------------------------------- synth_speech


def test_normalise_writes_librispeech_transcripts_or_refuses() -> None:
    synth = synth_module()
    assert synth.normalise("Don't panic, it's only a test!") == "DON'T PANIC IT'S ONLY A TEST"
    assert synth.normalise("A well-known 'quoted' word.") == "A WELL KNOWN QUOTED WORD"
    for spoken in ("It costs 5 dollars.", "Salt & pepper please.", "A café au lait please."):
        assert synth.normalise(spoken) is None  # espeak-ng would say what a transcript can't
    assert synth.normalise("Too short.") is None


@needs_tts
def test_synthesis_is_deterministic_and_16k_flac(tmp_path: Path) -> None:
    texts = synthesise(tmp_path / "a", 3, "jsonl", speakers=2)
    synthesise(tmp_path / "b", 3, "jsonl", speakers=2)
    manifest = (tmp_path / "a" / "manifest.jsonl").read_text()
    assert manifest == (tmp_path / "b" / "manifest.jsonl").read_text()
    rows = [json.loads(line) for line in manifest.splitlines()]
    assert [r["text"] for r in rows] == texts
    for row in rows:
        a, b = tmp_path / "a" / row["audio_filepath"], tmp_path / "b" / row["audio_filepath"]
        assert a.read_bytes() == b.read_bytes()
        info = soundfile.info(str(a))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(info.frames / 16000 - row["duration"]) < 1e-4 and 0.5 < row["duration"] < 15
        assert re.fullmatch(r"[A-Z']+( [A-Z']+)+", row["text"])


# ------------------------------------------------------------------------- the four layouts


def test_librispeech_layout(libri: tuple[Path, list[str]]) -> None:
    root, texts = libri
    corpus = read_corpus(root)
    assert corpus.layout == "librispeech" and corpus.skipped == []
    got = {u.uttid: u.text for u in corpus.utterances}
    assert got == {f"{i % 2 + 1}-1-{i:06d}": t for i, t in enumerate(texts)}
    first = corpus.utterances[0]
    assert first.path == root / "1" / "1" / "1-1-000000.flac" and first.path.is_file()
    assert first.source == f"{root}/1/1/1-1.trans.txt:1"


def test_training_and_evaluation_splits_together_are_refused(libri: tuple[Path, list[str]],
                                                             tmp_path: Path) -> None:
    shutil.copytree(libri[0], tmp_path / "LibriSpeech" / "train-clean-100")
    assert len(read_corpus(tmp_path / "LibriSpeech").utterances) == 6
    # the 960 h: several training splits in one folder are one training corpus
    shutil.copytree(libri[0], tmp_path / "LibriSpeech" / "train-clean-360")
    assert len(read_corpus(tmp_path / "LibriSpeech").utterances) == 12
    shutil.copytree(libri[0], tmp_path / "LibriSpeech" / "test-clean")
    with pytest.raises(DataError, match=r"holds LibriSpeech splits of training and evaluation "
                       r"\(test-clean, train-clean-100, train-clean-360\)") as e:
        read_corpus(tmp_path / "LibriSpeech")
    assert "train-clean-360" in (e.value.hint or "")
    assert len(read_corpus(tmp_path / "LibriSpeech" / "test-clean").utterances) == 6


def test_tsv_with_and_without_a_header(libri: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, texts = libri
    plain = tmp_path / "list.tsv"
    plain.write_text(f"{texts[0]}\t{root}/1/1/1-1-000000.flac\n\n"
                     f"{texts[1]}\t../{tmp_path.name}/sub/b.flac\n")
    (tmp_path / "sub").mkdir()
    shutil.copy(root / "2" / "1" / "2-1-000001.flac", tmp_path / "sub" / "b.flac")
    corpus = read_corpus(plain)
    assert [u.text for u in corpus.utterances] == texts[:2]
    assert corpus.utterances[1].path.resolve() == (tmp_path / "sub" / "b.flac").resolve()
    # TencentPretrain's fine-tuning files: a header naming the columns, in any order
    swapped = tmp_path / "swapped.tsv"
    swapped.write_text(f"wav_path\ttext\nsub/b.flac\t{texts[1]}\n")
    corpus = read_corpus(swapped)
    assert [(u.text, u.path.name, u.source) for u in corpus.utterances] == [
        (texts[1], "b.flac", f"{swapped}:2")]


@needs_tts
def test_jsonl_manifest(tmp_path: Path) -> None:
    texts = synthesise(tmp_path / "m", 3, "jsonl")
    corpus = read_corpus(tmp_path / "m" / "manifest.jsonl")
    assert corpus.layout == "jsonl" and [u.text for u in corpus.utterances] == texts
    assert [u.path.name for u in corpus.utterances] == ["000000.flac", "000001.flac",
                                                        "000002.flac"]


@needs_sphinx
def test_pocketsphinx_librivox_and_cards() -> None:
    corpus = read_corpus(LIBRIVOX)
    assert corpus.layout == "sphinx" and len(corpus.utterances) == 5
    first = corpus.utterances[0]
    assert first.path == LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav"
    assert first.text == ("and mister john dashwood had then leisure to consider how much there "
                          "might be prudently in his power to do for them")
    assert corpus.utterances[1].text == "he was not an ill disposed young man"
    cards = read_corpus(SPHINX / "cards" / "cards.fileids")  # the fileids file itself
    assert [u.text for u in cards.utterances][:2] == ["ten of clubs", "four queen of clubs"]
    assert read_corpus(SPHINX / "cards").utterances == cards.utterances


@needs_sphinx
def test_sphinx_without_transcripts(tmp_path: Path) -> None:
    shutil.copy(SPHINX / "cards" / "cards.fileids", tmp_path / "cards.fileids")
    with pytest.raises(DataError, match=r"has no transcription file .*cards.transcription"):
        read_corpus(tmp_path / "cards.fileids")
    for name in ("001.wav", "002.wav"):
        shutil.copy(SPHINX / "cards" / name, tmp_path / name)
    (tmp_path / "cards.fileids").write_text("001\n002\n")
    (tmp_path / "cards.transcription").write_text("<s> ten of clubs </s> (001)\n")
    with pytest.raises(DataError, match=r"cards.fileids:2: utterance 002 has no transcript"):
        read_corpus(tmp_path)
    corpus = read_corpus(tmp_path, on_error="skip")
    assert [u.uttid for u in corpus.utterances] == ["001"] and len(corpus.skipped) == 1


# ------------------------------------------------------------------------- bad input


def test_missing_audio_names_the_line_or_is_skipped(libri: tuple[Path, list[str]],
                                                    tmp_path: Path) -> None:
    root, texts = libri
    tsv = tmp_path / "list.tsv"
    tsv.write_text(f"{texts[0]}\t{root}/1/1/1-1-000000.flac\n{texts[1]}\tnothere.flac\n")
    with pytest.raises(DataError) as e:
        read_corpus(tsv)
    assert f"{tsv}:2: audio file {tmp_path}/nothere.flac does not exist" in e.value.message
    assert "on_error=skip" in (e.value.hint or "")
    corpus = read_corpus(tsv, on_error="skip")
    assert len(corpus.utterances) == 1 and len(corpus.skipped) == 1
    assert "nothere.flac does not exist" in corpus.skipped[0]


def test_audio_without_transcript_and_empty_transcript(libri: tuple[Path, list[str]],
                                                       tmp_path: Path) -> None:
    root, _ = libri
    copy = tmp_path / "libri"
    shutil.copytree(root, copy)
    shutil.copy(copy / "1" / "1" / "1-1-000000.flac", copy / "1" / "1" / "1-1-000099.flac")
    with pytest.raises(DataError, match=r"1-1-000099.flac has no transcript") as e:
        read_corpus(copy)
    assert "1-1.trans.txt" in (e.value.hint or "")
    assert len(read_corpus(copy, on_error="skip").skipped) == 1
    (copy / "1" / "1" / "1-1-000099.flac").unlink()
    trans = copy / "1" / "1" / "1-1.trans.txt"
    lines = trans.read_text().splitlines()
    lines[1] = lines[1].split(" ")[0]  # an utterance id with no words
    trans.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"1-1.trans.txt:2: the transcript is empty"):
        read_corpus(copy)


def test_malformed_lists_and_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_corpus(tmp_path / "nothere")
    bad = tmp_path / "bad.tsv"
    bad.write_text("just one field\n")
    with pytest.raises(DataError, match=r"bad.tsv:1 is not `text<TAB>path`"):
        read_corpus(bad)
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text('{"path": "a.flac", "text": "HI"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1 has no audio_filepath and text"):
        read_corpus(manifest)
    manifest.write_text("{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1 is not JSON"):
        read_corpus(manifest)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no \\*.trans.txt files"):
        read_corpus(tmp_path / "empty")
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(DataError, match="cannot tell its layout"):
        read_corpus(tmp_path / "x.parquet")
