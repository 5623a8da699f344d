"""Filterbank feature extraction rate: tp's fbank (batched and one utterance at a time) against
kaldi-native-fbank and transformers' Speech2TextFeatureExtractor, on real speech.

The corpus: the five LibriVox recordings of Debian's pocketsphinx-testdata (16 kHz, 22.7 s),
cut into `--utterances` random crops of 40-100% of a recording (1.2-7.1 s, seeded), read with
`tp_speech.audio.read_audio`. Every implementation computes 80 log-mel filterbank features
(25 ms / 10 ms, Povey window, no dither) of every utterance; each row times whole passes over
the corpus and reports the best and the median of `--repeats` passes, taken in turns (on a
shared machine the best is the least disturbed), as seconds of audio per second and utterances
per second, with its largest difference from HF's features over the corpus (HF computes in
float64; knf in float32).

- tp batched: utterances sorted by length and cut into batches of `--batch` (as the trainer's
  length buckets feed them), each padded and passed to `fbank` with its lengths; the padding
  and the copy to numpy are in the time.
- tp one by one: `fbank` of each utterance alone.
- kaldi-native-fbank: `OnlineFbank` per utterance (it takes one waveform at a time), frames
  collected into a numpy array.
- HF: `Speech2TextFeatureExtractor(do_ceptral_normalize=False)` per utterance (its batch call
  loops over utterances the same way).
- "+ CMVN" rows: the whole S2T input pipeline, fbank then utterance mean/variance normalisation.

knf and HF use one core (numpy's BLAS is held to one thread); tp runs with `--threads` intra-op
threads (default 1, the same).
Run::

    python benchmarks/fbank_rate.py              # 300 utterances, 5 passes: ~2-3 min on 1 core
    python benchmarks/fbank_rate.py --quick      # 40 utterances, 1 pass: seconds
    python benchmarks/fbank_rate.py --device cuda  # tp's rows on the GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # numpy's BLAS (HF's mel matmul) in one thread, as knf

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import machine  # noqa: E402

from tp_speech.audio import read_audio  # noqa: E402
from tp_speech.fbank import FbankConfig, fbank, utterance_cmvn  # noqa: E402

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
RATE = 16000
Extract = Callable[[list[np.ndarray]], list[np.ndarray]]  # waveforms -> (T, 80) features


def corpus(count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` crops of 40-100% of the LibriVox recordings, cycling through them."""
    recordings = [read_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))]
    if not recordings:
        sys.exit(f"no recordings in {LIBRIVOX}: apt-get install pocketsphinx-testdata")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        wave = recordings[i % len(recordings)]
        n = int(len(wave) * rng.uniform(0.4, 1.0))
        start = int(rng.integers(0, len(wave) - n + 1))
        out.append(wave[start:start + n])
    return out


def tp_batched(config: FbankConfig, batch: int, device: torch.device,
               cmvn: bool = False) -> Extract:
    def run(waves: list[np.ndarray]) -> list[np.ndarray]:
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        out: list[np.ndarray] = [np.empty(0)] * len(waves)
        for at in range(0, len(order), batch):
            rows = order[at:at + batch]
            lengths = torch.tensor([len(waves[i]) for i in rows])
            padded = torch.zeros(len(rows), int(lengths.max()))
            for r, i in enumerate(rows):
                padded[r, :len(waves[i])] = torch.from_numpy(waves[i])
            feats, frames = fbank(padded.to(device), lengths, config)
            if cmvn:
                feats = utterance_cmvn(feats, frames)
            feats = feats.cpu().numpy()
            for r, i in enumerate(rows):
                out[i] = feats[r, :int(frames[r])]
        return out
    return run


def tp_single(config: FbankConfig, device: torch.device) -> Extract:
    def run(waves: list[np.ndarray]) -> list[np.ndarray]:
        return [fbank(torch.from_numpy(w)[None].to(device), None, config)[0][0].cpu().numpy()
                for w in waves]
    return run


def knf_single() -> Extract:
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = 80

    def run(waves: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for wave in waves:
            computer = knf.OnlineFbank(opts)
            computer.accept_waveform(RATE, wave * 32768)
            computer.input_finished()
            out.append(np.array([computer.get_frame(i)
                                 for i in range(computer.num_frames_ready)], np.float32))
        return out
    return run


def hf_single(cmvn: bool = False) -> Extract:
    from transformers import Speech2TextFeatureExtractor

    extractor = Speech2TextFeatureExtractor(do_ceptral_normalize=cmvn)

    def run(waves: list[np.ndarray]) -> list[np.ndarray]:
        return [extractor(w, sampling_rate=RATE)["input_features"][0] for w in waves]
    return run


def timed(extracts: list[Extract], waves: list[np.ndarray], repeats: int,
          device: torch.device) -> tuple[list[list[float]], list[list[np.ndarray]]]:
    """Seconds of each pass of each implementation and its features. Passes go round-robin
    (one of each, `repeats` times), so a burst of load on a shared machine hits them all alike;
    one warm-up pass on a few utterances first."""
    for extract in extracts:
        extract(waves[:4])
    seconds: list[list[float]] = [[] for _ in extracts]
    feats: list[list[np.ndarray]] = [[] for _ in extracts]
    for _ in range(repeats):
        for i, extract in enumerate(extracts):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            feats[i] = extract(waves)
            seconds[i].append(time.perf_counter() - start)
    return seconds, feats


def max_diff(ours: list[np.ndarray], ref: list[np.ndarray]) -> float:
    assert all(a.shape == b.shape for a, b in zip(ours, ref))
    return max(float(np.abs(a - b).max()) for a, b in zip(ours, ref) if a.size)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    waves = corpus(args.utterances)
    audio_s = sum(len(w) for w in waves) / RATE
    f64, f32 = FbankConfig(), FbankConfig(precision="float32")
    rows: list[tuple[str, Extract, str]] = [
        (f"tp batched ({args.batch}/batch, float64)", tp_batched(f64, args.batch, device), "raw"),
        (f"tp batched ({args.batch}/batch, float32)", tp_batched(f32, args.batch, device), "raw"),
        ("tp one by one (float64)", tp_single(f64, device), "raw"),
        ("tp one by one (float32)", tp_single(f32, device), "raw"),
        ("kaldi-native-fbank one by one", knf_single(), "raw"),
        ("HF Speech2TextFeatureExtractor one by one", hf_single(), "raw"),
        (f"tp batched + CMVN ({args.batch}/batch, float64)",
         tp_batched(f64, args.batch, device, cmvn=True), "cmvn"),
        ("HF Speech2TextFeatureExtractor + CMVN", hf_single(cmvn=True), "cmvn"),
    ]
    seconds, feats = timed([extract for _, extract, _ in rows], waves, args.repeats, device)
    reference = {kind: f for (name, _, kind), f in zip(rows, feats) if name.startswith("HF")}
    print(f"## fbank rate: {len(waves)} utterances, {audio_s:.0f} s of LibriVox audio "
          f"(pocketsphinx-testdata), 80 bins, best and median of {args.repeats}\n")
    print(f"{machine(device)}; tp on {device}\n")
    print("| implementation | audio s / s (best) | audio s / s (median) | utterances / s (best) "
          "| max abs diff from HF |")
    print("|---|---:|---:|---:|---:|")
    for (name, _, kind), passes, out in zip(rows, seconds, feats):
        best, median = min(passes), statistics.median(passes)
        diff = "reference" if name.startswith("HF") else f"{max_diff(out, reference[kind]):.1e}"
        print(f"| {name} | {audio_s / best:,.0f} | {audio_s / median:,.0f} | "
              f"{len(waves) / best:,.0f} | {diff} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="40 utterances, 1 pass")
    p.add_argument("--utterances", type=int, default=None, help="corpus size (default 300)")
    p.add_argument("--repeats", type=int, default=None, help="timed passes (default 5)")
    p.add_argument("--batch", type=int, default=16, help="utterances per tp batch")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for tp")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where tp runs")
    args = p.parse_args(argv)
    args.utterances = args.utterances or (40 if args.quick else 300)
    args.repeats = args.repeats or (1 if args.quick else 5)
    return args


if __name__ == "__main__":
    main()
