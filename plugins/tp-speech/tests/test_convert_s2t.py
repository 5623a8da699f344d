"""The Speech2Text converter against Hugging Face `transformers`: logits of tiny random S2T
models with unusual settings (3 conv layers of kernels 3, 5, 3 with 26 channels over 40
features; one conv layer of kernel 7 over 24 features, no embedding scale, gelu, untied output;
3 / 2 and 1 / 3 encoder / decoder layers) on padded batches in both directions, the key map's
bit-exact round trip, the headless Speech2TextModel, greedy and beam generate() token for token,
`tp convert` both ways (the export loads with plain AutoModel, AutoModelForSpeechSeq2Seq and
AutoFeatureExtractor, its weights are the source's bit for bit), the tokenizer (SentencePiece +
vocab.json) encoding and decoding as HF's, a tokenizer built in tp written as SentencePiece,
AutoProcessor on the written files, real LibriVox speech transcribed as HF's pipeline does,
the tokenizer's trip through `tp convert` both ways, and the refusals (one through the real
`tp` command)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import torch
from safetensors.torch import load_file

from tpcli.convert.from_hf import from_hf
from tpcli.convert.hf import max_abs_diff
from tpcli.convert.to_hf import to_hf
from tpcli.downstream.generate import GenerationConfig, generate
from tpcli.errors import CheckpointError, TpError
from tpcli.plugins import get_plugins
from tpcli.testing.convert import (assert_round_trip, hf_config_dict, hf_from_tp, logits_diff,
                                   perturbed, tp_from_hf, tp_model_for)

transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")
from tp_speech.convert_s2t import CONVERTER, check_batch  # noqa: E402
from tp_speech.s2t_files import tokenizer_from_hf, tokenizer_to_hf  # noqa: E402

GENERATION = "Speech2TextForConditionalGeneration"
DATA = {"processor": {"name": "speech"}}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: on a machine shared with other jobs a second torch thread only waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("which", ["ODD", "PLAIN"])
def test_logits_match_hf_both_ways_and_keys_round_trip(s2t, which: str) -> None:
    hf = s2t.random(getattr(s2t, which))
    tp = tp_from_hf(CONVERTER, hf)
    assert logits_diff(CONVERTER, hf, tp) <= 1e-5
    batch, kwargs = check_batch(tp.spec, hf_config_dict(hf))
    with torch.no_grad():
        logits = hf(**kwargs).logits
    assert logits.std() > 0.1  # not near-zeros: the comparison means something
    assert batch["attention_mask"].sum(1).unique().numel() == 3  # rows of different lengths
    assert_round_trip(CONVERTER, hf, tp)
    back = hf_from_tp(CONVERTER, tp, getattr(transformers, GENERATION))
    assert logits_diff(CONVERTER, back, tp) <= 1e-5


def test_tp_to_hf_direction_and_a_swap_shows() -> None:
    """A tp S2T written as a user would (perturbed) -> the HF model of its config, same logits;
    q and k of one encoder layer swapped: the comparison fails."""
    torch.manual_seed(0)
    scale = 20 ** 0.5
    tp = perturbed(tp_model_for({
        "hidden_size": 20, "vocab_size": 37, "dropout": 0.0, "norm_eps": 1e-5,
        "embedding_norm": "none", "tie_weights": False,
        "embedding": {"speech": {"features": 24, "kernel_sizes": [5, 3], "conv_channels": 14,
                                 "scale": scale}},
        "encoder": {"name": "transformer", "layers": 2, "heads": 4, "ffn_size": 30,
                    "activation": "relu", "pre_norm": True},
        "tgt_embedding": {"word": {"scale": scale},
                          "sinusoidalpos": {"offset": 2, "padding_aware": True}},
        "decoder": {"name": "transformer", "layers": 1, "heads": 5, "ffn_size": 22,
                    "activation": "relu", "pre_norm": True},
        "target": {"lm": {}}}, 0, DATA), scale=0.1)
    config = CONVERTER.recipe_to_config(tp.spec, 0)
    assert config["conv_kernel_sizes"] == [5, 3] and config["scale_embedding"]
    assert not config["tie_word_embeddings"] and config["max_target_positions"] == 1022
    hf = hf_from_tp(CONVERTER, tp, getattr(transformers, GENERATION))
    assert max_abs_diff(CONVERTER, hf, tp, config, 37) <= 1e-5
    with torch.no_grad():
        qkv = tp.stack.encoder.layers[1].attn.qkv.weight  # (3H, H): q, k, v rows
        qkv[:40] = torch.cat([qkv[20:40], qkv[:20]])
    assert max_abs_diff(CONVERTER, hf, tp, config, 37) > 1e-3


def test_headless_model_hidden_states(s2t) -> None:
    """Speech2TextModel: the decoder's hidden states equal tp's features; the lm head is new."""
    hf = s2t.random(s2t.ODD, arch="Speech2TextModel")
    config = hf_config_dict(hf)
    tp = tp_model_for(CONVERTER.config_to_recipe(config), config["vocab_size"], DATA)
    sd = CONVERTER.hf_to_tp(hf.state_dict(), hf_config=config, base=True)
    assert set(tp.state_dict()) - set(sd) == set()  # tied head: nothing of its own
    tp.load_state_dict(sd, strict=True)
    assert max_abs_diff(CONVERTER, hf, tp.eval(), config, config["vocab_size"], base=True) <= 1e-5


@pytest.mark.parametrize(("which", "eos_boost", "beams", "length_penalty"),
                         [("ODD", 1.4, 1, 1.0), ("ODD", 1.4, 3, 1.0), ("ODD", 1.8, 3, 0.5),
                          ("PLAIN", 1.0, 4, 2.0)])
def test_generate_equals_hf_token_for_token(s2t, which: str, eos_boost: float, beams: int,
                                            length_penalty: float) -> None:
    """tp's generate() from speech features (padded rows of different lengths) returns HF's
    model.generate sequences exactly, greedy and beam (with length penalties); the EOS row of
    the output matrix is scaled up so that some rows stop early (padding after EOS) and others
    run to the limit."""
    hf = s2t.random(getattr(s2t, which), scale=0.5)
    with torch.no_grad():
        hf.lm_head.weight[2] *= eos_boost
    tp = tp_from_hf(CONVERTER, hf)
    batch, kwargs = check_batch(tp.spec, hf_config_dict(hf))
    options = dict(max_new_tokens=12, min_new_tokens=2, num_beams=beams,
                   length_penalty=length_penalty)
    want = hf.generate(input_features=kwargs["input_features"],
                       attention_mask=kwargs["attention_mask"], do_sample=False,
                       early_stopping=False, **options)
    got = generate(tp, None, None, GenerationConfig(**options, eos_token_id=2, pad_token_id=1,
                                                    decoder_start_token_id=2),
                   inputs={k: batch[k] for k in ("input_features", "attention_mask")})
    assert got.tolist() == want.tolist()
    assert len({tuple(r) for r in want[:, 1:].tolist()}) > 1  # the rows differ
    if eos_boost > 1.0 and (beams == 1 or length_penalty != 1.0):
        stopped = [2 in row[1:] for row in want.tolist()]
        assert any(stopped) and not all(stopped)


def test_convert_both_ways(s2t, tmp_path: Path) -> None:
    """`tp convert --from hf --check`, then `--to hf --check` (the functions behind the CLI):
    the export loads with plain transformers classes, its tensors are the source's bit for bit,
    its feature extractor is the source's (S2T's: 40 bins, 16 kHz, CMVN)."""
    source = s2t.save(s2t.random(s2t.ODD), tmp_path / "hf")
    plugins = get_plugins()
    done = from_hf(str(source), tmp_path / "tp", plugins, check=True)
    assert done.max_abs_diff is not None and done.max_abs_diff <= 1e-5
    recipe = (tmp_path / "tp" / "recipe.yaml").read_text()
    assert "speech" in recipe and "kernel_sizes" in recipe
    back = tmp_path / "back"
    done = to_hf(tmp_path / "tp", back, plugins, check=True)
    assert done.max_abs_diff is not None and done.max_abs_diff <= 1e-5
    a, b = load_file(str(source / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert type(transformers.AutoModel.from_pretrained(str(back))).__name__ == "Speech2TextModel"
    model = transformers.AutoModelForSpeechSeq2Seq.from_pretrained(str(back))
    assert type(model).__name__ == GENERATION
    fe = transformers.AutoFeatureExtractor.from_pretrained(str(back))
    original = json.loads((source / "preprocessor_config.json").read_text())
    written = json.loads((back / "preprocessor_config.json").read_text())
    keys = ("feature_size", "num_mel_bins", "sampling_rate", "dither", "do_ceptral_normalize",
            "normalize_means", "normalize_vars", "padding_value")
    assert {k: written[k] for k in keys} == {k: original[k] for k in keys}
    assert type(fe).__name__ == "Speech2TextFeatureExtractor" and fe.feature_size == 40


def test_convert_carries_the_tokenizer_both_ways(s2t, tmp_path: Path) -> None:
    """--from hf keeps the Speech2TextTokenizer as the checkpoint's tokenizer (HF's ids, pad id 1
    in the model), --to hf writes its files back bit for bit and AutoProcessor loads them."""
    from tpcli.train.checkpoint import load_checkpoint

    source = s2t.save(s2t.random(s2t.ODD), tmp_path / "hf")
    plugins = get_plugins()
    from_hf(str(source), tmp_path / "tp", plugins, check=True)
    loaded = load_checkpoint(tmp_path / "tp", plugins)
    hf = transformers.Speech2TextTokenizer.from_pretrained(str(source))
    text = "he hoped there would be stew for dinner"
    assert loaded.tokenizer.encode(text) == hf(text, add_special_tokens=False).input_ids
    assert loaded.model.tgt_embedding.parts["word"].embedding.padding_idx == 1
    to_hf(tmp_path / "tp", tmp_path / "back", plugins, check=True)
    for name in ("sentencepiece.bpe.model", "vocab.json", "model.safetensors"):
        assert (tmp_path / "back" / name).read_bytes() == (source / name).read_bytes()
    processor = transformers.AutoProcessor.from_pretrained(str(tmp_path / "back"))
    assert type(processor).__name__ == "Speech2TextProcessor"


LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


@pytest.mark.skipif(not LIBRIVOX.is_dir(), reason="apt package pocketsphinx-testdata is absent")
def test_real_speech_transcribed_as_hf_does(s2t, tmp_path: Path) -> None:
    """From recordings to tokens: HF's feature extractor + model.generate against the converted
    checkpoint's own pipeline (its recipe's speech processor computes the features, tp decodes),
    on three LibriVox utterances cut to different lengths: the features agree to float32
    rounding and the beam-search transcripts token for token."""
    from tpcli.train.checkpoint import load_checkpoint
    from tp_speech.audio import read_audio
    from tp_speech.speech_processor import featurise

    hf = s2t.random(dict(s2t.ODD, input_feat_per_channel=80), scale=0.5)
    source = s2t.save(hf, tmp_path / "hf", tokenizer=False)
    from_hf(str(source), tmp_path / "tp", get_plugins())
    loaded = load_checkpoint(tmp_path / "tp", get_plugins())
    waves = [read_audio(path)[:n] for path, n in zip(
        sorted(LIBRIVOX.glob("*.wav"))[:3], (16000, 11000, 7000))]
    fe = transformers.AutoFeatureExtractor.from_pretrained(str(source))
    want = fe(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    feats = featurise(waves, loaded.recipe.processor.options)
    frames = torch.tensor([len(f) for f in feats])
    assert frames.tolist() == want["attention_mask"].sum(1).tolist()
    batch = torch.zeros(len(feats), int(frames.max()), 80)
    for row, f in enumerate(feats):
        batch[row, :len(f)] = f
    mask = torch.arange(batch.shape[1])[None, :] < frames[:, None]
    assert (batch - want["input_features"]).abs().max() <= 1e-4  # measured 2.6e-6
    options = dict(max_new_tokens=10, num_beams=3)
    tokens = hf.generate(**want, do_sample=False, length_penalty=1.0, early_stopping=False,
                         **options)
    got = generate(loaded.model, None, None, GenerationConfig(
        **options, eos_token_id=2, pad_token_id=1, decoder_start_token_id=2),
        inputs={"input_features": batch, "attention_mask": mask})
    assert got.tolist() == tokens.tolist()


def test_cli_refuses_a_pad_id_it_cannot_number(s2t, tp, tmp_path: Path) -> None:
    """A user error through the real command: exit 1, the reason and the fix, nothing
    written."""
    source = s2t.save(s2t.random(dict(s2t.PLAIN, pad_token_id=0)), tmp_path / "hf",
                      tokenizer=False)
    done = tp("convert", str(source), "--from", "hf", "--out", str(tmp_path / "tp"))
    assert done.returncode == 1
    assert "pad_token_id 0" in done.stderr and "pad_token_id 1" in done.stderr
    assert not (tmp_path / "tp").exists()


def test_tokenizer_encodes_and_decodes_as_hf(s2t, tmp_path: Path) -> None:
    """Speech2TextTokenizer's files -> tp's unigram tokenizer with vocab.json's ids (not the
    SentencePiece model's: they differ here by one), the same ids as HF's for the same text,
    the same text back; saved, reloaded, and written back as HF's files, bit for bit, which
    AutoProcessor loads beside the feature extractor."""
    from tp_text.unigram import UnigramTokenizer

    source = s2t.tokenizer(tmp_path / "hf")
    hf = transformers.Speech2TextTokenizer.from_pretrained(str(source))
    tok, section = tokenizer_from_hf(source, tmp_path / "ckpt" / "tokenizer")
    assert section["name"] == "unigram" and section["tokenizer_json"] == "tokenizer/tokenizer.json"
    assert tok.special_ids == {"bos": 0, "pad": 1, "eos": 2, "unk": 3}
    assert tok.vocab_size == hf.vocab_size == 71
    reloaded = UnigramTokenizer.from_saved(tmp_path / "ckpt" / "tokenizer")
    texts = [*s2t.TEXT, "the yellow lamps would light up", "  good   night  ", "stew", ""]
    for text in texts:
        ids = hf(text, add_special_tokens=False).input_ids
        assert tok.encode(text) == ids == reloaded.encode(text), text
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True), text
    for unknown in ("zebra quiz", "He HOPED there Would be STEW"):  # <unk> pieces as HF's
        assert tok.encode(unknown) == hf(unknown, add_special_tokens=False).input_ids
        assert 3 in tok.encode(unknown)
    out = tmp_path / "out"
    out.mkdir()
    assert tokenizer_to_hf(tmp_path / "ckpt" / "tokenizer", out)
    for name in ("sentencepiece.bpe.model", "vocab.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes()


def test_to_hf_writes_the_processor(s2t, tmp_path: Path) -> None:
    """The converter's `preprocessing.to_hf` for a checkpoint that carries the HF tokenizer
    files: preprocessor_config.json of the recipe's speech processor naming
    Speech2TextProcessor, so AutoProcessor gives features and tokens; a checkpoint without them
    writes the feature extractor alone."""
    from tp_speech.speech_processor import SpeechProcessorConfig

    source = s2t.tokenizer(tmp_path / "hf")
    tokenizer_from_hf(source, tmp_path / "ckpt" / "tokenizer")
    options = SpeechProcessorConfig(features={"num_mel_bins": 40}, cmvn=False)
    recipe = SimpleNamespace(processor=SimpleNamespace(options=options), path=tmp_path / "ckpt",
                             tokenizer=SimpleNamespace(name="unigram"))
    out = tmp_path / "out"
    out.mkdir()
    CONVERTER.preprocessing.to_hf(recipe, out, {"input_feat_per_channel": 40})
    processor = transformers.AutoProcessor.from_pretrained(str(out))
    assert type(processor).__name__ == "Speech2TextProcessor"
    hf = transformers.Speech2TextTokenizer.from_pretrained(str(source))
    assert processor.tokenizer("stew for dinner").input_ids == hf("stew for dinner").input_ids
    fe = processor.feature_extractor
    assert fe.feature_size == 40 and not fe.do_ceptral_normalize and not fe.normalize_vars
    with pytest.raises(TpError, match="makes 40 features per frame, the model reads 80"):
        CONVERTER.preprocessing.to_hf(recipe, out, {"input_feat_per_channel": 80})
    with pytest.raises(TpError, match="makes 40 features per frame, but the model reads 24"):
        CONVERTER.preprocessing.from_hf(out, {"input_feat_per_channel": 24})
    section = CONVERTER.preprocessing.from_hf(out, {"input_feat_per_channel": 40})
    assert section == {"processor": {"name": "speech", "sample_rate": 16000, "cmvn": False,
                                     "features": {"num_mel_bins": 40, "dither": 0.0}}}


@pytest.mark.parametrize("source", ["shipped", "hf"])
def test_a_tp_tokenizer_is_written_as_sentencepiece(s2t, tmp_path: Path, source: str) -> None:
    """A tokenizer that kept no HF files (tp's shipped S2T vocabulary: no normalisation; one
    read from HF files and renumbered: NFKC's character map) -> sentencepiece.bpe.model +
    vocab.json that Speech2TextTokenizer (and the sentencepiece library) cut into tp's ids; to_hf
    writes them for a checkpoint without the HF files."""
    import sentencepiece as spm

    from tp_text.unigram import UnigramConfig, UnigramTokenizer

    shipped = Path(__file__).parents[3] / "recipes" / "_tokenizers" / "s2t-unigram-256.model"
    if source == "shipped":
        tok = UnigramTokenizer(UnigramConfig(model=str(shipped), mask_token=None))
        reference = spm.SentencePieceProcessor(model_file=str(shipped))
    else:
        tok, _ = tokenizer_from_hf(s2t.tokenizer(tmp_path / "hf"), tmp_path / "read")
        reference = None
    ckpt = tmp_path / "ckpt"
    tok.save(str(ckpt / "tokenizer"))
    from tp_speech.speech_processor import SpeechProcessorConfig

    recipe = SimpleNamespace(processor=SimpleNamespace(options=SpeechProcessorConfig()),
                             path=ckpt, tokenizer=SimpleNamespace(name="unigram"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"decoder_start_token_id": 5, "eos_token_id": 5}')
    CONVERTER.preprocessing.to_hf(recipe, out, {"input_feat_per_channel": 80})
    written = json.loads((out / "config.json").read_text())
    assert written["decoder_start_token_id"] == written["eos_token_id"] == 2
    processor = transformers.AutoProcessor.from_pretrained(str(out))
    hf = processor.tokenizer
    assert type(hf).__name__ == "Speech2TextTokenizer" and hf.vocab_size == tok.vocab_size
    texts = [*s2t.TEXT, "you will be married within a year", "  the   yellow  lamps ", ""]
    for text in texts:
        ids = tok.encode(text)
        assert hf(text, add_special_tokens=False).input_ids == ids, text
        assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids), text
        if reference is not None:
            assert reference.encode(text) == ids, text
    assert hf("stew").input_ids[-1] == hf.eos_token_id == tok.special_ids["eos"]


def test_a_tokenizer_with_another_pad_id_is_refused(tmp_path: Path) -> None:
    """HF numbers S2T's decoder positions from pad id 1: a vocabulary whose pad is 0 (tp's
    text unigram-8k) cannot be exported with the model."""
    from tp_speech.speech_processor import SpeechProcessorConfig
    from tp_text.unigram import UnigramConfig, UnigramTokenizer

    table = Path(__file__).parents[3] / "recipes" / "_tokenizers" / "unigram-8k.json"
    tok = UnigramTokenizer(UnigramConfig(tokenizer_json=str(table)))
    tok.save(str(tmp_path / "ckpt" / "tokenizer"))
    recipe = SimpleNamespace(processor=SimpleNamespace(options=SpeechProcessorConfig()),
                             path=tmp_path / "ckpt", tokenizer=SimpleNamespace(name="unigram"))
    with pytest.raises(TpError, match="pad id 0") as e:
        CONVERTER.preprocessing.to_hf(recipe, tmp_path, {"input_feat_per_channel": 80})
    assert "S2T's layout" in e.value.hint


def test_what_s2t_cannot_do_is_refused_by_name(s2t) -> None:
    config = hf_config_dict(s2t.random(s2t.PLAIN))
    with pytest.raises(TpError, match="pad_token_id 0"):
        CONVERTER.config_to_recipe({**config, "pad_token_id": 0})
    with pytest.raises(TpError, match="activation_function 'tanh'"):
        CONVERTER.config_to_recipe({**config, "activation_function": "tanh"})
    with pytest.raises(TpError, match="num_conv_layers 2"):
        CONVERTER.config_to_recipe({**config, "num_conv_layers": 2})
    section = CONVERTER.config_to_recipe(config)
    section["tgt_embedding"]["word"]["scale"] = 2.0
    section["target"] = {"lm": {"bias": True}}
    with pytest.raises(TpError) as e:
        CONVERTER.recipe_to_config(tp_model_for(section, 71, DATA).spec, 71)
    assert "model.tgt_embedding.word.scale=2.0 (needs 1.0)" in e.value.message
    assert "model.target.lm needs bias" in e.value.message
    section = CONVERTER.config_to_recipe(config)
    section["target"] = {"lm": {}, "ctc": {"blank": 1}}
    section["encoder"]["final_norm"] = False
    with pytest.raises(TpError) as e:
        CONVERTER.recipe_to_config(tp_model_for(section, 71, DATA).spec, 71)
    assert "Speech2Text has no other head" in e.value.message
    assert "model.encoder.final_norm=false" in e.value.message
    section = CONVERTER.config_to_recipe(config)
    section["tgt_embedding"] = {"word": {}, "pos": {"max_length": 40}}
    with pytest.raises(TpError, match=r"tgt_embedding \[word, sinusoidalpos\]"):
        CONVERTER.recipe_to_config(tp_model_for(section, 71, DATA).spec, 71)


def test_keys_are_strict(s2t) -> None:
    hf = s2t.random(s2t.ODD)
    config = hf_config_dict(hf)
    tp = tp_from_hf(CONVERTER, hf)
    sd: dict[str, Any] = dict(hf.state_dict())
    extra = {**sd, "model.encoder.conv.conv_layers.3.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"speech\.convs\.3"):
        CONVERTER.hf_to_tp(extra, expected=tp.state_dict().keys(), hf_config=config)
    old = {**sd, **{f"model.{side}.embed_positions.weights": torch.zeros(8, 24)
                    for side in ("encoder", "decoder")}}  # saved by early transformers
    converted = CONVERTER.hf_to_tp(old, expected=tp.state_dict().keys(), hf_config=config)
    assert all(torch.equal(converted[k], v) for k, v in tp.state_dict().items())
    missing = {k: v for k, v in sd.items() if "encoder_attn.k_proj.bias" not in k}
    with pytest.raises(CheckpointError, match="encoder_attn.k_proj.bias"):
        CONVERTER.hf_to_tp(missing, expected=tp.state_dict().keys(), hf_config=config)
