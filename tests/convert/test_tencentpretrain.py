"""`tp convert --from/--to tencentpretrain`: tiny Hugging Face models written as TencentPretrain
checkpoints by TencentPretrain's published key correspondence (its
scripts/convert_*_from_huggingface_to_tencentpretrain.py), converted into tp, compared with the
HF logits, converted back bit for bit; the key-map rules it adds; every bad input (exit 1, the
problem named, nothing written)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from tpcli.api import load_checkpoint
from tpcli.cli.main import main
from tpcli.convert.keymap import (Concat, Copies, PermuteRows, convert,
                                  interleaved_to_half)
from tpcli.recipes import load_recipe
from tpcli.testing.convert import make_run
from tpcli.train.run_folder import read_recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

VOCAB = 99
TOL = 1e-5


def tp(*argv: Any) -> int:
    return main([str(a) for a in argv])


def randomised(model: Any) -> Any:
    """Every weight drawn anew (unit norms and zero biases would hide swapped keys)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.dim() == 1 else 0.0))
    return model.eval()


def padded_batch(seg: bool, seq2seq: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 4:] = False
    batch = {"input_ids": ids.masked_fill(~mask, 0), "attention_mask": mask}
    if seg:
        batch["segment_ids"] = (torch.arange(10) >= 5).long().expand_as(ids) * mask
    if seq2seq:  # the decoder's rows: padded too
        tmask = torch.ones(3, 6, dtype=torch.bool)
        tmask[2, 3:] = False
        batch["tgt_input_ids"] = torch.randint(5, VOCAB, (3, 6), generator=g).masked_fill(~tmask, 0)
        batch["tgt_attention_mask"] = tmask
    return batch


# ---------------------------------------------------------- TencentPretrain's correspondence


def layer_norm(out: dict, tpre: str, hf: dict, name: str) -> None:
    out[f"{tpre}.gamma"], out[f"{tpre}.beta"] = hf[f"{name}.weight"], hf[f"{name}.bias"]


def bert_to_tencentpretrain(hf: dict[str, torch.Tensor], layers: int) -> dict:
    """convert_bert_from_huggingface_to_tencentpretrain.py, as a loop."""
    out: dict[str, torch.Tensor] = {}
    e = "bert.embeddings"
    out["embedding.word.embedding.weight"] = hf[f"{e}.word_embeddings.weight"]
    out["embedding.pos.embedding.weight"] = hf[f"{e}.position_embeddings.weight"]
    seg = hf[f"{e}.token_type_embeddings.weight"]  # a zero row for padding goes first
    out["embedding.seg.embedding.weight"] = torch.cat([torch.zeros(1, seg.shape[1]), seg])
    layer_norm(out, "embedding.layer_norm", hf, f"{e}.LayerNorm")
    for i in range(layers):
        t, h = f"encoder.transformer.{i}", f"bert.encoder.layer.{i}"
        for j, qkv in enumerate(("query", "key", "value")):
            for s in ("weight", "bias"):
                out[f"{t}.self_attn.linear_layers.{j}.{s}"] = hf[f"{h}.attention.self.{qkv}.{s}"]
        for s in ("weight", "bias"):
            out[f"{t}.self_attn.final_linear.{s}"] = hf[f"{h}.attention.output.dense.{s}"]
            out[f"{t}.feed_forward.linear_1.{s}"] = hf[f"{h}.intermediate.dense.{s}"]
            out[f"{t}.feed_forward.linear_2.{s}"] = hf[f"{h}.output.dense.{s}"]
        layer_norm(out, f"{t}.layer_norm_1", hf, f"{h}.attention.output.LayerNorm")
        layer_norm(out, f"{t}.layer_norm_2", hf, f"{h}.output.LayerNorm")
    for s in ("weight", "bias"):
        out[f"target.sp.linear_1.{s}"] = hf[f"bert.pooler.dense.{s}"]
        out[f"target.sp.linear_2.{s}"] = hf[f"cls.seq_relationship.{s}"]
        out[f"target.mlm.linear_1.{s}"] = hf[f"cls.predictions.transform.dense.{s}"]
    layer_norm(out, "target.mlm.layer_norm", hf, "cls.predictions.transform.LayerNorm")
    out["target.mlm.linear_2.weight"] = hf["cls.predictions.decoder.weight"]
    out["target.mlm.linear_2.bias"] = hf["cls.predictions.bias"]
    return out


def gpt2_to_tencentpretrain(hf: dict[str, torch.Tensor], layers: int) -> dict:
    """convert_gpt2_from_huggingface_to_tencentpretrain.py: Conv1D weights transposed, c_attn
    cut into q, k, v."""
    out: dict[str, torch.Tensor] = {}
    out["embedding.word.embedding.weight"] = hf["transformer.wte.weight"]
    out["embedding.pos.embedding.weight"] = hf["transformer.wpe.weight"]
    width = hf["transformer.h.0.attn.c_attn.weight"].shape[0]
    for i in range(layers):
        t, h = f"encoder.transformer.{i}", f"transformer.h.{i}"
        for j in range(3):
            rows = slice(j * width, (j + 1) * width)
            out[f"{t}.self_attn.linear_layers.{j}.weight"] = \
                hf[f"{h}.attn.c_attn.weight"].t()[rows, :].contiguous()
            out[f"{t}.self_attn.linear_layers.{j}.bias"] = hf[f"{h}.attn.c_attn.bias"][rows]
        out[f"{t}.self_attn.final_linear.weight"] = hf[f"{h}.attn.c_proj.weight"].t().contiguous()
        out[f"{t}.self_attn.final_linear.bias"] = hf[f"{h}.attn.c_proj.bias"]
        out[f"{t}.feed_forward.linear_1.weight"] = hf[f"{h}.mlp.c_fc.weight"].t().contiguous()
        out[f"{t}.feed_forward.linear_1.bias"] = hf[f"{h}.mlp.c_fc.bias"]
        out[f"{t}.feed_forward.linear_2.weight"] = hf[f"{h}.mlp.c_proj.weight"].t().contiguous()
        out[f"{t}.feed_forward.linear_2.bias"] = hf[f"{h}.mlp.c_proj.bias"]
        layer_norm(out, f"{t}.layer_norm_1", hf, f"{h}.ln_1")
        layer_norm(out, f"{t}.layer_norm_2", hf, f"{h}.ln_2")
    layer_norm(out, "encoder.layer_norm", hf, "transformer.ln_f")
    out["target.lm.output_layer.weight"] = hf["lm_head.weight"]
    return out


def llama_to_tencentpretrain(hf: dict[str, torch.Tensor], layers: int, heads: int) -> dict:
    """convert_llama_from_huggingface_to_tencentpretrain.py: q and k rows `unpermute`d to
    interleaved rotary pairs."""
    def unpermute(w: torch.Tensor) -> torch.Tensor:
        dim = w.shape[1]
        return w.reshape(heads, 2, dim // heads // 2, dim).transpose(2, 1).reshape(dim, dim)

    out = {"embedding.word.embedding.weight": hf["model.embed_tokens.weight"]}
    for i in range(layers):
        t, h = f"encoder.transformer.{i}", f"model.layers.{i}"
        out[f"{t}.self_attn.linear_layers.0.weight"] = unpermute(hf[f"{h}.self_attn.q_proj.weight"])
        out[f"{t}.self_attn.linear_layers.1.weight"] = unpermute(hf[f"{h}.self_attn.k_proj.weight"])
        out[f"{t}.self_attn.linear_layers.2.weight"] = hf[f"{h}.self_attn.v_proj.weight"]
        out[f"{t}.self_attn.final_linear.weight"] = hf[f"{h}.self_attn.o_proj.weight"]
        out[f"{t}.layer_norm_1.weight"] = hf[f"{h}.input_layernorm.weight"]
        out[f"{t}.feed_forward.linear_gate.weight"] = hf[f"{h}.mlp.gate_proj.weight"]
        out[f"{t}.feed_forward.linear_1.weight"] = hf[f"{h}.mlp.up_proj.weight"]
        out[f"{t}.feed_forward.linear_2.weight"] = hf[f"{h}.mlp.down_proj.weight"]
        out[f"{t}.layer_norm_2.weight"] = hf[f"{h}.post_attention_layernorm.weight"]
    out["encoder.layer_norm.weight"] = hf["model.norm.weight"]
    out["target.lm.output_layer.weight"] = hf["lm_head.weight"]
    return out


def t5_to_tencentpretrain(hf: dict[str, torch.Tensor], layers: int) -> dict:
    """convert_t5_from_huggingface_to_tencentpretrain.py (--type t5-v1_1): one relative table
    per stack, gated FFN (wi_0 the gate, wi_1 the linear)."""
    out = {"embedding.word.embedding.weight": hf["encoder.embed_tokens.weight"],
           "tgt_embedding.word.embedding.weight": hf["decoder.embed_tokens.weight"],
           "target.lm.output_layer.weight": hf["lm_head.weight"],
           "encoder.layer_norm.weight": hf["encoder.final_layer_norm.weight"],
           "decoder.layer_norm.weight": hf["decoder.final_layer_norm.weight"]}
    rel = "layer.0.SelfAttention.relative_attention_bias.weight"
    out["encoder.relative_pos_emb.relative_attention_bias.weight"] = hf[f"encoder.block.0.{rel}"]
    out["decoder.self_pos_emb.relative_attention_bias.weight"] = hf[f"decoder.block.0.{rel}"]

    def ffn(t: str, h: str) -> None:
        out[f"{t}.feed_forward.linear_gate.weight"] = hf[f"{h}.DenseReluDense.wi_0.weight"]
        out[f"{t}.feed_forward.linear_1.weight"] = hf[f"{h}.DenseReluDense.wi_1.weight"]
        out[f"{t}.feed_forward.linear_2.weight"] = hf[f"{h}.DenseReluDense.wo.weight"]

    def attn(t: str, h: str) -> None:
        for j, name in enumerate("qkv"):
            out[f"{t}.linear_layers.{j}.weight"] = hf[f"{h}.{name}.weight"]
        out[f"{t}.final_linear.weight"] = hf[f"{h}.o.weight"]

    for i in range(layers):
        t, h = f"encoder.transformer.{i}", f"encoder.block.{i}"
        attn(f"{t}.self_attn", f"{h}.layer.0.SelfAttention")
        out[f"{t}.layer_norm_1.weight"] = hf[f"{h}.layer.0.layer_norm.weight"]
        ffn(t, f"{h}.layer.1")
        out[f"{t}.layer_norm_2.weight"] = hf[f"{h}.layer.1.layer_norm.weight"]
        t, h = f"decoder.transformer_decoder.{i}", f"decoder.block.{i}"
        attn(f"{t}.self_attn", f"{h}.layer.0.SelfAttention")
        out[f"{t}.layer_norm_1.weight"] = hf[f"{h}.layer.0.layer_norm.weight"]
        attn(f"{t}.context_attn", f"{h}.layer.1.EncDecAttention")
        out[f"{t}.layer_norm_2.weight"] = hf[f"{h}.layer.1.layer_norm.weight"]
        ffn(t, f"{h}.layer.2")
        out[f"{t}.layer_norm_3.weight"] = hf[f"{h}.layer.2.layer_norm.weight"]
    return out


# ---------------------------------------------------------- the families


def bert() -> tuple[Any, dict, dict, Callable]:
    hf = randomised(transformers.BertForPreTraining(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=40, type_vocab_size=2,
        layer_norm_eps=1e-12, hidden_act="gelu")))
    config = {"emb_size": 32, "hidden_size": 32, "feedforward_size": 48, "hidden_act": "gelu",
              "heads_num": 4, "layers_num": 2, "max_seq_length": 40, "dropout": 0.1,
              "data_processor": "bert", "embedding": ["word", "pos", "seg"],
              "encoder": "transformer", "mask": "fully_visible", "target": ["mlm", "sp"],
              "tie_weights": True, "layernorm_eps": 1e-12}
    state = bert_to_tencentpretrain(hf.state_dict(), 2)

    def logits(b: dict) -> tuple[torch.Tensor, str]:
        ref = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"].long(),
                 token_type_ids=b["segment_ids"])
        return ref.prediction_logits, "mlm"
    return hf, config, state, logits


def gpt2() -> tuple[Any, dict, dict, Callable]:
    hf = randomised(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=40,
        layer_norm_epsilon=1e-5, activation_function="gelu_new")))
    config = {"emb_size": 32, "hidden_size": 32, "feedforward_size": 64,
              "hidden_act": "gelu_fast", "heads_num": 4, "layers_num": 2, "max_seq_length": 40,
              "dropout": 0.1, "data_processor": "lm", "embedding": ["word", "pos"],
              "remove_embedding_layernorm": True, "encoder": "transformer", "mask": "causal",
              "layernorm_positioning": "pre", "target": ["lm"], "tie_weights": True,
              "layernorm_eps": 1e-5}
    state = gpt2_to_tencentpretrain(hf.state_dict(), 2)

    def logits(b: dict) -> tuple[torch.Tensor, str]:
        return hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"].long()).logits, "lm"
    return hf, config, state, logits


def llama() -> tuple[Any, dict, dict, Callable]:
    hf = randomised(transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=48, max_position_embeddings=64,
        rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu")))
    config = {"emb_size": 32, "hidden_size": 32, "feedforward_size": 48, "hidden_act": "silu",
              "heads_num": 4, "layers_num": 2, "dropout": 0.0, "data_processor": "lm",
              "max_seq_length": 64, "embedding": ["word"], "remove_transformer_bias": True,
              "remove_embedding_layernorm": True, "rotary_position_embedding": True,
              "encoder": "transformer", "feed_forward": "gated", "mask": "causal",
              "layernorm_positioning": "pre", "layernorm": "rms", "target": ["lm"],
              "layernorm_eps": 1e-6}
    state = llama_to_tencentpretrain(hf.state_dict(), 2, 4)

    def logits(b: dict) -> tuple[torch.Tensor, str]:
        return hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"].long()).logits, "lm"
    return hf, config, state, logits


def t5() -> tuple[Any, dict, dict, Callable]:
    """T5 v1.1: untied output (HF does not rescale it), head_size * heads != hidden."""
    cfg = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=6, d_ff=48, num_layers=2, num_decoder_layers=2,
        num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        layer_norm_epsilon=1e-6, dropout_rate=0.0, decoder_start_token_id=0)
    cfg.tie_word_embeddings = False  # transformers 5 forces True for T5 v1.1 in __init__
    hf = randomised(transformers.T5ForConditionalGeneration(cfg))
    # T5's encoder and decoder read the one `shared` table (transformers 5 unties them with
    # tie_word_embeddings=False; T5 v1.1 checkpoints hold one)
    hf.encoder.embed_tokens.weight = hf.decoder.embed_tokens.weight = hf.shared.weight
    config = {"emb_size": 32, "hidden_size": 32, "feedforward_size": 48,
              "hidden_act": "gelu_fast", "attention_head_size": 6, "heads_num": 4,
              "layers_num": 2, "decoder_layers_num": 2, "dropout": 0.0, "data_processor": "t5",
              "embedding": ["word"], "relative_position_embedding": True,
              "remove_embedding_layernorm": True, "tgt_embedding": ["word"],
              "share_embedding": True, "encoder": "transformer", "mask": "fully_visible",
              "layernorm_positioning": "pre", "feed_forward": "gated",
              "remove_attention_scale": True, "layernorm": "t5",
              "remove_transformer_bias": True, "decoder": "transformer", "target": ["lm"],
              "layernorm_eps": 1e-6}
    state = t5_to_tencentpretrain(hf.state_dict(), 2)

    def logits(b: dict) -> tuple[torch.Tensor, str]:
        return hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"].long(),
                  decoder_input_ids=b["tgt_input_ids"],
                  decoder_attention_mask=b["tgt_attention_mask"].long()).logits, "lm"
    return hf, config, state, logits


FAMILIES = {"bert": bert, "gpt2": gpt2, "llama": llama, "t5": t5}


def vocab_file(folder: Path) -> Path:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"tok{i}" for i in range(VOCAB - len(tokens))]
    path = folder / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return path


@pytest.fixture(scope="module", params=list(FAMILIES))
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[str, Any, dict, dict, Path, Callable]:
    """(family, hf model, TencentPretrain config, its state dict, the tp folder, HF logits)."""
    family = request.param
    hf, config, state, logits = FAMILIES[family]()
    work = tmp_path_factory.mktemp(family)
    (work / "config.json").write_text(json.dumps(config))
    torch.save(state, work / "model.bin")
    extra = ["--vocab", vocab_file(work)] if family == "bert" else []
    assert tp("convert", work / "model.bin", "--from", "tencentpretrain", "--config",
              work / "config.json", "--out", work / "tp", *extra) == 0
    return family, hf, config, state, work, logits


def test_from_tencentpretrain_matches_hf_logits(converted: tuple) -> None:
    family, hf, _, _, work, logits = converted
    loaded = load_checkpoint(work / "tp")
    b = padded_batch(seg=family == "bert", seq2seq=family == "t5")
    with torch.no_grad():
        ref, target = logits(b)
        ours = loaded.model.predict(b)[target]
    real = b["tgt_attention_mask"] if family == "t5" else b["attention_mask"]
    diff = (ours - ref).abs()[real].max().item()
    assert diff <= TOL, f"{family}: max abs diff {diff:.3g}"
    files = sorted(p.name for p in (work / "tp").iterdir())
    assert {"checkpoint.json", "model.safetensors", "recipe.yaml"} <= set(files)
    info = json.loads((work / "tp" / "checkpoint.json").read_text())
    assert info["converted_from"]["format"] == "tencentpretrain"
    if family == "bert":  # --vocab: the folder carries its tokenizer
        assert loaded.tokenizer is not None and loaded.tokenizer.vocab_size == VOCAB
        assert read_recipe(work / "tp")["data"]["tokenizer"]["name"] == "wordpiece"
    else:  # the default tokenizer is not the checkpoint's size: none kept
        assert loaded.tokenizer is None
        assert "tokenizer" not in read_recipe(work / "tp")["data"]


def test_round_trip_is_bit_exact(converted: tuple, capsys: pytest.CaptureFixture) -> None:
    family, _, config, state, work, _ = converted
    capsys.readouterr()
    assert tp("convert", work / "tp", "--to", "tencentpretrain", "--out", work / "back",
              "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["converter"] == "tencentpretrain"
    back = torch.load(work / "back" / "model.bin", weights_only=True)
    if family == "t5":  # the layers' names of the one relative table, as TencentPretrain reads it
        table = "relative_pos_emb.relative_attention_bias.weight"
        layers = [f"encoder.transformer.{i}.{table}" for i in range(2)]
        assert set(back) - set(state) == set(layers)
        assert all(torch.equal(back[k], state[f"encoder.{table}"]) for k in layers)
        back = {k: v for k, v in back.items() if k not in layers}
    assert sorted(back) == sorted(state)
    unequal = [k for k in state if not torch.equal(back[k], state[k])]
    assert not unequal, unequal
    if config.get("tie_weights"):  # tied: one storage under both names, as TencentPretrain saves
        out = "target.mlm.linear_2.weight" if family == "bert" else "target.lm.output_layer.weight"
        assert back[out].data_ptr() == back["embedding.word.embedding.weight"].data_ptr()
    written = json.loads((work / "back" / "config.json").read_text())
    again = load_recipe(str(work / "back" / "config.json"), [f"model.vocab_size={VOCAB}"])
    assert again.raw["model"] == read_recipe(work / "tp")["model"]
    assert written["target"] == config["target"]


# ---------------------------------------------------------- the key-map rules


def test_permute_rows_is_exact_both_ways() -> None:
    table = torch.arange(12.0).reshape(3, 4)  # TencentPretrain's rows: padding, A, B
    rule = PermuteRows("seg", "tp.seg", (1, 2, 0))
    ours = convert({"seg": table}, [rule], "hf_to_tp")["tp.seg"]
    assert torch.equal(ours, table[[1, 2, 0]])  # tp's ids: A = 0, B = 1
    assert torch.equal(convert({"tp.seg": ours}, [rule], "tp_to_hf")["seg"], table)


def test_rotary_rows_follow_the_published_unpermute() -> None:
    heads, hd, dim = 2, 4, 8
    w = torch.randn(heads * hd, dim)  # HF's (rotate-half) q
    interleaved = w.reshape(heads, 2, hd // 2, dim).transpose(2, 1).reshape(heads * hd, dim)
    order = interleaved_to_half(heads, hd)
    rule = Concat(("q", "k", "v"), "qkv", sizes=(8, 8, 8), orders=(order, order, None))
    src = {"q": interleaved, "k": interleaved * 2, "v": w * 3}
    fused = convert(src, [rule], "hf_to_tp")["qkv"]
    assert torch.equal(fused, torch.cat([w, w * 2, w * 3]))
    back = convert({"qkv": fused}, [rule], "tp_to_hf")
    assert all(torch.equal(back[k], src[k]) for k in src)


def test_copies_prefers_the_first_group_and_writes_every_name() -> None:
    layer, other = torch.randn(4, 2), torch.randn(4, 2)
    rule = Copies((("l.0", "l.1"), ("top",)), "bias")
    assert torch.equal(convert({"l.0": layer, "l.1": layer, "top": other}, [rule],
                               "hf_to_tp")["bias"], layer)
    assert torch.equal(convert({"top": other}, [rule], "hf_to_tp")["bias"], other)
    out = convert({"bias": layer}, [rule], "tp_to_hf")
    assert sorted(out) == ["l.0", "l.1", "top"] and all(torch.equal(v, layer)
                                                        for v in out.values())
    with pytest.raises(Exception, match="differs from l.0"):
        convert({"l.0": layer, "l.1": other}, [rule], "hf_to_tp")


# ---------------------------------------------------------- errors: exit 1, nothing written


def fails(argv: list, capsys: pytest.CaptureFixture, *needles: str) -> str:
    capsys.readouterr()
    assert tp(*argv) == 1
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    assert "Traceback" not in err
    return err


def test_missing_config_is_named(converted: tuple, capsys: pytest.CaptureFixture,
                                 tmp_path: Path) -> None:
    work = converted[4]
    fails(["convert", work / "model.bin", "--from", "tencentpretrain", "--out", tmp_path / "o"],
          capsys, "--config")
    assert not (tmp_path / "o").exists()


def test_keys_that_do_not_fit_the_config_are_named(converted: tuple, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    family, _, config, state, work, _ = converted
    if family != "gpt2":
        pytest.skip("one family shows it")
    wrong = dict(config, target=["mlm"], tie_weights=False)  # an mlm head the file lacks
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    fails(["convert", work / "model.bin", "--from", "tencentpretrain", "--config",
           tmp_path / "wrong.json", "--out", tmp_path / "o"], capsys,
          "do not fit", "target.lm.output_layer.weight", "target.mlm.linear_1.weight")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wrong.json"]


def test_corrupt_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "model.bin").write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    (tmp_path / "config.json").write_text(json.dumps(gpt2()[1]))
    fails(["convert", tmp_path / "model.bin", "--from", "tencentpretrain", "--config",
           tmp_path / "config.json", "--out", tmp_path / "o"], capsys,
          "not a readable TencentPretrain checkpoint")
    assert not (tmp_path / "o").exists()


def test_ddp_prefix_and_safetensors_are_read(converted: tuple, tmp_path: Path) -> None:
    family, _, _, state, work, _ = converted
    if family != "llama":
        pytest.skip("one family shows it")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.bin")
    assert tp("convert", tmp_path / "ddp.bin", "--from", "tencentpretrain", "--config",
              work / "config.json", "--out", tmp_path / "o") == 0
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "m.safetensors"))
    assert tp("convert", tmp_path / "m.safetensors", "--from", "tencentpretrain", "--config",
              work / "config.json", "--out", tmp_path / "st") == 0
    b = load_checkpoint(work / "tp").model.state_dict()
    for other in ("o", "st"):
        a = load_checkpoint(tmp_path / other).model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b)


def test_to_tencentpretrain_refuses_what_it_cannot_express(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run("vit-tiny", tmp_path / "run", [])
    fails(["convert", run, "--to", "tencentpretrain", "--out", tmp_path / "o"], capsys,
          "TencentPretrain has no counterpart", "patch")
    assert not (tmp_path / "o").exists()


def test_to_tencentpretrain_from_a_tp_bert_run(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """tp's own BERT (2 segment types, HF's layout) goes out with TencentPretrain's 3 rows: a zero
    padding row, then A and B; read back, the same weights in a types=3 table."""
    run = make_run("bert-tiny", tmp_path / "run", [])
    capsys.readouterr()
    assert tp("convert", run, "--to", "tencentpretrain", "--out", tmp_path / "o", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert "2 types" in summary["notes"]
    state = torch.load(tmp_path / "o" / "model.bin", weights_only=True)
    seg = load_checkpoint(run).model.state_dict()["stack.embedding.parts.seg.embedding.weight"]
    assert torch.equal(state["embedding.seg.embedding.weight"],
                       torch.cat([torch.zeros(1, seg.shape[1]), seg]))
    assert tp("convert", tmp_path / "o" / "model.bin", "--from", "tencentpretrain", "--config",
              tmp_path / "o" / "config.json", "--out", tmp_path / "back") == 0
    back = load_checkpoint(tmp_path / "back").model.state_dict()
    assert torch.equal(back["stack.embedding.parts.seg.embedding.weight"][:2], seg)
