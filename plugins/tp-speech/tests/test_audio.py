"""read_audio / audio_info: real files written by soundfile (WAV, FLAC, Ogg; 16-bit, 24-bit,
float; mono and stereo; 8, 16 and 44.1 kHz), the LibriVox recordings of pocketsphinx-testdata,
and every way a file can be unusable."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from tp_speech.audio import AudioError, audio_info, read_audio
from tpcli.errors import DataError

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
# (file, seconds) as pocketsphinx-testdata ships them: 16 kHz mono 16-bit
LIBRIVOX_FILES = [("sense_and_sensibility_01_austen_64kb-0870.wav", 7.10),
                  ("sense_and_sensibility_01_austen_64kb-0880.wav", 2.99),
                  ("sense_and_sensibility_01_austen_64kb-0890.wav", 5.30),
                  ("sense_and_sensibility_01_austen_64kb-0920.wav", 6.05),
                  ("sense_and_sensibility_01_austen_64kb-0930.wav", 3.29)]
needs_librivox = pytest.mark.skipif(not LIBRIVOX.is_dir(),
                                    reason="apt package pocketsphinx-testdata is not installed")


def tone(rate: int, seconds: float = 0.5, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def pcm16(x: np.ndarray) -> np.ndarray:
    return np.round(x * 32767).astype(np.int16)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_16_bit_pcm_reads_back_as_k_over_32768(tmp_path: Path, fmt: str) -> None:
    """Lossless 16-bit files: sample k comes back as exactly k / 32768 (what Kaldi and HF
    expect, so fbank's x32768 gives the integers back)."""
    k = pcm16(tone(16000))
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, k, 16000, format=fmt, subtype="PCM_16")
    wave = read_audio(path)
    assert wave.dtype == np.float32 and wave.shape == (8000,)
    np.testing.assert_array_equal(wave, k.astype(np.float32) / 32768)
    assert audio_info(path) == (8000, 16000, 1)


def test_24_bit_and_float_files(tmp_path: Path) -> None:
    """24-bit PCM is scaled by 2^23; a float WAV comes back as stored, even past 1.0."""
    x = tone(16000)
    k24 = np.round(x.astype(np.float64) * (2**23 - 1)).astype(np.int32)
    sf.write(tmp_path / "a24.flac", k24 << 8, 16000, subtype="PCM_24")  # int32's top 24 bits
    np.testing.assert_array_equal(read_audio(tmp_path / "a24.flac"),
                                  (k24 / 2**23).astype(np.float32))
    loud = np.concatenate([x, [1.5, -1.25]]).astype(np.float32)
    sf.write(tmp_path / "f.wav", loud, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(read_audio(tmp_path / "f.wav"), loud)


def test_ogg_vorbis_is_lossy_but_close(tmp_path: Path) -> None:
    """Ogg/Vorbis decodes to the same length and, for a pure tone, within 2% of the signal's
    RMS (measured: 1.25%; Vorbis is lossy: equality is not expected)."""
    x = tone(16000, seconds=1.0)
    sf.write(tmp_path / "a.ogg", x, 16000, format="OGG", subtype="VORBIS")
    wave = read_audio(tmp_path / "a.ogg")
    assert wave.shape == x.shape and audio_info(tmp_path / "a.ogg") == (16000, 16000, 1)
    rms_err = np.sqrt(np.mean((wave[1000:-1000] - x[1000:-1000]) ** 2))
    assert rms_err < 0.02 * np.sqrt(np.mean(x**2))


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_stereo_is_downmixed_by_the_mean(tmp_path: Path, fmt: str) -> None:
    left, right = tone(16000, freq=440.0), tone(16000, freq=1000.0, amp=0.25)
    stereo = pcm16(np.stack([left, right], axis=1))  # (N, 2)
    path = tmp_path / f"s.{fmt.lower()}"
    sf.write(path, stereo, 16000, format=fmt)
    assert audio_info(path) == (8000, 16000, 2)
    decoded, _ = sf.read(path, dtype="float32")  # (N, 2): libsndfile's own decoding
    np.testing.assert_allclose(read_audio(path), decoded.mean(axis=1), atol=1e-7)
    if fmt != "OGG":  # lossless: the mean of the written channels
        np.testing.assert_allclose(read_audio(path), stereo.mean(axis=1) / 32768, atol=1e-7)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_other_rates_are_resampled(tmp_path: Path, rate: int) -> None:
    """A 440 Hz tone at `rate` becomes the same tone at 16 kHz: ceil(N * 16000 / rate) samples,
    equal to the tone computed at 16 kHz within 1e-3 away from the edges (the filter's
    transients), and equal to scipy's resample_poly on the reduced ratio."""
    x = tone(rate, seconds=0.5, amp=0.5)
    sf.write(tmp_path / "r.wav", x, rate, subtype="FLOAT")
    wave = read_audio(tmp_path / "r.wav", sample_rate=16000)
    assert wave.dtype == np.float32 and wave.shape == (int(np.ceil(len(x) * 16000 / rate)),)
    want = tone(16000, seconds=len(wave) / 16000, amp=0.5)
    np.testing.assert_allclose(wave[200:-200], want[200:-200], atol=1e-3)
    g = np.gcd(rate, 16000)
    ref = resample_poly(x.astype(np.float64), 16000 // g, rate // g).astype(np.float32)
    np.testing.assert_array_equal(wave, ref)
    assert audio_info(tmp_path / "r.wav") == (len(x), rate, 1)


def test_a_rate_mismatch_is_refused_when_asked(tmp_path: Path) -> None:
    sf.write(tmp_path / "r.flac", pcm16(tone(8000)), 8000)
    with pytest.raises(DataError) as e:
        read_audio(tmp_path / "r.flac", sample_rate=16000, resample=False)
    assert "r.flac" in e.value.message and "8000 Hz" in e.value.message
    assert "16000" in e.value.message and "resample" in e.value.hint
    assert read_audio(tmp_path / "r.flac", sample_rate=8000, resample=False).shape == (4000,)


def test_a_file_object_reads_like_its_path(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.flac", pcm16(tone(16000)), 16000)
    data = (tmp_path / "a.flac").read_bytes()
    np.testing.assert_array_equal(read_audio(io.BytesIO(data)), read_audio(tmp_path / "a.flac"))
    assert audio_info(io.BytesIO(data)) == (8000, 16000, 1)
    with pytest.raises(AudioError, match="in-memory.flac is corrupt or truncated"):
        read_audio(io.BytesIO(data[: len(data) // 2]), name="in-memory.flac")


@needs_librivox
@pytest.mark.parametrize("name,seconds", LIBRIVOX_FILES)
def test_librivox_recordings(name: str, seconds: float) -> None:
    """The real recordings: 16 kHz mono 16-bit, their stated durations, and their samples are
    the file's int16 values / 32768."""
    path = LIBRIVOX / name
    assert audio_info(path) == (round(seconds * 16000), 16000, 1)
    ints, rate = sf.read(path, dtype="int16")
    wave = read_audio(path)
    np.testing.assert_array_equal(wave, ints.astype(np.float32) / 32768)
    assert 0.01 < np.abs(wave).max() <= 1.0 and rate == 16000


@needs_librivox
def test_librivox_resampled_to_8k_and_back_keeps_the_speech(tmp_path: Path) -> None:
    """A recording written at 8 kHz (its 16 kHz samples resampled by scipy) and read back at
    16 kHz keeps the telephone band: below 3.4 kHz the round trip differs from the original by
    0.13% of its RMS (asserted < 0.5%); above 4.5 kHz, past the filter's transition band, less
    than 1% of what the recording had there is left (0.87%; above 4 kHz it had 20% of its RMS)."""
    wave = read_audio(LIBRIVOX / LIBRIVOX_FILES[1][0])
    sf.write(tmp_path / "8k.wav", resample_poly(wave, 1, 2).astype(np.float32), 8000,
             subtype="FLOAT")
    back = read_audio(tmp_path / "8k.wav")
    assert back.shape == wave.shape
    freqs = np.fft.rfftfreq(len(wave), 1 / 16000)

    def band(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
        spectrum = np.fft.rfft(x)
        spectrum[(freqs < lo) | (freqs > hi)] = 0
        return np.fft.irfft(spectrum, n=len(x))

    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean(x**2)))

    assert rms(band(back, 0, 3400) - band(wave, 0, 3400)) < 0.005 * rms(band(wave, 0, 3400))
    assert rms(band(back, 4500, 8000)) < 0.01 * rms(band(wave, 4500, 8000))


def write_truncated(tmp_path: Path, fmt: str) -> Path:
    path = tmp_path / f"whole.{fmt.lower()}"
    sf.write(path, pcm16(tone(16000, seconds=1.0)), 16000, format=fmt)
    data = path.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: len(data) // 2])
    return cut


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_truncated_files_are_errors_not_short_recordings(tmp_path: Path, fmt: str) -> None:
    """Half a file: libsndfile reads half a WAV without complaint and an Ogg stream as empty;
    tp says the file is truncated (a WAV even through audio_info, before any decoding)."""
    cut = write_truncated(tmp_path, fmt)
    with pytest.raises(DataError) as e:
        read_audio(cut)
    assert str(cut) in e.value.message and "truncated" in e.value.message
    assert "re-download" in e.value.hint
    if fmt != "FLAC":  # a FLAC header is whole: its missing frames show when decoded
        with pytest.raises(DataError, match="truncated"):
            audio_info(cut)


@pytest.mark.parametrize("marker", [0x7FFFF000, 0xFFFFFFFF])
def test_a_streamed_wav_header_is_not_called_truncated(tmp_path: Path, marker: int) -> None:
    """A WAV written to a pipe cannot know its length and says "huge" (sox and espeak-ng:
    0x7FFFF000, ffmpeg: 0xFFFFFFFF): libsndfile reads the whole file, and so does tp (only a
    header claiming more than the file holds, short of those markers, is truncation)."""
    path = tmp_path / "piped.wav"
    k = pcm16(tone(16000))
    sf.write(path, k, 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[4:8] = data[at:at + 4] = marker.to_bytes(4, "little")  # RIFF and data sizes
    path.write_bytes(bytes(data))
    np.testing.assert_array_equal(read_audio(path), k.astype(np.float32) / 32768)


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed")
def test_sox_writing_to_a_pipe(tmp_path: Path) -> None:
    """The real thing: `sox ... -t wav - > file`, as a corpus script pipes it, reads as the same
    sound written to a file (whose header sox completes)."""
    synth = ["-r", "16000", "-b", "16", "-t", "wav"]
    tail = ["synth", "0.5", "sine", "440"]
    piped = subprocess.run(["sox", "-D", "-n", *synth, "-", *tail], capture_output=True,
                           check=True).stdout
    (tmp_path / "piped.wav").write_bytes(piped)
    subprocess.run(["sox", "-D", "-n", *synth, str(tmp_path / "file.wav"), *tail], check=True)
    wave = read_audio(tmp_path / "piped.wav")
    assert wave.shape == (8000,) and audio_info(tmp_path / "piped.wav") == (8000, 16000, 1)
    np.testing.assert_array_equal(wave, read_audio(tmp_path / "file.wav"))
    assert np.abs(wave).max() > 0.5


@pytest.mark.parametrize("case,words", [
    ("missing", "not found"),
    ("zero_bytes", "is empty"),
    ("no_samples", "is empty"),
    ("text", "not a file soundfile can read"),
    ("folder", "is a folder"),
    ("nan", "NaN or infinite"),
])
def test_unusable_files_name_the_file_and_the_fix(tmp_path: Path, case: str,
                                                  words: str) -> None:
    path = tmp_path / f"{case}.wav"
    if case == "zero_bytes":
        path.write_bytes(b"")
    elif case == "no_samples":
        sf.write(path, np.zeros(0, np.int16), 16000)
    elif case == "text":
        path.write_text("this is a transcript, not audio\n")
    elif case == "folder":
        path.mkdir()
    elif case == "nan":
        sf.write(path, np.array([0.1, np.nan, 0.2], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(DataError) as e:
        read_audio(path)
    assert str(path) in e.value.message and words in e.value.message
    assert e.value.hint
    if case != "nan":  # the header of a NaN file is fine
        with pytest.raises(DataError, match=words):
            audio_info(path)
