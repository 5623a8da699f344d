"""What the `speech` processor should store per utterance: float16 fbank or the int16 waveform.

For each choice (and the waveform with fbank computed in float32 rather than the default
float64) on two corpora, real recordings (the pocketsphinx LibriVox utterances, listed
`--repeat` times) and espeak-ng speech (scripts/synth_speech.py, `--synth` utterances), prints:

- preprocess speed: seconds of audio turned into a dataset per wall-clock second (the
  processor's records written by tp's ArrayWriter, as `tp preprocess` does, `--workers` threads);
- bytes on disk per hour of audio (every file of the dataset folder);
- load time per example, as a DataLoader worker pays it: `dataset[i]` over every example in a
  random order (features, CMVN, SpecAugment with the LibriSpeech policy, ids), each example's
  best of 3 passes; the median over examples, and the median per second of audio
  (`--no-augment`: without SpecAugment).

Preprocess speed is one run: on a busy machine, run it twice.

    python benchmarks/speech_store.py [--repeat 40] [--synth 240] [--workers 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
PASSES = 3  # loads of each example; its fastest counts (the machine may be shared)


def synth_corpus(out: Path, utterances: int) -> Path:
    spec = importlib.util.spec_from_file_location("synth_speech",
                                                  ROOT / "scripts" / "synth_speech.py")
    synth = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(synth)  # type: ignore[union-attr]
    synth.main([str(out), "--utterances", str(utterances), "--speakers", "4"])
    return out


def real_corpus(out: Path, repeat: int) -> Path:
    """The LibriVox recordings listed `repeat` times in a `text<TAB>path` TSV."""
    from tp_speech.corpus import read_corpus

    rows = [f"{u.text.upper()}\t{u.path}" for u in read_corpus(LIBRIVOX).utterances]
    out.write_text("\n".join(rows * repeat) + "\n")
    return out


def tokenizer(corpora: list[Path], folder: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tp_speech.corpus import read_corpus
    from tp_text.unigram import UnigramConfig, UnigramTokenizer

    texts = [u.text.upper() for c in corpora for u in read_corpus(c).utterances]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>",
        show_progress=False))
    tok.save(str(folder / "tok.json"))
    return UnigramTokenizer(UnigramConfig(tokenizer_json="tok.json", mask_token=None), folder)


def warm_up(corpus: Path) -> None:
    """Pay the first-use costs (scipy's and soundfile's imports, torch's first FFT) before
    anything is timed."""
    from tp_speech.audio import read_audio
    from tp_speech.corpus import read_corpus
    from tp_speech.speech_processor import SpeechProcessorConfig, featurise

    for options in ({}, {"features": {"precision": "float32"}}):
        featurise([read_audio(read_corpus(corpus).utterances[0].path)],
                  SpeechProcessorConfig(**options))


def measure(corpus: Path, out: Path, tok: Any, options: dict[str, Any], workers: int,
            augment: bool) -> dict[str, float]:
    from tp_speech.speech_processor import SpeechProcessor, SpeechProcessorConfig
    from tpcli.data.arrays import ArrayReader, ArrayWriter

    processor = SpeechProcessor(SpeechProcessorConfig(**options))
    start = time.perf_counter()
    with ArrayWriter(out, processor.fields(), {}) as writer:
        for record in processor.records(str(corpus), tok, workers):
            writer.append(record)
        writer.finish()
    seconds = time.perf_counter() - start
    hours = processor.contents()["hours"]
    size = sum(p.stat().st_size for p in out.iterdir())
    store = ArrayReader(out)
    augmented = SpeechProcessorConfig(**options, spec_augment={} if augment else None)
    dataset = SpeechProcessor(augmented).dataset(store, tok, seed=0)
    order = np.random.default_rng(0).permutation(len(dataset))
    dataset[int(order[0])]  # warm-up: maps opened, first-call costs paid
    took = np.full(len(dataset), np.inf)  # each example's best of PASSES loads
    for _ in range(PASSES):
        for i in order:
            start = time.perf_counter()
            dataset[int(i)]
            took[i] = min(took[i], time.perf_counter() - start)
    per_s = took / (dataset.sizes() / 100.0)  # 100 frames a second
    return {"examples": len(dataset), "hours": hours, "speed": hours * 3600 / seconds,
            "mb_per_hour": size / hours / 1e6, "load_ms": float(np.median(took)) * 1e3,
            "load_ms_per_s": float(np.median(per_s)) * 1e3}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=40, help="LibriVox list repeats")
    p.add_argument("--synth", type=int, default=240, help="espeak-ng utterances")
    p.add_argument("--workers", type=int, default=2, help="decoding threads")
    p.add_argument("--threads", type=int, default=1, help="torch threads while loading (1: "
                   "as in a DataLoader worker)")
    p.add_argument("--no-augment", action="store_true", help="load without SpecAugment")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="speech-store-"))
    try:
        corpora = {"espeak-ng": synth_corpus(work / "synth", a.synth)}
        if LIBRIVOX.is_dir():
            corpora["LibriVox"] = real_corpus(work / "real.tsv", a.repeat)
        tok = tokenizer(list(corpora.values()), work)
        warm_up(corpora["espeak-ng"])
        choices = {"fbank float16": {"store": "fbank", "case": "upper"},
                   "waveform int16": {"store": "waveform", "case": "upper"},
                   "waveform int16, fbank in float32": {
                       "store": "waveform", "case": "upper",
                       "features": {"precision": "float32"}}}
        print("| corpus | stored | utterances | audio | preprocess (x real time) | MB per hour "
              "| load ms / example (median) | load ms per s of audio |")
        print("|---|---|---|---|---|---|---|---|")
        for cname, corpus in corpora.items():
            for sname, options in choices.items():
                out = work / f"{cname}-{sname}".replace(" ", "_").replace(",", "")
                r = measure(corpus, out, tok, options, a.workers, not a.no_augment)
                print(f"| {cname} | {sname} | {r['examples']} | {r['hours'] * 60:.1f} min | "
                      f"{r['speed']:.0f} | {r['mb_per_hour']:.1f} | {r['load_ms']:.2f} | "
                      f"{r['load_ms_per_s']:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
