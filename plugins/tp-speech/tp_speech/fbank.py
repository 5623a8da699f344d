"""Log-mel filterbank features as Kaldi computes them (`compute-fbank-feats`), in plain torch,
for a padded batch of waveforms at once.

Why not torchaudio: it does not install beside this torch. Why Kaldi's recipe and not librosa's:
every S2T checkpoint (fairseq, HF `Speech2TextFeatureExtractor`) was trained on Kaldi fbank, and
a model only transcribes well the features it was trained on.

Per frame, in Kaldi's order: cut `frame_length` samples every `frame_shift` (snip_edges: only
frames that fit; otherwise frames centred on multiples of the shift, the edges mirrored), add
dither, remove the frame's mean (DC offset), take the raw log energy (optional), pre-emphasise
(x[i] -= 0.97 x[i-1], x[0] -= 0.97 x[0]), multiply by the window (Povey's: a Hann window raised
to 0.85), zero-pad to a power of two, take |FFT|^2, sum through triangular mel filters (Kaldi's:
triangles in mel space over the FFT bins below Nyquist, mel = 1127 ln(1 + f / 700)), floor at
float32's epsilon and take the log.

Batching: a row of the batch gives exactly the frames it gives alone; frames past a row's own
count are zero (`frames` says how many are real) and cost nothing. The real frames of the whole
batch are gathered from a (B, T, L) view and go through the FFT and the mel matmul together, in
cache-sized chunks on a CPU, not in a Python loop over utterances.

Waveforms come in [-1, 1] (what `read_audio` returns) and are multiplied by 32768 first: Kaldi
reads 16-bit integers, so its log energies sit at that scale, and so do HF's features.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from tpcli.errors import TpError
from tpcli.model.module import ModuleConfig

FLT_EPSILON = float(np.finfo(np.float32).eps)  # Kaldi's floor under the mel energies' log
FLT_MIN = float(np.finfo(np.float32).tiny)  # Kaldi's floor under the windowed energy's log
# frames per pass on a CPU, so that a pass's intermediates (~8 KB a frame in float64) stay in
# cache: a 16-utterance batch in one pass ran at half the rate (benchmarks/fbank_rate.py)
CHUNK_FRAMES = 512
Window = Literal["povey", "hanning", "hamming", "rectangular", "blackman", "sine"]


class FbankConfig(ModuleConfig):
    """Kaldi's fbank options with the defaults HF's Speech2TextFeatureExtractor (and fairseq's
    S2T data preparation) use: 80 bins, 25 ms frames every 10 ms, Povey window, no dither."""

    sample_rate: int = Field(16000, ge=1, description="sample rate of the waveforms in Hz")
    num_mel_bins: int = Field(80, ge=1, description="mel filters: features per frame")
    frame_length_ms: float = Field(25.0, gt=0, description="frame length in milliseconds")
    frame_shift_ms: float = Field(10.0, gt=0, description="frame shift in milliseconds")
    window: Window = Field("povey", description="window function (Kaldi's names)")
    blackman_coeff: float = Field(0.42, description="the blackman window's coefficient")
    preemphasis: float = Field(0.97, ge=0.0, le=1.0, description="pre-emphasis coefficient "
                               "(0: none)")
    remove_dc_offset: bool = Field(True, description="subtract each frame's mean first")
    dither: float = Field(0.0, ge=0.0, description="standard deviation of the Gaussian noise "
                          "added to each frame, at the 16-bit scale (0: none, the default: "
                          "features are then a function of the audio alone)")
    snip_edges: bool = Field(True, description="only frames that fit in the signal (Kaldi's "
                             "default); false: one frame per shift, edges mirrored")
    round_to_power_of_two: bool = Field(True, description="zero-pad each frame to a power of "
                                        "two for the FFT")
    low_freq: float = Field(20.0, ge=0.0, description="lowest mel filter edge in Hz")
    high_freq: float = Field(0.0, description="highest mel filter edge in Hz; zero or "
                             "negative: that much below Nyquist")
    use_energy: bool = Field(False, description="add the frame's log energy as a feature")
    raw_energy: bool = Field(True, description="energy before pre-emphasis and window")
    energy_floor: float = Field(0.0, ge=0.0, description="floor of the energy feature (0: none)")
    htk_compat: bool = Field(False, description="energy as the last feature, not the first")
    log_floor: float = Field(FLT_EPSILON, gt=0.0, description="floor under the mel energies "
                             "before the log (Kaldi: float32 epsilon)")
    scale: float = Field(32768.0, gt=0.0, description="multiplies the waveform first ([-1, 1] "
                         "to the 16-bit scale Kaldi reads)")
    precision: Literal["float64", "float32"] = Field(
        "float64", description="arithmetic of the computation (features are float32 either "
        "way): float64 gives HF's features to 2e-6; float32 is about twice as fast and, like "
        "kaldi-native-fbank, off by up to ~1e-2 in quiet frames' narrow low-frequency filters")

    @property
    def window_size(self) -> int:
        """Samples per frame (Kaldi truncates, as here)."""
        return int(self.sample_rate * 0.001 * self.frame_length_ms)

    @property
    def window_shift(self) -> int:
        return int(self.sample_rate * 0.001 * self.frame_shift_ms)

    @property
    def fft_size(self) -> int:
        n = self.window_size
        return 1 << (n - 1).bit_length() if self.round_to_power_of_two else n

    @property
    def features(self) -> int:
        """Features per frame: the mel bins, plus one with `use_energy`."""
        return self.num_mel_bins + int(self.use_energy)

    @model_validator(mode="after")
    def _filters_fit(self) -> "FbankConfig":
        """Mel edges outside (0, Nyquist] or a frame under two samples cannot make filters."""
        nyquist = self.sample_rate / 2
        high = self.high_freq if self.high_freq > 0 else nyquist + self.high_freq
        if not 0 <= self.low_freq < high <= nyquist:
            raise ValueError(f"mel filters need 0 <= low_freq < high_freq <= Nyquist "
                             f"({nyquist:g} Hz); got low_freq={self.low_freq:g}, "
                             f"high_freq={high:g}")
        if self.window_size < 2 or self.window_shift < 1:
            raise ValueError(f"frames of {self.window_size} samples every {self.window_shift} "
                             f"at {self.sample_rate} Hz: raise frame_length_ms / frame_shift_ms")
        return self


def num_frames(num_samples: int, config: FbankConfig) -> int:
    """Frames `fbank` makes of `num_samples` samples (Kaldi's NumFrames, flushed)."""
    length, shift = config.window_size, config.window_shift
    if config.snip_edges:
        return 0 if num_samples < length else 1 + (num_samples - length) // shift
    return (num_samples + shift // 2) // shift


def fbank(waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
          config: FbankConfig | None = None, generator: torch.Generator | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (B, T, F) float32 and real frames per row (B,) int64 of a padded batch of
    waveforms (B, N) (or one (N,)) in [-1, 1] with `lengths` (B,) real samples per row (None:
    all N). Frames past a row's count are zero. `generator` draws the dither (only used when
    dither > 0)."""
    config = config or FbankConfig()
    waveforms = torch.as_tensor(waveforms)  # a numpy array works too
    if waveforms.dim() == 1:
        waveforms = waveforms[None]
    if waveforms.dim() != 2:
        raise TpError(f"fbank takes waveforms (B, N) or (N,), got shape {tuple(waveforms.shape)}",
                      hint="stack mono waveforms into a padded batch (read_audio downmixes)")
    batch, width = waveforms.shape
    if lengths is None:
        lengths = torch.full((batch,), width, dtype=torch.int64)
    lengths = torch.as_tensor(lengths, dtype=torch.int64).cpu()
    if lengths.shape != (batch,) or bool((lengths > width).any() or (lengths < 0).any()):
        raise TpError(f"fbank: lengths {lengths.tolist()} do not fit waveforms of shape "
                      f"{tuple(waveforms.shape)}", hint="pass one length per row, each at most N")
    frames = torch.tensor([num_frames(int(n), config) for n in lengths], dtype=torch.int64)
    t_max = int(frames.max()) if batch else 0
    if t_max == 0:
        return waveforms.new_zeros(batch, 0, config.features, dtype=torch.float32), frames
    dtype = torch.float64 if config.precision == "float64" else torch.float32
    x = frame_signal(waveforms.to(dtype) * config.scale, lengths, t_max, config)  # (B, T, L)
    out = torch.zeros(batch, t_max, config.features, dtype=torch.float32, device=x.device)
    real = torch.arange(t_max, device=x.device)[None, :] < frames.to(x.device)[:, None]
    rows, cols = real.nonzero(as_tuple=True)  # the real frames only: padding costs nothing
    chunk = CHUNK_FRAMES if x.device.type == "cpu" else rows.numel()
    for at in range(0, rows.numel(), chunk):
        r, c = rows[at:at + chunk], cols[at:at + chunk]
        out[r, c] = frame_features(x[r, c], config, generator).to(torch.float32)  # (n, F)
    return out, frames


def frame_signal(waveforms: torch.Tensor, lengths: torch.Tensor, t_max: int,
                 config: FbankConfig) -> torch.Tensor:
    """The frames (B, T, L) of scaled waveforms (B, N), L = window_size. With snip_edges every
    frame lies inside its row, so frames are a strided view; otherwise each row is first
    mirrored at both of its own ends (Kaldi: -1 -> 0, n -> n - 1, repeated as needed)."""
    length, shift = config.window_size, config.window_shift
    need = (t_max - 1) * shift + length  # samples the last frame reaches
    if config.snip_edges:
        if waveforms.shape[1] < need:  # only rows without that frame lack the samples
            waveforms = torch.nn.functional.pad(waveforms, (0, need - waveforms.shape[1]))
        return waveforms.unfold(1, length, shift)  # (B, T, L)
    first = shift // 2 - length // 2  # where frame 0 starts (negative: before the signal)
    rows = []
    for row, n in zip(waveforms, lengths.tolist()):
        if n == 0:
            rows.append(row.new_zeros(need))
            continue
        idx = torch.arange(first, first + need, device=row.device) % (2 * n)
        rows.append(row[torch.where(idx < n, idx, 2 * n - 1 - idx)])  # mirror, period 2n
    return torch.stack(rows).unfold(1, length, shift)  # (B, T, L)


def frame_features(x: torch.Tensor, config: FbankConfig,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Log-mel features (..., F) of frames (..., L) (a view is fine: it is not written), as
    Kaldi's ProcessWindow + Fbank, in x's dtype."""
    if config.dither > 0:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x + config.dither * noise
    x = x - x.mean(dim=-1, keepdim=True) if config.remove_dc_offset else x.clone()
    energy = None
    if config.use_energy and config.raw_energy:
        energy = x.square().sum(-1).clamp_min(FLT_EPSILON).log()  # (...,)
    if config.preemphasis > 0:  # into a new tensor: in place would read written samples
        k, y = config.preemphasis, x
        x = torch.empty_like(y)
        torch.sub(y[..., 1:], y[..., :-1], alpha=k, out=x[..., 1:])
        torch.mul(y[..., :1], 1 - k, out=x[..., :1])
    window, banks = _filters(config, x.device, x.dtype)
    x.mul_(window)
    if config.use_energy and not config.raw_energy:
        energy = x.square().sum(-1).clamp_min(FLT_MIN).log()
    spectrum = torch.view_as_real(torch.fft.rfft(x, n=config.fft_size))  # (..., K, 2)
    re, im = spectrum[..., 0], spectrum[..., 1]
    power = torch.addcmul(re.square(), im, im)  # (..., K): faster than complex abs()
    mel = power @ banks.T  # (..., num_mel_bins)
    feats = mel.clamp_min_(config.log_floor).log_()
    if energy is None:
        return feats
    if config.energy_floor > 0:
        energy = energy.clamp_min(math.log(config.energy_floor))
    parts = [feats, energy[..., None]] if config.htk_compat else [energy[..., None], feats]
    return torch.cat(parts, dim=-1)


def _filters(config: FbankConfig, device: torch.device,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The window (L,) and mel filters (M, K), cached: building them takes longer than the
    features of a 1-second utterance. Read-only (frame_features never writes them)."""
    key = (config.window, config.blackman_coeff, config.window_size, config.num_mel_bins,
           config.fft_size, config.sample_rate, config.low_freq, config.high_freq, str(device),
           dtype)
    if key not in _FILTERS:
        if len(_FILTERS) >= 16:
            _FILTERS.clear()
        _FILTERS[key] = (window_function(config, device, dtype), mel_banks(config, device, dtype))
    return _FILTERS[key]


_FILTERS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def window_function(config: FbankConfig, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The window (L,), computed in float64 as Kaldi does (symmetric: N - 1 in the
    denominator, so the Povey window is zero at both ends)."""
    n = config.window_size
    a = 2 * math.pi * torch.arange(n, dtype=torch.float64) / (n - 1)
    windows = {
        "povey": lambda: (0.5 - 0.5 * torch.cos(a)).pow(0.85),
        "hanning": lambda: 0.5 - 0.5 * torch.cos(a),
        "hamming": lambda: 0.54 - 0.46 * torch.cos(a),
        "rectangular": lambda: torch.ones(n, dtype=torch.float64),
        "blackman": lambda: (config.blackman_coeff - 0.5 * torch.cos(a)
                             + (0.5 - config.blackman_coeff) * torch.cos(2 * a)),
        "sine": lambda: torch.sin(0.5 * a),
    }
    return windows[config.window]().to(device, dtype)


def mel_scale(freq: torch.Tensor | float) -> torch.Tensor:
    """Hz to mel, Kaldi's (and HTK's) natural-log form."""
    return 1127.0 * torch.log1p(torch.as_tensor(freq, dtype=torch.float64) / 700.0)


def mel_banks(config: FbankConfig, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Kaldi's mel filters (num_mel_bins, fft_size/2 + 1), computed in float64: filter m rises
    linearly in mel from edge m to its centre m + 1 and falls to edge m + 2, the
    num_mel_bins + 2 edges evenly spaced in mel between low_freq and high_freq. Kaldi weighs
    only the fft_size/2 bins below Nyquist; the Nyquist bin's column is zero."""
    nyquist = config.sample_rate / 2
    high = config.high_freq if config.high_freq > 0 else nyquist + config.high_freq
    bins = config.fft_size // 2
    lo, hi = mel_scale(config.low_freq), mel_scale(high)
    step = (hi - lo) / (config.num_mel_bins + 1)
    left = lo + step * torch.arange(config.num_mel_bins, dtype=torch.float64)[:, None]  # (M, 1)
    centre, right = left + step, left + 2 * step
    mel = mel_scale(torch.arange(bins, dtype=torch.float64) * config.sample_rate
                    / config.fft_size)[None, :]  # (1, bins)
    up, down = (mel - left) / (centre - left), (right - mel) / (right - centre)
    weights = torch.where(mel <= centre, up, down).clamp_min(0.0)
    weights = torch.where((mel > left) & (mel < right), weights, torch.zeros(()))
    banks = torch.zeros(config.num_mel_bins, bins + 1, dtype=torch.float64)
    banks[:, :bins] = weights
    return banks.to(device, dtype)


def utterance_cmvn(features: torch.Tensor, frames: torch.Tensor | None = None,
                   eps: float = 0.0) -> torch.Tensor:
    """Each utterance's features (B, T, F) (or one (T, F)) made zero-mean and unit-variance per
    feature over its own real frames (the first `frames[b]`; None: all T), padding rows set to
    0, as HF's Speech2TextFeatureExtractor (population standard deviation, no epsilon). The
    statistics are taken in float64 (HF's float32 ones are 2e-5 off on noise-like features);
    the result has the features' dtype. A feature constant over an utterance (a filter floored
    in digital silence) has no spread to divide by: HF gives NaN there, this gives 0 (its mean
    removed), or pass `eps` to add it to the deviation."""
    single = features.dim() == 2
    x = (features[None] if single else features).to(torch.float64)  # (B, T, F)
    batch, t_max, _ = x.shape
    if frames is None:
        frames = torch.full((batch,), t_max, dtype=torch.int64)
    frames = torch.as_tensor(frames, device=x.device)
    real = torch.arange(t_max, device=x.device)[None, :] < frames[:, None]  # (B, T)
    real = real.to(x.dtype)[..., None]  # (B, T, 1): 1 on real frames, 0 on padding
    count = frames.clamp_min(1).to(x.dtype)[:, None, None]  # (B, 1, 1)
    mean = (x * real).sum(1, keepdim=True) / count  # (B, 1, F)
    centred = (x - mean).mul_(real)
    std = (centred.square().sum(1, keepdim=True) / count).sqrt_().add_(eps)
    inverse = torch.where(std > 0, 1 / std, 0.0)  # (B, 1, F)
    out = centred.mul_(inverse).to(features.dtype)
    return out[0] if single else out
