"""Task `asr`: speech recognition on an encoder-decoder speech model (S2T: `speech` embedding,
transformer encoder and decoder, `lm` target, optionally `ctc` beside it).

    tp finetune RECIPE --task asr --train train-clean-100/ --dev dev-clean/ --out runs/asr
    tp infer runs/asr --input recordings/ --out transcripts.jsonl   # {"path", "text"} a line

Data: any corpus `tp_speech.corpus` reads (a LibriSpeech folder, `text<TAB>path` TSV, JSONL
manifest, Sphinx folder). What `tp infer` reads may also be unlabelled: a folder of audio files
(searched recursively, in path order), one audio file, or a list of paths, one per line
(relative to the list's folder). Features are the recipe's `speech` processor's (`featurise`:
its fbank options and CMVN at its sample rate), so a checkpoint hears what it was trained on;
transcripts are cased as the processor says (`case`), references included.

Training keeps the model's own targets (teacher-forced `lm`, and `ctc` when the recipe has it),
with the processor's layout: the decoder starts with eos, the labels end with it. The rows are
encoded once and held in memory (float32 features: 32 KB per second of audio at 80 bins), which
suits fine-tuning sets; LibriSpeech-sized training runs through `tp pretrain` and the processor's
memory-mapped dataset. For the same reason the training features are not augmented here:
SpecAugment runs in the processor's dataset, and a task's own training dataset
(`train_dataset(examples, seed)`) is built without the tokenizer the transcripts need.

Evaluation decodes with `tpcli.downstream.generate.generate` from the encoder's inputs (greedy,
or beam search with `num_beams` and `length_penalty`: score = sum log p / length ** penalty, as
transformers' and fairseq's), or with CTC's best path (`decode: ctc`), and scores corpus WER
and CER (`tp_speech.wer`, equal to jiwer's). `word_accuracy` = 1 - WER (HTK's accuracy; it is
negative when insertions pile up) comes first because the fine-tuning loop keeps the checkpoint
whose first metric is highest, and a lower WER must win.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from tpcli.data.batch import IGNORE, BatchKey, collate
from tpcli.downstream.tasks import Example, Splits, TaskConfig, TaskData
from tpcli.errors import DataError, TpError

CHUNK = 32  # utterances decoded and featurised together (one fbank call)


class AsrConfig(TaskConfig):
    """Options of the `asr` task."""

    num_beams: int = Field(1, ge=1, description="beam width of evaluation and inference "
                           "(1: greedy; S2T's LibriSpeech results use 5)")
    length_penalty: float = Field(1.0, description="beam score = sum log p / generated "
                                  "length ** length_penalty (>1 favours longer transcripts)")
    max_new_tokens: int = Field(200, gt=0, description="tokens generated per utterance at most")
    max_target_length: int = Field(
        1024, gt=1, description="training transcripts longer than this many tokens (with eos) "
        "are an error naming the utterance")
    decode: Literal["attention", "ctc"] = Field(
        "attention", description="transcribe with the decoder (generate) or with the ctc "
        "target's greedy best path over the encoder (needs `ctc` in the model's targets)")


def _audio_suffixes() -> tuple[str, ...]:
    from tp_speech.corpus import AUDIO

    return AUDIO


def _is_corpus_folder(folder: Path) -> bool:
    """A LibriSpeech folder (transcript files) or a Sphinx one (a fileids list)."""
    return (next(folder.rglob("*.trans.txt"), None) is not None
            or (folder / "fileids").is_file() or next(folder.glob("*.fileids"), None) is not None)


def read_labelled(path: str, case: str = "keep") -> list[Example]:
    """The utterances of a transcribed corpus as examples: label = transcript (cased)."""
    from tp_speech.corpus import read_corpus

    cased = {"keep": str, "upper": str.upper, "lower": str.lower}[case]
    return [Example(u.uttid, {"path": str(u.path)}, cased(u.text), u.source)
            for u in read_corpus(path).utterances]


def read_audio_list(path: str, case: str = "keep") -> list[Example]:
    """What `tp infer` transcribes: a transcribed corpus (labelled: metrics are reported), or
    unlabelled audio: a folder of audio files, one audio file, or a list of paths."""
    p = Path(path)
    audio = _audio_suffixes()
    if not p.exists():
        raise DataError(f"audio input {path} does not exist",
                        hint="pass a folder of audio files, an audio file, a list of paths (one "
                        "a line) or a transcribed corpus")
    if p.is_dir():
        if _is_corpus_folder(p):
            return read_labelled(path, case)
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in audio)
        if not files:
            raise DataError(f"folder {path} holds no audio files ({', '.join(audio)})",
                            hint="pass a folder with audio files in it (searched recursively)")
        return [Example(f.stem, {"path": str(f)}, None, str(f)) for f in files]
    if p.suffix.lower() in audio:
        return [Example(p.stem, {"path": str(p)}, None, str(p))]
    if p.suffix.lower() in (".jsonl", ".json") or p.name.endswith("fileids"):
        return read_labelled(path, case)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"audio input {path} is neither an audio file ({', '.join(audio)}) nor "
                        "a UTF-8 list of paths", hint="pass a folder of audio files, an audio "
                        "file, a list of paths (one a line) or a transcribed corpus") from None
    if any("\t" in line for line in lines):  # text<TAB>path: transcribed
        return read_labelled(path, case)
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        f = p.parent / line.strip()  # an absolute path stays itself
        if not f.is_file():
            raise DataError(f"{path}:{number}: audio file {line.strip()} does not exist",
                            hint="list one existing audio file a line (relative paths are "
                            "relative to the list's folder)")
        out.append(Example(f.stem, {"path": str(f)}, None, f"{path}:{number}"))
    return out


class AsrTask:
    """Transcribe speech; score WER and CER."""

    Config: ClassVar[type[TaskConfig]] = AsrConfig
    metrics: tuple[str, ...] = ("word_accuracy", "wer", "cer")

    def __init__(self, config: AsrConfig, variant: str | None) -> None:
        self.config = config
        self.features: Any = None  # the recipe's SpeechProcessorConfig (bind)

    def bind(self, recipe: Any, registry: Any) -> None:
        """The features and the decoder's layout are the recipe's `speech` processor's; the
        model must be an encoder-decoder with `lm` (and `ctc` to decode with it)."""
        targets = {t.name for t in recipe.model.targets}
        if recipe.model.decoder is None or "lm" not in targets:
            raise TpError("task asr needs an encoder-decoder speech model with an `lm` target "
                          "(a decoder and tgt_embedding in the recipe)",
                          hint="fine-tune an s2t-small recipe or a converted S2T checkpoint")
        if self.config.decode == "ctc" and "ctc" not in targets:
            raise TpError("task asr: decode=ctc needs a `ctc` target in the model",
                          hint="add ctc to model.target (e.g. {lm: {weight: 0.7}, ctc: "
                          "{weight: 0.3}}), or set finetune.task.decode=attention")
        if recipe.processor.name != "speech":
            raise TpError(f"task asr needs a recipe whose data.processor is `speech`, not "
                          f"{recipe.processor.name!r}",
                          hint="fine-tune a speech recipe (its processor's fbank options are "
                          "the features the model hears)")
        self.features = recipe.processor.options

    # -- data

    def load(self, data: TaskData) -> Splits:
        if data.source:
            raise TpError(f"task asr reads --train/--dev/--test corpora; --data {data.source} "
                          "would be ignored", hint="pass each corpus (a LibriSpeech folder, a "
                          "TSV or a JSONL manifest) with --train, --dev and --test")
        case = self._processor().case

        def read(path: str, labelled: bool) -> list[Example]:
            return read_labelled(path, case) if labelled else read_audio_list(path, case)

        return Splits.read(data, read)

    def fit(self, train: list[Example]) -> None:
        """Nothing to learn from the transcripts."""

    def check(self, name: str, examples: list[Example]) -> None:
        """Any transcript is a valid reference."""

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """No state."""

    def target(self) -> None:
        return None  # the model's own targets: lm (and ctc)

    def head_sources(self) -> dict[str, str]:
        """The pre-trained targets' own weights (ctc's projection, an untied lm output) carry
        over to the same targets."""
        return {"targets.": "targets."}

    def _processor(self) -> Any:
        if self.features is None:
            from tp_speech.speech_processor import SpeechProcessorConfig

            return SpeechProcessorConfig()
        return self.features

    def _start_end(self, tokenizer: Any) -> tuple[int, int]:
        from tp_speech.speech_processor import END_TOKENS

        end = next((tokenizer.special_ids[r] for r in END_TOKENS
                    if r in tokenizer.special_ids), None)
        if end is None:
            raise TpError("task asr needs a vocabulary with eos (or sep): the decoder starts "
                          "with it and every transcript ends with it",
                          hint="use the S2T vocabulary (<s>, <pad>, </s>, <unk>)")
        return int(end), int(end)

    def encode(self, examples: list[Example], tokenizer: Any, max_length: int,
               with_labels: bool = True) -> list[dict[str, torch.Tensor]]:
        """Features (T, F) of each utterance; with labels, the decoder's input ([eos] + ids)
        and the labels (ids + [eos])."""
        feats = self._features(examples)
        if not with_labels:
            return [{"input_features": f} for f in feats]
        start, end = self._start_end(tokenizer)
        ids = tokenizer.encode_batch([e.label or "" for e in examples])
        rows = []
        for e, f, t in zip(examples, feats, ids):
            if len(t) + 1 > self.config.max_target_length:
                raise DataError(f"{e.source}: the transcript of {e.guid} has {len(t) + 1} tokens "
                                f"with eos, more than max_target_length="
                                f"{self.config.max_target_length}",
                                hint="raise finetune.task.max_target_length, or split the "
                                "utterance")
            rows.append({"input_features": f,
                         "tgt_input_ids": torch.tensor([start] + t, dtype=torch.long),
                         "lm_labels": torch.tensor(t + [end], dtype=torch.long)})
        return rows

    def _features(self, examples: list[Example]) -> list[torch.Tensor]:
        """(T, F) float32 features of each example's audio, CHUNK files per fbank call."""
        from tp_speech.audio import read_audio
        from tp_speech.speech_processor import featurise

        proc = self._processor()
        out: list[torch.Tensor] = []
        for first in range(0, len(examples), CHUNK):
            chunk = examples[first:first + CHUNK]
            waves = []
            for e in chunk:
                try:
                    waves.append(read_audio(e.fields["path"], proc.sample_rate))
                except DataError as err:
                    where = f"{e.source}: " if e.source != e.fields["path"] else ""
                    raise DataError(f"{where}{err.message}", hint=err.hint) from None
            out += featurise(waves, proc)
        for e, f in zip(examples, out):
            if f.shape[0] == 0:
                raise DataError(f"{e.source}: audio file {e.fields['path']} is shorter than one "
                                f"{proc.features.frame_length_ms:g} ms frame",
                                hint="remove it from the input")
        return out

    def batch_keys(self, rows: list[dict[str, torch.Tensor]], tokenizer: Any
                   ) -> tuple[BatchKey, ...]:
        """The speech processor's keys: frames padded with 0, transcripts with pad / -100."""
        bins = int(rows[0]["input_features"].shape[1]) if rows else \
            self._processor().features.features
        keys = (BatchKey("input_features", "float32", ("T", bins), pad=0.0,
                         mask="attention_mask", unit="frames"),)
        if rows and "lm_labels" in rows[0]:
            keys += (BatchKey("tgt_input_ids", "int64", ("T",),
                              pad=int(tokenizer.special_ids.get("pad", 0)),
                              mask="tgt_attention_mask", high=tokenizer.vocab_size),
                     BatchKey("lm_labels", "int64", ("T",), pad=IGNORE))
        return keys

    # -- prediction

    def predict(self, model: torch.nn.Module, examples: list[Example],
                rows: list[dict[str, torch.Tensor]], tokenizer: Any, device: torch.device,
                batch_size: int, precision: str = "fp32") -> list[dict[str, Any]]:
        """{"path", "text"} per example, in order. Batches hold utterances of similar length
        (longest first), so little of each batch is padding."""
        keys = self.batch_keys([{"input_features": r["input_features"]} for r in rows],
                               tokenizer)
        order = sorted(range(len(rows)), key=lambda i: -rows[i]["input_features"].shape[0])
        texts: dict[int, str] = {}
        for first in range(0, len(order), batch_size):
            chosen = order[first:first + batch_size]
            batch = collate([{"input_features": rows[i]["input_features"]} for i in chosen],
                            keys, source="task asr")
            inputs = {k: batch[k].to(device) for k in ("input_features", "attention_mask")}
            ids = (self._ctc(model, inputs) if self.config.decode == "ctc"
                   else self._generate(model, inputs, tokenizer))
            for i, seq in zip(chosen, ids):
                texts[i] = tokenizer.decode(seq)
        return [{"path": e.fields["path"], "text": texts[i]} for i, e in enumerate(examples)]

    def generation_config(self, tokenizer: Any) -> Any:
        from tpcli.downstream.generate import GenerationConfig

        start, end = self._start_end(tokenizer)
        c = self.config
        return GenerationConfig(max_new_tokens=c.max_new_tokens, num_beams=c.num_beams,
                                length_penalty=c.length_penalty, eos_token_id=end,
                                pad_token_id=tokenizer.special_ids.get("pad", end),
                                decoder_start_token_id=start)

    def _generate(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                  tokenizer: Any) -> list[list[int]]:
        from tpcli.downstream.generate import generate
        from tpcli.downstream.prompting import until_eos

        config = self.generation_config(tokenizer)
        seqs = generate(model, None, None, config, inputs=inputs)  # (B, 1 + N)
        return [until_eos(s, config.eos_ids) for s in seqs[:, 1:].tolist()]

    def _ctc(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[list[int]]:
        from tp_speech.ctc import ctc_greedy
        from tpcli.model.module import Features

        ctc = model.targets["ctc"]
        enc = model.stack(inputs)  # the encoder alone: CTC reads nothing of the decoder
        log_probs, lengths = ctc.log_probs(Features(enc.hidden, enc.mask, memory=enc.hidden,
                                                    memory_mask=enc.mask))
        return ctc_greedy(log_probs, lengths.cpu(), ctc.blank)

    def decode(self, output: torch.Tensor, examples: list[Example]) -> list[dict[str, Any]]:
        raise TpError("asr transcribes by decoding", hint="use AsrTask.predict")

    def evaluate(self, predictions: list[dict[str, Any]], examples: list[Example]
                 ) -> dict[str, float]:
        from tp_speech.wer import cer, wer

        refs = [str(e.label) for e in examples]
        hyps = [p["text"] for p in predictions]
        w = wer(refs, hyps)
        return {"word_accuracy": 1.0 - w, "wer": w, "cer": cer(refs, hyps)}
