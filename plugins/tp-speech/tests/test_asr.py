"""Task `asr`: audio files -> features -> training -> decoding -> WER, in process on a tiny
S2T (lm + ctc) that learns three utterances until both decoders transcribe them exactly;
predictions equal `generate` called directly (greedy, and beam search with a length penalty);
WER and CER equal jiwer's on the decoded text; `tp finetune` / `tp infer` end to end on the
pocketsphinx LibriVox recordings (a folder, a list of paths, a transcribed corpus); bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import jiwer
import numpy as np
import pytest
import torch

from tp_speech.asr import AsrConfig, AsrTask
from tpcli.data import build_tokenizer
from tpcli.data.batch import collate
from tpcli.downstream.generate import GenerationConfig, generate
from tpcli.downstream.prompting import until_eos
from tpcli.downstream.tasks import TaskData
from tpcli.errors import DataError, TpError
from tpcli.model import build_model
from tpcli.plugins import get_plugins
from tpcli.recipes.config import build_recipe
from tpcli.testing.runs import run_tp as tp_process

ROOT = Path(__file__).resolve().parents[3]
TOKENIZER = ROOT / "recipes" / "_tokenizers" / "s2t-unigram-256.model"  # S2T's ids 0..3
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
H = 32
TEXTS = ["he was not", "an ill disposed", "young man"]


def model_section(targets: dict[str, Any] | None = None) -> dict[str, Any]:
    """A 1 + 1-layer S2T over 16 mel bins (two stride-2 convolutions)."""
    return {"hidden_size": H, "dropout": 0.0, "norm_eps": 1e-5, "embedding_norm": "none",
            "embedding": {"speech": {"features": 16, "kernel_sizes": [3, 3],
                                     "conv_channels": 32, "scale": H ** 0.5}},
            "encoder": {"name": "transformer", "layers": 1, "heads": 2, "ffn_size": 64,
                        "pre_norm": True},
            "tgt_embedding": {"word": {"scale": H ** 0.5},
                              "sinusoidalpos": {"offset": 2, "padding_aware": True}},
            "decoder": {"name": "transformer", "layers": 1, "heads": 2, "ffn_size": 64,
                        "pre_norm": True},
            "target": targets or {"lm": {"weight": 0.7}, "ctc": {"weight": 0.3}}}


DATA = {"tokenizer": {"name": "unigram", "model": str(TOKENIZER), "mask_token": None},
        "processor": {"name": "speech", "features": {"num_mel_bins": 16}}}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny matmuls: a second thread only adds contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def recipe_of(model: dict[str, Any], data: dict[str, Any] | None = None) -> Any:
    return build_recipe({"model": model, "data": data or DATA, "pretrain": {}},
                        get_plugins().registry)


def tokenizer() -> Any:
    return build_tokenizer(recipe_of(model_section()), get_plugins())


def tiny(recipe: Any, seed: int = 0) -> Any:
    tok = tokenizer()
    torch.manual_seed(seed)
    return build_model(recipe.model, get_plugins().registry, tok.vocab_size,
                       tok.special_ids).eval()


def write_utterances(folder: Path) -> Path:
    """Three tone-plus-noise recordings of 0.5, 0.625 and 0.75 s (16 kHz) and a TSV
    `text<TAB>path` of their transcripts: what the tiny model learns to tell apart."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, text in enumerate(TEXTS):
        n = 8000 + 2000 * i
        t = np.arange(n) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.standard_normal(n)
        sf.write(folder / f"u{i}.wav", wave.astype(np.float32), 16000)
        lines.append(f"{text}\tu{i}.wav")
    (folder / "train.tsv").write_text("\n".join(lines) + "\n")
    return folder / "train.tsv"


def bound(recipe: Any, **options: Any) -> AsrTask:
    task = AsrTask(AsrConfig(**options), None)
    task.bind(recipe, get_plugins().registry)
    return task


# ----------------------------------------------------------------------------- in process


def test_learns_three_utterances_and_both_decoders_transcribe_them(
        tmp_path: Path, one_thread: None) -> None:
    """Features from the files, training on the task's rows (250 Adam steps at 3e-3; the CTC
    best path needs more than the 150 that teach the decoder), then decoding through the task: attention (greedy and
    beam 3) and CTC give the transcripts back, WER and CER 0."""
    recipe = recipe_of(model_section())
    task = bound(recipe, max_new_tokens=12)
    splits = task.load(TaskData(train=str(write_utterances(tmp_path))))
    tok = tokenizer()
    rows = task.encode(splits.train, tok, 128)
    assert [r["input_features"].shape for r in rows] == [(48, 16), (61, 16), (73, 16)]
    assert rows[0]["tgt_input_ids"].tolist() == [2] + tok.encode_batch([TEXTS[0]])[0]
    assert rows[0]["lm_labels"].tolist() == tok.encode_batch([TEXTS[0]])[0] + [2]
    batch = collate(rows, task.batch_keys(rows, tok), source="test")
    model = tiny(recipe).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(250):
        out = model(batch)
        first = first or {k: v.item() for k, v in out.losses.items()}
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    last = {k: v.item() for k, v in model(batch).losses.items()}
    assert last["lm"] < 0.05 * first["lm"] and last["ctc"] < 0.05 * first["ctc"]
    for options in ({}, {"num_beams": 3, "length_penalty": 0.6}, {"decode": "ctc"}):
        task.config = AsrConfig(max_new_tokens=12, **options)
        preds = task.predict(model, splits.train, rows, tok, torch.device("cpu"), 2)
        assert [p["text"] for p in preds] == TEXTS, options
        assert [Path(p["path"]).name for p in preds] == ["u0.wav", "u1.wav", "u2.wav"]
        assert task.evaluate(preds, splits.train) == {"word_accuracy": 1.0, "wer": 0.0,
                                                      "cer": 0.0}


@pytest.mark.parametrize("options", [{}, {"num_beams": 3, "length_penalty": 0.5},
                                     {"num_beams": 2, "length_penalty": 2.0}])
def test_predictions_equal_generate_called_directly(
        tmp_path: Path, one_thread: None, options: dict[str, Any]) -> None:
    """A random model (weights moved so it emits varied tokens): the task's batched, length-
    sorted transcripts are those of `generate` on each utterance alone, with the same
    settings; and its WER / CER are jiwer's on them."""
    from tpcli.testing.convert import perturbed

    recipe = recipe_of(model_section())
    task = bound(recipe, max_new_tokens=8, **options)
    examples = task.load(TaskData(train=str(write_utterances(tmp_path)))).train
    tok = tokenizer()
    rows = task.encode(examples, tok, 128, with_labels=False)
    model = perturbed(tiny(recipe), scale=0.5)
    preds = task.predict(model, examples, rows, tok, torch.device("cpu"), 2)
    config = GenerationConfig(max_new_tokens=8, num_beams=options.get("num_beams", 1),
                              length_penalty=options.get("length_penalty", 1.0),
                              eos_token_id=2, pad_token_id=1, decoder_start_token_id=2)
    direct = []
    for r in rows:
        feats = r["input_features"][None]  # (1, T, F): alone, no padding
        seq = generate(model, None, None, config, inputs={
            "input_features": feats, "attention_mask": torch.ones(feats.shape[:2], dtype=bool)})
        direct.append(tok.decode(until_eos(seq[0, 1:].tolist(), [2])))
    hyps = [p["text"] for p in preds]
    assert hyps == direct
    assert any(h for h in hyps)  # something was generated
    refs = [e.label for e in examples]
    scores = task.evaluate(preds, examples)
    assert scores["wer"] == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert scores["cer"] == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    assert scores["word_accuracy"] == pytest.approx(1 - scores["wer"])


def test_inputs_tp_infer_reads(tmp_path: Path) -> None:
    """A folder of audio (recursive, path order), one file, a list of paths (relative to the
    list), a transcribed TSV (labelled); bad ones name the problem."""
    task = bound(recipe_of(model_section()))
    write_utterances(tmp_path / "audio" / "a")
    (tmp_path / "audio" / "b").mkdir()
    (tmp_path / "audio" / "b" / "z.wav").write_bytes((tmp_path / "audio/a/u0.wav").read_bytes())
    (tmp_path / "audio" / "notes.txt").write_text("not audio")

    def test_split(path: Path) -> list[Any]:
        return next(iter(task.load(TaskData(test=str(path))).test.values()))

    got = test_split(tmp_path / "audio")
    assert [Path(e.fields["path"]).relative_to(tmp_path / "audio").as_posix() for e in got] == \
        ["a/u0.wav", "a/u1.wav", "a/u2.wav", "b/z.wav"]
    assert all(e.label is None for e in got)
    assert [e.guid for e in test_split(tmp_path / "audio/a/u1.wav")] == ["u1"]
    listing = tmp_path / "audio" / "list.txt"
    listing.write_text(f"a/u2.wav\n\n{tmp_path / 'audio/b/z.wav'}\n")
    got = test_split(listing)
    assert [e.fields["path"] for e in got] == [str(tmp_path / "audio/a/u2.wav"),
                                              str(tmp_path / "audio/b/z.wav")]
    assert got[0].source == f"{listing}:1"
    got = test_split(tmp_path / "audio/a/train.tsv")
    assert [e.label for e in got] == TEXTS
    listing.write_text("a/u2.wav\nmissing.wav\n")
    with pytest.raises(DataError, match=r"list.txt:2: audio file missing.wav does not exist"):
        test_split(listing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no audio files"):
        test_split(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        test_split(tmp_path / "nowhere")
    (tmp_path / "clip.mp4").write_bytes(b"\x00\xff\xfe binary")
    with pytest.raises(DataError, match="neither an audio file"):
        test_split(tmp_path / "clip.mp4")


def test_unreadable_audio_and_long_transcripts_are_named(tmp_path: Path) -> None:
    task = bound(recipe_of(model_section()), max_target_length=6)
    train = write_utterances(tmp_path)
    examples = task.load(TaskData(train=str(train))).train
    n = len(tokenizer().encode_batch([TEXTS[1]])[0]) + 1  # with eos
    with pytest.raises(DataError, match=rf"train.tsv:2: the transcript of u1 has {n} tokens"):
        task.encode(examples, tokenizer(), 128)
    (tmp_path / "u2.wav").write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(DataError, match=r"train.tsv:3: .*u2.wav"):
        task.encode(examples, tokenizer(), 128, with_labels=False)


def test_bind_refuses_models_that_cannot_transcribe() -> None:
    encoder_only = {k: v for k, v in model_section({"ctc": {}}).items()
                    if k not in ("tgt_embedding", "decoder")}
    with pytest.raises(TpError, match="encoder-decoder speech model"):
        bound(recipe_of(encoder_only))
    with pytest.raises(TpError, match="decode=ctc needs a `ctc` target"):
        bound(recipe_of(model_section({"lm": {}})), decode="ctc")
    text = {**DATA, "processor": {"name": "seq2seq"}}
    with pytest.raises(TpError, match="data.processor is `speech`"):
        bound(recipe_of(model_section(), text))


# ----------------------------------------------------------------------------- the CLI


def run_tp(*args: str) -> subprocess.CompletedProcess:
    """`tp ARGS` in a fresh process on one thread: the models are tiny, and a second thread only
    contends with the other jobs of a shared machine."""
    return tp_process(*args, env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def tp() -> Callable[..., subprocess.CompletedProcess]:
    return run_tp


@pytest.fixture(scope="module")
def finetuned(tp: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tp finetune --task asr` from scratch on the five LibriVox recordings (2 steps: the
    plumbing, not the learning), dev = the same Sphinx folder."""
    if not LIBRIVOX.is_dir():
        pytest.skip("apt package pocketsphinx-testdata is not installed")
    import yaml

    root = tmp_path_factory.mktemp("asr")
    (root / "recipe").mkdir()
    (root / "recipe" / "recipe.yaml").write_text(yaml.safe_dump({
        "model": model_section(), "data": DATA, "pretrain": {},
        "finetune": {"steps": 2, "eval_every": 2, "batch_size": 4, "lr": 1e-3,
                     "warmup_ratio": 0.0,
                     "eval_batch_size": 2, "task": {"name": "asr", "max_new_tokens": 6,
                                                    "num_beams": 2}}}))
    r = tp("finetune", str(root / "recipe"), "--train", str(LIBRIVOX), "--dev", str(LIBRIVOX),
           "--out", str(root / "run"))
    assert r.returncode == 0, r.stderr
    return root


def test_finetune_scores_the_dev_set_as_jiwer(finetuned: Path) -> None:
    result = json.loads((finetuned / "run" / "results.json").read_text())
    assert result["task"] == "asr" and result["metric"] == "word_accuracy"
    preds = [json.loads(line) for line in
             (finetuned / "run" / "predictions" / "librivox.jsonl").read_text().splitlines()]
    assert [Path(p["path"]).name for p in preds] == [
        f"sense_and_sensibility_01_austen_64kb-0{n}.wav" for n in (870, 880, 890, 920, 930)]
    refs = [line.split("</s>")[0].replace("<s>", "").strip() for line in
            (LIBRIVOX / "transcription").read_text().splitlines()]
    hyps = [p["text"] for p in preds]
    dev = result["dev"]["librivox"]
    assert dev["wer"]["mean"] == pytest.approx(jiwer.wer(refs, hyps))
    assert dev["cer"]["mean"] == pytest.approx(jiwer.cer(refs, hyps))
    assert dev["word_accuracy"]["mean"] == pytest.approx(1 - jiwer.wer(refs, hyps))


def test_infer_transcribes_a_folder_and_a_list(tp: Callable[..., Any], finetuned: Path,
                                               tmp_path: Path) -> None:
    wavs = sorted(LIBRIVOX.glob("*.wav"))
    audio = tmp_path / "audio"
    audio.mkdir()
    for w in wavs[:3]:
        (audio / w.name).symlink_to(w)
    r = tp("infer", str(finetuned / "run"), "--input", str(audio), "--out",
           str(tmp_path / "folder.jsonl"))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "folder.jsonl").read_text().splitlines()]
    assert [sorted(row) for row in rows] == [["path", "text"]] * 3
    assert [row["path"] for row in rows] == [str(audio / w.name) for w in wavs[:3]]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(w) for w in reversed(wavs)) + "\n")
    r = tp("infer", str(finetuned / "run"), "--input", str(listing), "--out",
           str(tmp_path / "list.jsonl"), "--json")
    assert r.returncode == 0, r.stderr
    by_list = [json.loads(line) for line in (tmp_path / "list.jsonl").read_text().splitlines()]
    assert [row["path"] for row in by_list] == [str(w) for w in reversed(wavs)]
    # the same recording gets the same transcript whichever input and batch it came in
    texts = {Path(row["path"]).name: row["text"] for row in by_list}
    assert [row["text"] for row in rows] == [texts[w.name] for w in wavs[:3]]


def test_infer_on_a_transcribed_corpus_reports_metrics(finetuned: Path, tmp_path: Path,
                                                       one_thread: None) -> None:
    """In process (the verb the CLI calls): a Sphinx folder is labelled, so WER / CER come
    back, equal to jiwer's on the JSONL written."""
    from tpcli.plugins.requests import InferRequest
    from tpcli.verbs import infer

    result = infer(InferRequest(str(finetuned / "run"), str(LIBRIVOX), tmp_path / "p.jsonl",
                                batch_size=3))
    preds = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    refs = [line.split("</s>")[0].replace("<s>", "").strip() for line in
            (LIBRIVOX / "transcription").read_text().splitlines()]
    hyps = [p["text"] for p in preds]
    assert result["examples"] == 5
    assert result["metrics"]["wer"] == pytest.approx(jiwer.wer(refs, hyps))
    assert result["metrics"]["cer"] == pytest.approx(jiwer.cer(refs, hyps))


def test_infer_missing_file_is_a_clean_error(tp: Callable[..., Any], finetuned: Path,
                                             tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("nope.wav\n")
    r = tp("infer", str(finetuned / "run"), "--input", str(listing), "--out",
           str(tmp_path / "p.jsonl"))
    assert r.returncode == 1 and "list.txt:1: audio file nope.wav does not exist" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "p.jsonl").exists()
