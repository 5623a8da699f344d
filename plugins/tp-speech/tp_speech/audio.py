"""Audio files to mono float32 waveforms: how tp reads every recording, at preprocess time and in
`tp infer`.

`read_audio` returns the samples of a WAV, FLAC or Ogg/Vorbis file (anything libsndfile reads,
through `soundfile`) as one channel at the requested rate: channels are averaged (a stereo
recording of one speaker has the same speech in both), another rate is resampled with
`scipy.signal.resample_poly` (a polyphase FIR filter: exact rational ratios such as 44100 ->
16000 = 160/441, no drift in length) or refused when the caller says so. `audio_info` reads only
the header. Both raise `DataError` naming the file and the fix for a file that is missing, not
audio, corrupt, truncated or empty: a recording silently cut short would be trained on with the
whole transcript, which teaches the model to hallucinate.

Scale: integer PCM is divided by 2^(bits - 1), so 16-bit samples come back as k / 32768, which
`fbank` multiplies back to the integers Kaldi reads. Float files come back as stored (not
clipped), and so does the small overshoot a resampling filter may add to a full-scale signal.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from tpcli.errors import DataError, clip

Source = str | Path | BinaryIO
# libsndfile's log line for a WAV whose data chunk is shorter than its header says
_SHORT_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# a WAV header written to a pipe cannot know the length and says "huge": sox and espeak-ng
# write 0x7FFFF000, ffmpeg 0xFFFFFFFF; libsndfile then reads to the end of the file
_STREAMED = 0x7FFF0000


class AudioError(DataError):
    """An audio file that cannot be used (missing, not audio, corrupt, truncated, empty, or at a
    sample rate the caller will not resample)."""


def audio_info(source: Source, name: str | None = None) -> tuple[int, int, int]:
    """(num_samples, sample_rate, channels) of an audio file, from its header (fast: nothing is
    decoded). `name` labels a file object in messages. AudioError for a missing, unreadable,
    truncated or empty file."""
    label = _label(source, name)
    info = _info(source, label)
    return info.frames, info.samplerate, info.channels


def read_audio(source: Source, sample_rate: int = 16000, resample: bool = True,
               name: str | None = None) -> np.ndarray:
    """The file's samples (N,) float32, mono (channels averaged), at `sample_rate` Hz: another
    rate is resampled, or refused with AudioError when `resample` is False. `name` labels a file
    object in messages. AudioError for a missing, unreadable, truncated or empty file, or one
    holding NaN or infinite samples."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    label = _label(source, name)
    info = _info(source, label)
    if info.samplerate != sample_rate and not resample:
        raise AudioError(f"audio {label} is sampled at {info.samplerate} Hz, not the "
                         f"{sample_rate} Hz the recipe expects",
                         hint=f"resample the corpus (sox IN -r {sample_rate} OUT), or let tp "
                         "resample it as it reads (resample: true)")
    try:
        if not isinstance(source, (str, Path)):
            source.seek(0)
        data, rate = sf.read(source, dtype="float32", always_2d=True)  # (N, C)
    except Exception as e:  # libsndfile reports corrupt and truncated data alike
        raise AudioError(f"audio {label} is corrupt or truncated ({_reason(e)})",
                         hint="re-download or re-encode the file, or remove it from the "
                         "corpus") from e
    if data.shape[0] == 0:
        raise _empty(label)
    if not np.isfinite(data).all():
        raise AudioError(f"audio {label} holds NaN or infinite samples",
                         hint="re-export the file from its source; a float WAV written from a "
                         "failed computation carries them")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]  # (N,)
    if rate != sample_rate:
        wave = resample_to(wave, rate, sample_rate)
    return np.ascontiguousarray(wave, dtype=np.float32)


def resample_to(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """`wave` (N,) at `rate` Hz resampled to `target` Hz: ceil(N * target / rate) samples,
    through scipy's polyphase filter on the reduced ratio (Kaiser window, scipy's default)."""
    g = math.gcd(rate, target)
    out = resample_poly(wave.astype(np.float64), target // g, rate // g)
    return out.astype(np.float32)


def _info(source: Source, label: str) -> Any:
    """The header of `source`, or AudioError saying what is wrong with it."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise AudioError(f"audio {label} not found", hint="check the path (relative paths "
                             "are read from the corpus's folder or the current one) and that "
                             "the file exists")
        if path.is_dir():
            raise AudioError(f"audio {label} is a folder, not a file", hint="point at the "
                             "audio file itself")
        if path.stat().st_size == 0:
            raise _empty(label)
    try:
        info = sf.info(source)
    except Exception as e:
        reason = _reason(e)
        if "not recognised" not in reason:  # a known format, broken: "file is malformed"
            raise AudioError(f"audio {label} is corrupt or truncated ({reason})",
                             hint="re-download or re-encode the file, or remove it from the "
                             "corpus") from e
        raise AudioError(f"audio {label} is not a file soundfile can read ({reason})",
                         hint="use WAV, FLAC or Ogg/Vorbis (convert with: sox IN OUT.flac), "
                         "or remove the file from the corpus") from e
    finally:
        if not isinstance(source, (str, Path)):
            source.seek(0)
    _check_complete(info, label)
    if info.frames == 0:
        raise _empty(label)
    return info


def _check_complete(info: Any, label: str) -> None:
    """AudioError when libsndfile found less data than the header declares: a WAV cut short
    (libsndfile then quietly reads what is there) or an Ogg stream without its end."""
    log = info.extra_info
    short = _SHORT_DATA.search(log)
    if short:
        declared, present = int(short.group(1)), int(short.group(2))
        if present + 1 < declared < _STREAMED:  # more than a pad byte missing
            raise AudioError(f"audio {label} is truncated: its header declares {declared:,} "
                             f"bytes of samples, the file holds {present:,}",
                             hint="re-download or re-copy the file (an interrupted transfer "
                             "leaves this), or remove it from the corpus")
    if "File ended unexpectedly" in log:
        raise AudioError(f"audio {label} is truncated: the Ogg stream ends without its last "
                         "page", hint="re-download or re-encode the file, or remove it from the "
                         "corpus")


def _empty(label: str) -> AudioError:
    return AudioError(f"audio {label} is empty (no samples)",
                      hint="remove it from the corpus, or re-export the recording")


def _label(source: Source, name: str | None) -> str:
    if name is not None:
        return clip(name, 200)
    if isinstance(source, (str, Path)):
        return clip(str(source), 200)
    return clip(str(getattr(source, "name", "<file object>")), 200)


def _reason(e: Exception) -> str:
    """libsndfile's own words ("Format not recognised", "flac decoder lost sync"), without the
    path it repeats."""
    text = str(e).strip()
    if text.startswith("Error opening") and ": " in text:
        text = text.split(": ", 1)[1]
    return text.removeprefix("Error : ").rstrip(".")
