"""A card in tp format (a tp checkpoint folder published at any fsspec URL): pulled as it is by
default, and converted to a Hugging Face folder that plain `transformers` loads with
`--format hf`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

from tpcli.api import load_checkpoint
from tpcli.testing.convert import make_run
from tpcli.zoo import ZooRequest, zoo

from .conftest import ZooEnv, file_entries

transformers = pytest.importorskip("transformers")
SMALL = ["model.hidden_size=32", "model.encoder.layers=2", "model.encoder.heads=2",
         "model.encoder.ffn_size=64", "model.embedding.pos.max_length=64"]


def test_tp_card_pulls_as_is_and_converts_to_hf(tmp_path: Path, zoo_env: ZooEnv,
                                                write_card: Callable[..., Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # a file:// source: no Hub involved
    ckpt = make_run("bert-tiny", tmp_path / "run", SMALL) / "last"
    ckpt = ckpt.resolve()
    names = tuple(str(p.relative_to(ckpt)) for p in sorted(ckpt.rglob("*")) if p.is_file())
    write_card("tp-bert", ckpt.as_uri(), file_entries(ckpt, names), format="tp",
               model_type=None, architecture=None)
    pulled = zoo(ZooRequest("pull", name="tp-bert", progress=False))
    assert pulled["format"] == "tp"
    assert Path(pulled["path"]) == zoo_env.home / "zoo" / "tp-bert" / "main" / "files"
    ours = load_checkpoint(Path(pulled["path"]))
    hf = zoo(ZooRequest("pull", name="tp-bert", format="hf", progress=False))
    assert hf["downloaded"] == 0 and Path(hf["path"]).name == "hf"
    model = transformers.AutoModelForPreTraining.from_pretrained(hf["path"]).eval()
    ids = torch.randint(5, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones(2, 9, dtype=torch.bool),
             "segment_ids": torch.zeros(2, 9, dtype=torch.long)}
    with torch.no_grad():
        ref = model(input_ids=ids)
        mine = ours.model.eval().predict(batch)
    assert (mine["mlm"] - ref.prediction_logits).abs().max() <= 1e-5
    assert zoo(ZooRequest("path", name="tp-bert", format="hf"))["path"] == hf["path"]
    assert zoo(ZooRequest("verify", name="tp-bert"))["failed"] == []
