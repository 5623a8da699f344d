"""The `speech` processor end to end: `tp preprocess` of a tiny S2T recipe (a Unigram vocabulary
trained on the transcripts) over synthesised (espeak-ng) and real (pocketsphinx LibriVox)
recordings; stored features against Hugging Face's Speech2TextFeatureExtractor; the dataset's
keys, shapes and sizes; SpecAugment as a function of (seed, epoch, index); bad input refused
with one paragraph and nothing written, or skipped and counted."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch

from tp_speech.audio import read_audio
from tp_speech.corpus import read_corpus
from tp_speech.speech_processor import SpeechProcessor, SpeechProcessorConfig, featurise
from tpcli.data.arrays import ArrayReader
from tpcli.data.masking import example_generator
from tpcli.data.preprocess import run_preprocess
from tpcli.errors import DataError
from tpcli.plugins.requests import PreprocessRequest

ROOT = Path(__file__).resolve().parents[3]
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
EOS = 2  # HF S2T: <s>=0, <pad>=1, </s>=2, <unk>=3
F16_STEP = 2.0 ** -8  # float16's spacing in [4, 8): CMVN'd features stay below 8

RECIPE = """
model:
  hidden_size: 32
  dropout: 0.0
  embedding_norm: none
  embedding: [{{name: speech, features: 80, kernel_sizes: [5, 5], conv_channels: 32}}]
  encoder: {{name: transformer, layers: 1, heads: 2, ffn_size: 64, pre_norm: true}}
  tgt_embedding: [word, sinusoidalpos]
  decoder: {{name: transformer, layers: 1, heads: 2, ffn_size: 64, pre_norm: true}}
  target: [lm]
data:
  tokenizer: {{name: unigram, tokenizer_json: tok.json, mask_token: null}}
  processor: {{name: speech{processor}}}
pretrain: {{steps: 2, batch_size: 4, log_every: 1, save_every: 2}}
"""

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox are not installed")


def tp(*args: str) -> subprocess.CompletedProcess:
    """`tp ARGS` in a fresh process, offline, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "tpcli.cli.main", *args], capture_output=True,
                          text=True, env={"HF_HUB_OFFLINE": "1", "TP_PEAK_FLOPS": "1e12",
                                          "PATH": "/usr/bin:/bin"})


def train_vocabulary(texts: list[str], out: Path) -> None:
    """A tiny SentencePiece-style Unigram vocabulary with S2T's special ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(
        vocab_size=120, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>",
        show_progress=False))
    tok.save(str(out))


class Setup:
    """A synthesised corpus, a recipe over it, and helpers to preprocess and read datasets."""

    def __init__(self, base: Path) -> None:
        spec = importlib.util.spec_from_file_location("synth_speech",
                                                      ROOT / "scripts" / "synth_speech.py")
        synth = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(synth)  # type: ignore[union-attr]
        self.base, self.corpus = base, base / "corpus"
        synth.main([str(self.corpus), "--utterances", "8", "--speakers", "2"])
        self.utterances = read_corpus(self.corpus).utterances
        self.texts = [u.text for u in self.utterances]
        real = [u.text.upper() for u in read_corpus(LIBRIVOX).utterances] \
            if LIBRIVOX.is_dir() else []
        self.recipe = self.write_recipe("recipe")
        train_vocabulary(self.texts + real, self.recipe / "tok.json")

    def write_recipe(self, name: str, processor: str = "") -> Path:
        folder = self.base / name
        folder.mkdir(exist_ok=True)
        (folder / "recipe.yaml").write_text(RECIPE.format(processor=processor))
        if folder != self.base / "recipe":
            shutil.copy(self.base / "recipe" / "tok.json", folder / "tok.json")
        return folder

    def tokenizer(self) -> Any:
        from tp_text.unigram import UnigramConfig, UnigramTokenizer

        return UnigramTokenizer(UnigramConfig(tokenizer_json="tok.json", mask_token=None),
                                self.recipe)

    def preprocess(self, out: str, corpus: Path | None = None, *overrides: str,
                   workers: int = 2) -> ArrayReader:
        run_preprocess(PreprocessRequest(str(self.recipe), str(corpus or self.corpus),
                                         self.base / out, list(overrides), workers=workers))
        return ArrayReader(self.base / out)

    def dataset(self, reader: ArrayReader, seed: int = 0, **options: Any) -> Any:
        return SpeechProcessor(SpeechProcessorConfig(**options)).dataset(reader,
                                                                           self.tokenizer(), seed)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="module")
def hf_features() -> Any:
    transformers = pytest.importorskip("transformers")
    extractor = transformers.Speech2TextFeatureExtractor()  # 80 bins, utterance CMVN

    def features(path: Path) -> np.ndarray:
        samples, rate = soundfile.read(str(path), dtype="float32")
        return extractor(samples, sampling_rate=rate, return_tensors="np")["input_features"][0]

    return features


def test_tp_preprocess_makes_the_declared_examples(setup: Setup, hf_features: Any) -> None:
    out = setup.base / "cli"
    r = tp("preprocess", str(setup.recipe), "--corpus", str(setup.corpus), "--out", str(out))
    assert r.returncode == 0, r.stderr
    store = ArrayReader(out)
    assert store.fields == {"features": ("float16", (None, 80)), "ids": ("int32", (None,)),
                            "frames": ("int32", ())}
    seconds = sum(soundfile.info(str(u.path)).frames for u in setup.utterances) / 16000
    contents = store.meta["contents"]
    assert contents["utterances"] == 8 and contents["layout"] == "librispeech"
    assert contents["hours"] == pytest.approx(seconds / 3600, abs=1e-4)
    assert contents["skipped"] == contents["too_long"] == contents["unk_tokens"] == 0

    tok = setup.tokenizer()
    ds = setup.dataset(store)
    frames = ds.sizes()
    assert len(ds) == 8 and frames.dtype == np.int64
    for i, utt in enumerate(setup.utterances):
        ex = ds[i]
        assert set(ex) == {"input_features", "tgt_input_ids", "lm_labels"}
        feats = ex["input_features"]
        assert feats.dtype == torch.float32 and feats.shape == (frames[i], 80)
        # the stored features are HF's for the file, to float16's rounding
        ref = hf_features(utt.path)
        assert ref.shape == feats.shape
        assert np.abs(feats.numpy() - ref).max() <= F16_STEP / 2 + 1e-5
        assert np.array_equal(store.example(i)["features"],
                              featurise([read_audio(utt.path)], ds.config)[0].half().numpy())
        tgt, labels = ex["tgt_input_ids"], ex["lm_labels"]
        assert tgt.dtype == labels.dtype == torch.int64 and tgt.shape == labels.shape
        assert tgt[0] == EOS and labels[-1] == EOS and torch.equal(tgt[1:], labels[:-1])
        assert tok.decode(labels[:-1].tolist()).strip() == utt.text
    batch = ds.collate([ds[0], ds[1], ds[2]])
    assert batch["input_features"].shape == (3, int(frames[:3].max()), 80)
    assert batch["attention_mask"].sum(1).tolist() == frames[:3].tolist()
    assert batch["tgt_attention_mask"].shape == batch["tgt_input_ids"].shape
    assert (batch["lm_labels"][~batch["tgt_attention_mask"]] == -100).all()
    assert (batch["tgt_input_ids"][~batch["tgt_attention_mask"]] == 1).all()  # <pad>
    keys = {k.name: k for k in ds.batch_keys()}
    assert keys["input_features"].shape == ("T", 80) and keys["input_features"].unit == "frames"
    assert keys["input_features"].mask == "attention_mask" and keys["input_features"].pad == 0.0


@pytest.mark.skipif(not LIBRIVOX.is_dir(), reason="pocketsphinx-testdata missing")
def test_real_recordings_stored_as_fbank_or_waveform(setup: Setup, hf_features: Any) -> None:
    fbank = setup.preprocess("real-fbank", LIBRIVOX, "data.processor.case=upper")
    wave = setup.preprocess("real-wave", LIBRIVOX, "data.processor.case=upper",
                            "data.processor.store=waveform")
    assert wave.fields["waveform"] == ("int16", (None,))
    by_fbank, by_wave = setup.dataset(fbank), setup.dataset(wave, store="waveform")
    np.testing.assert_array_equal(by_fbank.sizes(), by_wave.sizes())
    tok = setup.tokenizer()
    for i, utt in enumerate(read_corpus(LIBRIVOX).utterances):
        samples, _ = soundfile.read(str(utt.path), dtype="int16")
        np.testing.assert_array_equal(wave.example(i)["waveform"], samples)  # lossless
        ref = hf_features(utt.path)
        a, b = by_fbank[i]["input_features"].numpy(), by_wave[i]["input_features"].numpy()
        assert np.abs(a - ref).max() <= F16_STEP / 2 + 1e-5
        assert np.abs(b - ref).max() < 1e-4  # computed at load, in float32
        assert tok.decode(by_wave[i]["lm_labels"][:-1].tolist()).strip() == utt.text.upper()


def test_the_dataset_does_not_depend_on_the_thread_count(setup: Setup) -> None:
    one = setup.preprocess("threads-1", None, workers=1)
    three = setup.preprocess("threads-3", None, workers=3)
    names = sorted(p.name for p in Path(one.folder).glob("*.bin"))
    assert len(names) == 3  # features, ids, frames
    for name in names:
        assert (Path(one.folder) / name).read_bytes() == (Path(three.folder) / name).read_bytes()
    assert one.meta["contents"] == three.meta["contents"]


def test_spec_augment_is_a_function_of_seed_epoch_and_index(setup: Setup) -> None:
    from tp_speech.specaugment import SpecAugmentConfig, spec_augment

    store = ArrayReader(setup.base / "cli") if (setup.base / "cli").exists() else \
        setup.preprocess("aug")
    ds = setup.dataset(store, seed=3, spec_augment={})
    assert isinstance(ds.config.spec_augment, SpecAugmentConfig)
    plain = setup.dataset(store, seed=3)
    masked = 0
    for i in range(len(ds)):
        x = ds[i]["input_features"]
        assert torch.equal(x, ds[i]["input_features"])  # again: the same
        assert torch.equal(x, setup.dataset(store, seed=3, spec_augment={})[i]["input_features"])
        expected = spec_augment(plain.features(i), example_generator(3, 0, i),
                                ds.config.spec_augment)
        assert torch.equal(x, expected)
        masked += int((x == 0).all(0).sum())  # frequency bins masked whole
    assert masked > 0
    ds.set_epoch(1)
    other_seed = setup.dataset(store, seed=4, spec_augment={})
    for i in range(3):
        assert not torch.equal(ds[i]["input_features"], plain[i]["input_features"])
        ds.set_epoch(0)
        first = ds[i]["input_features"]
        ds.set_epoch(1)
        assert not torch.equal(ds[i]["input_features"], first)
        assert not torch.equal(other_seed[i]["input_features"], first)


def test_bad_audio_is_refused_whole_or_skipped_and_counted(setup: Setup) -> None:
    corpus = setup.base / "broken"
    shutil.copytree(setup.corpus, corpus)
    bad = corpus / "2" / "1" / "2-1-000003.flac"
    bad.write_bytes(bad.read_bytes()[:300])  # a truncated FLAC
    out = setup.base / "broken-out"
    r = tp("preprocess", str(setup.recipe), "--corpus", str(corpus), "--out", str(out))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "2-1-000003.flac" in r.stderr and "on_error=skip" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2  # the message and its hint
    assert not out.exists() and not any(p.name.startswith(".") for p in setup.base.iterdir())
    # an empty recording and one shorter than a 25 ms frame: refused too, or skipped
    soundfile.write(str(corpus / "1" / "1" / "1-1-000000.flac"), np.zeros(0, np.int16), 16000)
    soundfile.write(str(corpus / "1" / "1" / "1-1-000002.flac"), np.ones(300, np.int16), 16000)
    with pytest.raises(DataError, match=r"1-1.trans.txt:1: audio .*1-1-000000.flac is empty"):
        setup.preprocess("broken-in-process", corpus)
    store = setup.preprocess("broken-skip", corpus, "data.processor.on_error=skip")
    contents = store.meta["contents"]
    assert len(store) == 5 and contents["skipped"] == 3 and contents["utterances"] == 5
    skipped = "\n".join(contents["skipped_files"])
    assert "1-1-000000.flac is empty" in skipped and "2-1-000003.flac" in skipped
    assert "1-1-000002.flac holds 300 samples, less than one 25 ms frame" in skipped


def test_too_long_and_unencodable_utterances(setup: Setup) -> None:
    with pytest.raises(DataError, match=r"utterance 1-1-000000 .* more than max_frames=100"):
        setup.preprocess("long", None, "data.processor.max_frames=100")
    assert not (setup.base / "long").exists()
    frames = sorted(1 + (soundfile.info(str(u.path)).frames - 400) // 160
                    for u in setup.utterances)  # 25 ms frames every 10 ms
    limit = frames[-2]  # the longest utterance is one too long
    store = setup.preprocess("long-skip", None, f"data.processor.max_frames={limit}",
                             "data.processor.too_long=skip")
    assert store.meta["contents"]["too_long"] == 1 and len(store) == 7
    assert int(store.column("frames").max()) == limit
    assert f"more than max_frames={limit}" in store.meta["contents"]["too_long_files"][0]
    tsv = setup.base / "odd.tsv"
    first = setup.utterances[0]
    tsv.write_text(f"{first.text}\t{first.path}\nTHE 7 WONDERS Ж\t{setup.utterances[1].path}\n")
    with pytest.raises(DataError) as e:
        setup.preprocess("odd", tsv)
    assert f"{tsv}:2" in e.value.message and "7Ж" in e.value.message
    assert "unknown=count" in (e.value.hint or "")
    store = setup.preprocess("odd-count", tsv, "data.processor.unknown=count")
    assert store.meta["contents"]["utterances_with_unk"] == 1
    assert store.meta["contents"]["unk_tokens"] >= 2
    assert 3 in store.example(1)["ids"].tolist()  # <unk>


def test_another_sample_rate_is_resampled_or_refused(setup: Setup) -> None:
    corpus = setup.base / "rates"
    shutil.copytree(setup.corpus, corpus)
    audio = corpus / "1" / "1" / "1-1-000000.flac"
    samples, rate = soundfile.read(str(audio), dtype="int16")
    soundfile.write(str(audio), samples[::2], rate // 2)  # the same speech at 8 kHz
    with pytest.raises(DataError, match=r"1-1-000000.flac.* 8000 Hz.*16000") as e:
        setup.preprocess("rates-refused", corpus, "data.processor.resample=false")
    assert "resample" in (e.value.hint or "")
    assert not (setup.base / "rates-refused").exists()
    store = setup.preprocess("rates-resampled", corpus)
    frames = int(store.example(0)["frames"])
    assert abs(frames - (1 + (len(samples) - 400) // 160)) <= 1  # back at 16 kHz: 10 ms frames


def test_meta_records_the_processor_options(setup: Setup) -> None:
    store = ArrayReader(setup.base / "cli") if (setup.base / "cli").exists() else \
        setup.preprocess("meta")
    meta = json.loads((Path(store.folder) / "meta.json").read_text())
    options = meta["processor"]["options"]
    assert meta["processor"]["name"] == "speech" and options["store"] == "fbank"
    assert options["features"]["num_mel_bins"] == 80 and options["cmvn"] is True
    with pytest.raises(DataError, match="holds fbank arrays.*store: waveform"):
        setup.dataset(store, store="waveform")
    with pytest.raises(DataError, match="made with data.processor.cmvn=True, but the recipe "
                       "has False"):
        setup.dataset(store, cmvn=False)
    with pytest.raises(DataError, match="features.num_mel_bins=80, but the recipe has 40"):
        setup.dataset(store, features={"num_mel_bins": 40})


def test_pretrain_reads_the_dataset_batched_by_frames(setup: Setup) -> None:
    """Two steps of the tiny S2T on the dataset, SpecAugment on, batches of at most 1,500
    padded frames (pretrain.batch_units reads `sizes()`): the declared keys feed the speech
    embedding and the decoder, and the first loss is that of a uniform guess, ln(vocab)."""
    from tpcli.verbs import PretrainRequest, pretrain

    store = ArrayReader(setup.base / "cli") if (setup.base / "cli").exists() else \
        setup.preprocess("train")
    summary = pretrain(PretrainRequest(
        str(setup.recipe), Path(store.folder), setup.base / "run",
        ["data.processor.spec_augment={}", "pretrain.batch_units=1500"], progress=False))
    assert summary["steps"] == 2
    log = [json.loads(line) for line in (setup.base / "run" / "metrics.jsonl").read_text()
           .splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses and abs(losses[0] - np.log(setup.tokenizer().vocab_size)) < 0.5
