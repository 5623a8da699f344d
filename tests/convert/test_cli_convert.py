"""`tp convert` end to end: a tiny tp checkpoint to a Hugging Face folder that plain
`transformers` loads, back to tp bit for bit, the parity check, and every bad input (clear error,
exit 1, nothing written)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tpcli.api import load_checkpoint
from tpcli.cli.main import main
from tpcli.testing.convert import assert_truncates, make_run

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

SMALL = ["model.hidden_size=32", "model.encoder.layers=2", "model.encoder.heads=2",
         "model.encoder.ffn_size=64", "model.embedding.pos.max_length=64"]
TEXT = ["The quick brown fox jumps over the lazy dog.", "Pre-training, then fine-tuning."]


def tp(*argv: Any) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run("bert-tiny", tmp_path_factory.mktemp("bert") / "run", SMALL)


@pytest.fixture(scope="module")
def bert_hf(bert_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "bert"
    assert tp("convert", bert_run, "--to", "hf", "--out", out) == 0
    return out


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_to_hf_loads_with_plain_transformers(bert_run: Path, bert_hf: Path) -> None:
    files = leftovers(bert_hf)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(
        files)
    assert not [f for f in files if f.startswith(".")]  # no temporary leftovers
    config = json.loads((bert_hf / "config.json").read_text())
    assert config["architectures"] == ["BertForPreTraining"]
    assert config["model_type"] == "bert"
    assert config["torch_dtype"] == "float32"
    assert config["transformers_version"] == transformers.__version__
    saved = load_file(str(bert_hf / "model.safetensors"))
    assert "cls.predictions.decoder.weight" not in saved  # tied: saved once, as transformers does
    model, info = transformers.AutoModelForPreTraining.from_pretrained(
        str(bert_hf), output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}  # no missing / unexpected / mismatched
    loaded = load_checkpoint(bert_run)
    tok = transformers.AutoTokenizer.from_pretrained(str(bert_hf))
    enc = tok(TEXT, padding=True, return_tensors="pt")
    ours = [loaded.tokenizer.encode(t) for t in TEXT]
    cls_id, sep_id = loaded.tokenizer.special_ids["cls"], loaded.tokenizer.special_ids["sep"]
    for row, ids in enumerate(ours):
        assert enc["input_ids"][row, : len(ids) + 2].tolist() == [cls_id, *ids, sep_id]
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"].bool(),
             "segment_ids": enc["token_type_ids"]}
    with torch.no_grad():
        ref = model.eval()(**enc)
    mine = loaded.model.predict(batch)
    real = batch["attention_mask"]
    assert (mine["mlm"] - ref.prediction_logits)[real].abs().max() <= 1e-5
    assert (mine["sp"] - ref.seq_relationship_logits).abs().max() <= 1e-5
    # the tokenizer cuts a long input to the model's 64 positions (not transformers' 1e30)
    assert_truncates(bert_hf, model, 64)
    # the weights are the checkpoint's, bit for bit
    body = loaded.model.state_dict()["stack.encoder.layers.1.attn.qkv.weight"]
    assert torch.equal(saved["bert.encoder.layer.1.attention.self.key.weight"], body[32:64])


def test_round_trip_is_bit_identical(bert_run: Path, bert_hf: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    back = tmp_path / "back"
    assert tp("convert", bert_hf, "--from", "hf", "--out", back, "--check") == 0
    printed = capsys.readouterr().out
    diff = float(printed.split("max abs difference of the logits: ")[1].split()[0])
    assert diff <= 1e-5
    assert leftovers(back) == ["checkpoint.json", "model.safetensors", "recipe.yaml", "tokenizer"]
    original = load_file(str(bert_run / "last" / "model.safetensors"))
    again = load_file(str(back / "model.safetensors"))
    assert set(again) == set(original)
    for key, value in original.items():
        assert torch.equal(again[key], value), key
    loaded, first = load_checkpoint(back), load_checkpoint(bert_run)
    ids = torch.randint(5, 1000, (2, 10), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones(2, 10, dtype=torch.bool),
             "segment_ids": torch.zeros(2, 10, dtype=torch.long)}
    same, before = loaded.model.predict(batch), first.model.predict(batch)
    assert all(torch.equal(same[k], before[k]) for k in ("mlm", "sp"))  # the same model
    assert loaded.tokenizer.fingerprint() == first.tokenizer.fingerprint()
    assert loaded.step == 0 and loaded.recipe.processor.name == "bert"
    # and once more to HF: the same file content
    hf2 = tmp_path / "hf2"
    assert tp("convert", back, "--to", "hf", "--out", hf2, "--check") == 0
    a, b = load_file(str(bert_hf / "model.safetensors")), load_file(str(hf2 / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_gpt2_to_hf_causal_lm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run("gpt2", tmp_path / "run", SMALL)
    out = tmp_path / "hf"
    assert tp("convert", run, "--to", "hf", "--out", out, "--check") == 0
    assert float(capsys.readouterr().out.split("logits: ")[1].split()[0]) <= 1e-5
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(out),
                                                                    output_loading_info=True)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert {k: v for k, v in info.items() if v} == {}
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert_truncates(out, model, 64)  # n_positions
    assert "lm_head.weight" not in load_file(str(out / "model.safetensors"))
    # the released gpt2 saves GPT2Model's keys (no `transformer.`) under GPT2LMHeadModel
    from safetensors.torch import save_file

    bare = {k.removeprefix("transformer."): v for k, v in
            load_file(str(out / "model.safetensors")).items()}
    save_file(bare, str(out / "model.safetensors"), metadata={"format": "pt"})
    assert tp("convert", out, "--from", "hf", "--out", tmp_path / "back", "--check") == 0
    original = load_file(str(run / "last" / "model.safetensors"))
    again = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(again) == set(original)
    assert all(torch.equal(again[k], v) for k, v in original.items())


def test_model_without_hf_counterpart_says_so(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run("elmo", tmp_path / "run", ["model.hidden_size=32", "model.encoder.layers=1"])
    assert tp("convert", run, "--to", "hf", "--out", tmp_path / "hf") == 1
    err = capsys.readouterr().err
    assert ("no Hugging Face architecture for embedding [word] + encoder bilstm + target bilm"
            in err)
    assert "Traceback" not in err
    assert not (tmp_path / "hf").exists() and leftovers(tmp_path) == ["run"]


def test_check_above_tolerance_fails_and_writes_nothing(
        bert_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tp("convert", bert_run, "--to", "hf", "--out", tmp_path / "hf", "--check",
              "--tolerance", "0") == 1
    assert "--check failed: the logits differ by up to" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


def broken(bert_hf: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    shutil.copytree(bert_hf, folder)
    return folder


def fails(argv: list[Any], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    assert tp(*argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_shapes_that_do_not_match_the_config(bert_hf: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    src = broken(bert_hf, tmp_path)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "intermediate_size": 80}))
    fails(["convert", src, "--from", "hf", "--out", tmp_path / "out"], capsys,
          "stack.encoder.layers.0.ffn.fc1.weight: checkpoint (64, 32) vs config (80, 32)")
    assert leftovers(tmp_path) == ["src"]


def test_unsupported_architecture(bert_hf: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = broken(bert_hf, tmp_path)
    (src / "config.json").write_text(json.dumps({"model_type": "mamba",
                                                 "architectures": ["MambaForCausalLM"]}))
    err = fails(["convert", src, "--from", "hf", "--out", tmp_path / "out"], capsys,
                "unsupported Hugging Face architecture 'MambaForCausalLM'")
    assert "bert" in err and "gpt2" in err and "roberta" in err  # the supported ones, listed
    assert leftovers(tmp_path) == ["src"]


def test_missing_tokenizer_file(bert_hf: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    src = broken(bert_hf, tmp_path)
    (src / "tokenizer.json").unlink()
    (src / "vocab.txt").unlink(missing_ok=True)
    fails(["convert", src, "--from", "hf", "--out", tmp_path / "out"], capsys,
          "has no tokenizer file (looked for tokenizer.json, vocab.txt)")
    assert leftovers(tmp_path) == ["src"]


def test_corrupt_safetensors(bert_hf: Path, bert_run: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    src = broken(bert_hf, tmp_path)
    blob = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    fails(["convert", src, "--from", "hf", "--out", tmp_path / "out"], capsys,
          "model.safetensors is corrupt or unreadable")
    run = tmp_path / "run"
    shutil.copytree(bert_run, run, symlinks=True)
    (run / "last" / "model.safetensors").write_bytes(b"not a safetensors file")
    fails(["convert", run, "--to", "hf", "--out", tmp_path / "hf"], capsys,
          "is corrupt or unreadable")
    assert leftovers(tmp_path) == ["run", "src"]


def test_usage_errors(bert_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    fails(["convert", bert_run, "--to", "hf", "--out", tmp_path / "full"], capsys,
          "already exists and is not empty")
    fails(["convert", bert_run, "--out", tmp_path / "o"], capsys, "exactly one of --to hf or")
    fails(["convert", bert_run, "--to", "onnx", "--out", tmp_path / "o"], capsys,
          "unknown format 'onnx'")
    fails(["convert", bert_run, "--to", "hf", "--arch", "nope", "--out", tmp_path / "o"], capsys,
          "unknown converter 'nope'")
    fails(["convert", bert_run, "--to", "hf", "--arch", "gpt2", "--out", tmp_path / "o"], capsys,
          "the gpt2 converter needs embedding [word, pos]")
    fails(["convert", "no-such-org/no-such-model", "--from", "hf", "--out", tmp_path / "o"],
          capsys, "cannot download 'no-such-org/no-such-model'", "offline")
    assert leftovers(tmp_path) == ["full"]


def test_sharded_and_bin_weights(bert_hf: Path, bert_run: Path, tmp_path: Path) -> None:
    """A sharded safetensors index and a pytorch_model.bin (read with weights_only) give the
    same tp weights as the single file."""
    original = load_file(str(bert_run / "last" / "model.safetensors"))
    sharded = broken(bert_hf, tmp_path)
    (sharded / "model.safetensors").unlink()
    model = transformers.AutoModelForPreTraining.from_pretrained(str(bert_hf))
    model.save_pretrained(str(sharded), max_shard_size="200KB")  # bert-tiny is ~1 MB
    assert (sharded / "model.safetensors.index.json").is_file()
    binary = tmp_path / "bin"
    shutil.copytree(bert_hf, binary)
    (binary / "model.safetensors").unlink()
    torch.save(dict(model.state_dict()), binary / "pytorch_model.bin")
    for src in (sharded, binary):
        out = tmp_path / f"tp-{src.name}"
        assert tp("convert", src, "--from", "hf", "--out", out) == 0
        again = load_file(str(out / "model.safetensors"))
        assert set(again) == set(original)
        assert all(torch.equal(again[k], v) for k, v in original.items())


def test_a_plugin_can_replace_the_verb(tmp_path: Path) -> None:
    """`tp convert` dispatches through the firstresult hook tp_convert (the core's runs last)."""
    import types

    from tpcli import hookimpl
    from tpcli.plugins import make_plugins
    from tpcli.verbs import ConvertRequest, convert

    seen: list[ConvertRequest] = []

    @hookimpl
    def tp_convert(request: ConvertRequest) -> dict[str, Any]:
        seen.append(request)
        return {"converter": "mine"}

    plugin = types.SimpleNamespace(__name__="my-converter", tp_convert=tp_convert)
    request = ConvertRequest("anything", tmp_path / "o", "to_hf", plugins=make_plugins([plugin]))
    assert convert(request) == {"converter": "mine"}
    assert seen == [request] and not (tmp_path / "o").exists()


def test_masked_lm_config_over_pretraining_weights(bert_hf: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """google-bert/bert-base-uncased: config.json says BertForMaskedLM, the weights are the full
    pre-training model's. tp reads them with BertForPreTraining's key map (nothing dropped) and
    the MLM logits equal BertForMaskedLM's."""
    src = tmp_path / "src"
    shutil.copytree(bert_hf, src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    out = tmp_path / "out"
    assert tp("convert", src, "--from", "hf", "--out", out, "--check") == 0
    diff = float(capsys.readouterr().out.split("max abs difference of the logits: ")[1].split()[0])
    assert diff <= 1e-5
    loaded = load_checkpoint(out)
    assert [t.name for t in loaded.recipe.model.targets] == ["mlm", "sp"]


def test_a_rotary_bert_is_refused_not_exported_wrong(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """HF BERT has learned absolute positions only: a bert-tiny trained with rotary positions
    (as `make demo` trains it) would export as a model computing other logits."""
    run = make_run("bert-tiny", tmp_path / "rotary", [*SMALL, "model.encoder.position=rotary"])
    fails(["convert", run, "--to", "hf", "--out", tmp_path / "hf"], capsys,
          "the bert converter needs positions from the `pos` embedding alone",
          "model.encoder.position=rotary")
    assert not (tmp_path / "hf").exists()
