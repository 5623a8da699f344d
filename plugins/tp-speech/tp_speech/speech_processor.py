"""The `speech` processor: transcribed audio for speech recognition (S2T), stored once, read
with SpecAugment at load time.

Preprocess (`corpus_format = "records"`): the corpus is read by `tp_speech.corpus` (LibriSpeech
folder, `text<TAB>path` TSV, JSONL manifest, Sphinx folder); the transcripts are tokenized by
the recipe's tokenizer in one batch; threads (`--workers`, 0: one a core) decode the audio
(`read_audio`) and, with `store: fbank`, compute its Kaldi log-mel features, one utterance at a
time: libsndfile and torch release the GIL, so the threads run in parallel without forking a
process that holds torch (torch's own thread pool is held to one thread meanwhile, so the two
do not fight for the cores). Per utterance the dataset holds

    features (T, F) float16   Kaldi fbank, per-utterance CMVN applied (store: fbank), or
    waveform (N,) int16       the samples at the 16-bit scale they were recorded at (waveform)
    ids      (L,) int32       the transcript's token ids (no special tokens)
    frames   ()   int32       T, the utterance's frames: `sizes()` for batching by frames

Load: `input_features` (T, F) float32 (the stored features, or fbank + CMVN of the stored
waveform), then SpecAugment drawn from the generator of (seed, epoch, index) when configured;
`tgt_input_ids` = [start] + ids, `lm_labels` = ids + [end], with start = end = `eos` as in HF's
S2T (decoder_start_token_id = eos), `sep` for a vocabulary without `eos`.

Why fbank is stored by default. Measured with `python benchmarks/speech_store.py` (2 runs) on
a 2-core machine shared with other jobs (load average 4-5), over 200 real recordings (the
pocketsphinx LibriVox utterances of 3-7 s, listed 40 times: 16.5 min) and 240 espeak-ng
utterances (14.5 min); fbank in float64 (HF's features to 1e-6), loads on one torch thread as
in a DataLoader worker, SpecAugment on:

    stored           MB per hour of audio   preprocess (x real time)   load / example (median)
    fbank float16    57.4 - 57.5            570 - 1,000                0.22 - 0.32 ms
    waveform int16   115.3                  1,500 - 7,500              1.9 - 3.4 ms

- disk and page cache: half (100 frames/s x 80 x 2 bytes against 16,000 x 2 bytes);
- load: 8-12x cheaper, 0.07 against 0.6-0.7 ms per second of audio: a waveform pays fbank at
  every load, in every epoch, in the DataLoader workers that must keep the accelerator fed
  (fairseq's S2T batch of 40,000 frames, 400 s of audio: ~28 ms of CPU against ~270 ms;
  fbank in float32 instead: 1.3 - 2.0 ms an example);
- preprocess: the features are computed once, 2-7x slower than storing samples but still
  hundreds of times faster than real time (960 h of LibriSpeech in 1-2 h on two busy cores).

float16 costs nothing a model can see: CMVN'd features lie in about [-5, 5] (the LibriVox
recordings: -3.5 to 4.8), where float16 rounds by at most 2^-9 (0.002; mean 0.00014), and the
stored features match HF's Speech2TextFeatureExtractor to that (tests/test_speech_processor.py).
`store: waveform` remains for what needs the samples at load: dither drawn per (seed, epoch,
index), speed perturbation, or models that read raw audio.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Iterator, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from tpcli.data.batch import IGNORE, BatchKey
from tpcli.data.dataset import ExampleDataset, special_id
from tpcli.errors import DataError
from tpcli.model.module import ModuleConfig
from tp_speech.fbank import FbankConfig
from tp_speech.specaugment import SpecAugmentConfig, spec_augment

SKIPPED_SHOWN = 20  # skipped utterances named in meta.json; the counts are always exact
CHUNK = 32  # utterances a thread decodes (and featurises) in a row: one task of the pool
END_TOKENS = ("eos", "sep")  # the decoder start and the transcript's end: the first it has


class SpeechProcessorConfig(ModuleConfig):
    """Options of the `speech` processor (transcribed audio)."""

    sample_rate: int = Field(16000, ge=1000, description="audio is resampled to this rate")
    resample: bool = Field(True, description="audio at another rate is resampled (scipy's "
                           "resample_poly); false: refused, naming the file and its rate")
    store: Literal["fbank", "waveform"] = Field(
        "fbank", description="what the dataset holds per utterance: float16 fbank features "
        "(half the bytes, no feature pass at load) or the int16 waveform (features computed "
        "at every load)")
    features: FbankConfig = Field(default_factory=FbankConfig,
                                  description="Kaldi fbank options (HF S2T's defaults)")
    cmvn: bool = Field(True, description="per-utterance mean and variance normalisation of "
                       "the features (HF Speech2TextFeatureExtractor's do_ceptral_normalize)")
    spec_augment: SpecAugmentConfig | None = Field(
        None, description="SpecAugment at load ({} for the LibriSpeech policy: 2 frequency "
        "masks <= 27 bins, 2 time masks <= 100 frames); null: off")
    max_frames: int | None = Field(
        6000, ge=1, description="the longest utterance kept, in frames (S2T's "
        "max_source_positions); None: no limit")
    too_long: Literal["raise", "skip"] = Field(
        "raise", description="an utterance longer than max_frames: stop with an error naming "
        "it, or skip it (counted in meta.json)")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="an unreadable or empty audio file, a missing file or transcript: "
        "stop with an error naming it, or skip the utterance (counted and listed in meta.json)")
    unknown: Literal["raise", "count"] = Field(
        "raise", description="transcript characters the vocabulary cannot encode: stop with an "
        "error naming the utterance, or keep the unk ids (counted in meta.json)")
    case: Literal["keep", "upper", "lower"] = Field(
        "keep", description="transcripts upper- or lower-cased before tokenizing (LibriSpeech "
        "is upper case, HF S2T's vocabulary lower case)")

    @model_validator(mode="after")
    def _consistent(self) -> "SpeechProcessorConfig":
        if "sample_rate" not in self.features.model_fields_set:
            self.features = self.features.model_copy(update={"sample_rate": self.sample_rate})
        elif self.features.sample_rate != self.sample_rate:
            raise ValueError(f"features.sample_rate ({self.features.sample_rate}) differs from "
                             f"sample_rate ({self.sample_rate}): set sample_rate alone (the "
                             "features take it)")
        return self


def to_int16(waveform: np.ndarray) -> np.ndarray:
    """[-1, 1] float samples at the 16-bit scale (exact for audio read from 16-bit files)."""
    return np.clip(np.rint(waveform * 32768.0), -32768, 32767).astype(np.int16)


def featurise(waveforms: list[np.ndarray], config: SpeechProcessorConfig,
              generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """(T, F) float32 features of each waveform ((N,) float32 in [-1, 1]): one batched fbank
    call, then per-utterance CMVN when configured. What the dataset stores or computes at load,
    and what inference must feed a model trained on it."""
    from tp_speech.fbank import fbank, utterance_cmvn

    if not waveforms:
        return []
    lengths = torch.tensor([len(w) for w in waveforms], dtype=torch.int64)
    batch = torch.zeros(len(waveforms), int(lengths.max()))  # (B, N)
    for row, w in enumerate(waveforms):
        batch[row, :len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    feats, frames = fbank(batch, lengths, config.features, generator)  # (B, T, F), (B,)
    if config.cmvn:
        feats = utterance_cmvn(feats, frames)
    return [feats[row, :int(n)] for row, n in enumerate(frames)]


class SpeechDataset(ExampleDataset):
    """One example per utterance: input_features (T, F), tgt_input_ids (L,), lm_labels (L,)."""

    def __init__(self, store: Any, tokenizer: Any, seed: int,
                 config: SpeechProcessorConfig) -> None:
        super().__init__(store, tokenizer, seed)
        self.config = config
        self.end = special_id(self.special_ids, END_TOKENS, "speech",
                              "the decoder start and the end of each transcript")
        self.vocab_size = int(tokenizer.vocab_size)
        stored = "fbank" if "features" in store.fields else "waveform"
        if stored != config.store:
            raise DataError(f"dataset {store.folder} holds {stored} arrays, but the recipe's "
                            f"speech processor has store: {config.store}",
                            hint=f"set data.processor.store={stored}, or re-run `tp preprocess`")
        self._check_made_alike(store)
        self.frames = store.column("frames").astype(np.int64)  # (n,)

    def _check_made_alike(self, store: Any) -> None:
        """DataError when the stored audio was made with other options than the recipe's: the
        features (fbank store) or the sample rate (waveform store) would silently differ from
        what inference computes."""
        made = ((store.meta.get("processor") or {}).get("options")) or {}
        mine = self.config.model_dump(mode="json")
        names = ("sample_rate",) if self.config.store == "waveform" else \
            ("sample_rate", "features", "cmvn")
        differ = []  # (option, made with, the recipe's), sub-options of `features` one by one
        for name in (n for n in names if n in made):
            if isinstance(made[name], dict):
                differ += [(f"{name}.{k}", made[name].get(k), mine[name].get(k))
                           for k in sorted(set(made[name]) | set(mine[name]))]
            else:
                differ.append((name, made[name], mine[name]))
        for name, was, now in differ:
            if was != now:
                raise DataError(
                    f"dataset {store.folder} was made with data.processor.{name}={was}, but the "
                    f"recipe has {now}: its stored audio differs from what the recipe's model "
                    "is fed at inference",
                    hint=f"set data.processor.{name}={was} as the dataset was made, or re-run "
                    "`tp preprocess` with this recipe")

    def __len__(self) -> int:
        return len(self.frames)

    def sizes(self) -> np.ndarray:
        """Frames per example (what batches by frames and length bucketing read)."""
        return self.frames.copy()

    def features(self, index: int, g: torch.Generator | None = None) -> torch.Tensor:
        """Example `index`'s (T, F) float32 features, before SpecAugment."""
        return self._features(self.store.example(index), g)

    def _features(self, stored: dict[str, np.ndarray], g: torch.Generator | None
                  ) -> torch.Tensor:
        if "features" in stored:  # a copy out of the read-only map
            return torch.from_numpy(np.asarray(stored["features"], dtype=np.float32))
        samples = np.asarray(stored["waveform"], dtype=np.float32) / 32768.0
        return featurise([samples], self.config, g)[0]  # dither, if any, from g

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        stored = self.store.example(index)
        feats = self._features(stored, g)  # (T, F)
        if self.config.spec_augment is not None:
            feats = spec_augment(feats, g, self.config.spec_augment)
        ids = torch.from_numpy(np.asarray(stored["ids"], dtype=np.int64))
        end = torch.tensor([self.end])
        return {"input_features": feats, "tgt_input_ids": torch.cat([end, ids]),
                "lm_labels": torch.cat([ids, end])}

    def batch_keys(self) -> tuple[BatchKey, ...]:
        return (
            BatchKey("input_features", "float32", ("T", self.config.features.features), pad=0.0,
                     mask="attention_mask", unit="frames"),
            BatchKey("tgt_input_ids", "int64", ("T",), pad=self.pad_id,
                     mask="tgt_attention_mask", high=self.vocab_size),
            BatchKey("lm_labels", "int64", ("T",), pad=IGNORE),
        )


class SpeechProcessor:
    """Transcribed audio for an encoder-decoder speech recogniser (S2T)."""

    Config = SpeechProcessorConfig
    corpus_format: ClassVar[str] = "records"

    def __init__(self, config: SpeechProcessorConfig | None = None) -> None:
        self.config = config or SpeechProcessorConfig()
        self._contents: dict[str, Any] = {}

    def fields(self) -> dict[str, tuple[str, tuple[int | None, ...]]]:
        audio = (("features", ("float16", (None, self.config.features.features)))
                 if self.config.store == "fbank" else ("waveform", ("int16", (None,))))
        return {audio[0]: audio[1], "ids": ("int32", (None,)), "frames": ("int32", ())}

    def records(self, corpus: str, tokenizer: Any, workers: int
                ) -> Iterator[dict[str, np.ndarray]]:
        from tp_speech.corpus import read_corpus

        if tokenizer is None:
            raise DataError("the speech processor tokenizes transcripts, and the recipe names no "
                            "tokenizer", hint="name one in data.tokenizer (`tp modules tokenizer`)")
        c = self.config
        read = read_corpus(corpus, c.on_error)
        texts = [self._case(u.text) for u in read.utterances]
        ids = tokenizer.encode_batch(texts)
        unk = self._check_unknown(tokenizer, read.utterances, texts, ids)
        skipped, too_long = list(read.skipped), []
        seconds, kept, unk_tokens, unk_utterances = 0.0, 0, 0, 0
        threads = torch.get_num_threads()
        # The decoding threads are the parallelism: torch's own threads on top of them fight
        # for the cores (2 cores with another job running: 20x real time instead of 900x).
        torch.set_num_threads(1)
        try:
            for index, prepared, error in self._decoded(read.utterances, workers):
                utt = read.utterances[index]
                if prepared is None:
                    skipped.append(error or str(utt.path))
                    continue
                audio, frames, duration = prepared
                if (message := self._too_long(utt, frames, duration)) is not None:
                    too_long.append(message)
                    continue
                seconds += duration
                kept += 1
                if unk is not None and unk in ids[index]:
                    unk_tokens += ids[index].count(unk)
                    unk_utterances += 1
                yield {self.fields_audio: audio, "ids": np.asarray(ids[index], np.int32),
                       "frames": np.int32(frames)}
        finally:
            torch.set_num_threads(threads)
        self._contents = {
            "layout": read.layout, "utterances": kept, "hours": round(seconds / 3600, 4),
            "skipped": len(skipped), "skipped_files": skipped[:SKIPPED_SHOWN],
            "too_long": len(too_long), "too_long_files": too_long[:SKIPPED_SHOWN],
            "unk_tokens": unk_tokens, "utterances_with_unk": unk_utterances}

    def _too_long(self, utt: Any, frames: int, duration: float) -> str | None:
        """None for an utterance within max_frames; else a DataError (too_long=raise) or the
        line that counts it (skip)."""
        limit = self.config.max_frames
        if limit is None or frames <= limit:
            return None
        message = (f"{utt.source}: utterance {utt.uttid} ({utt.path}) has {frames:,} frames "
                   f"({duration:.1f} s), more than max_frames={limit:,}")
        if self.config.too_long == "raise":
            raise DataError(message, hint="raise data.processor.max_frames, or set "
                            "data.processor.too_long=skip to skip such utterances (counted in "
                            "the dataset's meta.json)")
        return message

    @property
    def fields_audio(self) -> str:
        return "features" if self.config.store == "fbank" else "waveform"

    def _case(self, text: str) -> str:
        return {"keep": text, "upper": text.upper(), "lower": text.lower()}[self.config.case]

    def _check_unknown(self, tokenizer: Any, utterances: list[Any], texts: list[str],
                       ids: list[list[int]]) -> int | None:
        """The unk id (None: the vocabulary has none). With unknown=raise, a DataError naming
        the first utterance whose transcript has characters the vocabulary cannot encode."""
        unk = tokenizer.special_ids.get("unk")
        if unk is None or self.config.unknown == "count":
            return unk
        hits = [i for i, row in enumerate(ids) if unk in row]
        if hits:
            i = hits[0]
            chars = sorted({ch for ch in set(texts[i]) if not ch.isspace()
                            and unk in tokenizer.encode_batch([ch])[0]})
            raise DataError(
                f"{utterances[i].source}: the transcript of utterance {utterances[i].uttid} has "
                f"characters the vocabulary cannot encode ({''.join(chars) or 'a word'}), in "
                f"{texts[i][:80]!r}; {len(hits)} of {len(texts)} transcripts have such",
                hint="normalise the transcripts (e.g. data.processor.case=upper or lower), use "
                "a vocabulary trained on them, or set data.processor.unknown=count to keep "
                "unk ids (counted in meta.json)")
        return unk

    def _decoded(self, utterances: list[Any], workers: int
                 ) -> Iterator[tuple[int, tuple[np.ndarray, int, float] | None, str | None]]:
        """(index, (stored audio array, frames, seconds), None) per utterance in order, or
        (index, None, error) for an unusable one with on_error=skip. `workers` threads (0: one
        a core) decode and featurise up to `workers` chunks of CHUNK utterances ahead: libsndfile
        and torch release the GIL, so threads run in parallel without forking torch."""
        chunks = [range(s, min(s + CHUNK, len(utterances)))
                  for s in range(0, len(utterances), CHUNK)]
        window = max(1, workers or os.cpu_count() or 2)

        def load(chunk: range) -> list[tuple[int, Any, str | None]]:
            return [self._prepare(i, utterances[i]) for i in chunk]

        with ThreadPoolExecutor(window, thread_name_prefix="tp-audio") as pool:
            pending = [pool.submit(load, ch) for ch in chunks[:window]]
            for k in range(len(chunks)):
                try:
                    done = pending[k].result()
                finally:
                    if k + window < len(chunks):
                        pending.append(pool.submit(load, chunks[k + window]))
                    pending[k] = None  # type: ignore[call-overload]  # free the chunk
                yield from done

    def _prepare(self, index: int, utt: Any
                 ) -> tuple[int, tuple[np.ndarray, int, float] | None, str | None]:
        """One utterance's stored audio: float16 features or int16 samples, frames, seconds.

        One utterance at a time, not a padded batch: utterances of a chunk differ in length
        (1-35 s in LibriSpeech), and a padded batch computes the padding too (32 espeak-ng
        utterances of 1-7 s, one torch thread: 68 ms batched, 52 ms one by one) in memory
        that grows with the longest of the chunk."""
        from tp_speech.audio import read_audio
        from tp_speech.fbank import num_frames

        c = self.config
        try:
            waveform = read_audio(utt.path, c.sample_rate, c.resample)  # (N,) float32
            frames = num_frames(len(waveform), c.features)
            if frames == 0:
                raise DataError(f"audio file {utt.path} holds {len(waveform)} samples, less "
                                f"than one {c.features.frame_length_ms:g} ms frame",
                                hint="remove the utterance from the corpus")
        except DataError as e:
            if c.on_error == "raise":
                raise DataError(f"{utt.source}: {e.message}",
                                hint=f"{e.hint or 'fix or remove the file'}, or set "
                                "data.processor.on_error=skip to skip such utterances "
                                "(counted in the dataset's meta.json)") from None
            return index, None, f"{utt.source}: {e.message}"
        seconds = len(waveform) / c.sample_rate
        if c.store == "waveform":
            return index, (to_int16(waveform), frames, seconds), None
        # dither (when configured) drawn from the utterance's own seed: the same dataset each run
        g = torch.Generator().manual_seed(index) if c.features.dither > 0 else None
        feats = featurise([waveform], c, g)[0]  # (T, F)
        return index, (feats.numpy().astype(np.float16), frames, seconds), None

    def contents(self) -> dict[str, Any]:
        """Hours, layout, utterances skipped (unreadable, too long), unk counts for meta.json."""
        return dict(self._contents)

    def dataset(self, store: Any, tokenizer: Any, seed: int) -> SpeechDataset:
        return SpeechDataset(store, tokenizer, seed, self.config)

    def seq2seq_layout(self, special: dict[str, int]) -> tuple[int | None, list[int], list[int]]:
        """(decoder start id, ids before a source, after it): the decoder starts with eos (else
        sep), as this processor trains it; the source is audio, so nothing goes around it."""
        return next((special[r] for r in END_TOKENS if r in special), None), [], []

