"""Task `retrieval` on a tiny random CLIP converted from HF: 17 captioned images (scikit-image's
four pictures, one of them captioned twice, and twelve Fashion-MNIST images), through `tp infer
--task retrieval` from a TSV, a JSONL manifest and a WebDataset shard. The reference is the HF
CLIPModel's own logits_per_text for the captions against the distinct images, ranked by brute
force in numpy; recall@1/5/10 both ways and their mean follow from those ranks."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from clip_models import TEXT  # noqa: E402
from clip_tasks import (SKIMAGE, clip_checkpoint, fashion, hf_model, infer,  # noqa: E402
                        read_jsonl, save_png, skimage_pictures)

KS = (1, 5, 10)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """pairs.tsv (text<TAB>path), pairs.jsonl and pairs.tar of the same pairs; `images`: the
    distinct image files, `column`: each pair's distinct image."""
    ckpt = clip_checkpoint(tmp_path_factory)
    d = tmp_path_factory.mktemp("retrieval")
    pairs: list[tuple[str, Path]] = []
    for name, pixels in skimage_pictures().items():
        pairs.append((SKIMAGE[name], save_png(d / "img" / f"{name}.png", pixels)))
    pairs.append(("a cat resting on a blanket", d / "img" / "chelsea.png"))  # a second caption
    for i, (pixels, label) in enumerate(zip(*fashion(12))):
        # unique captions: two equal ones would tie exactly (the brute force breaks ties by
        # position, the task in favour of the match; the tie rule has its own test)
        pairs.append((f"{i}: a {label}", save_png(d / "img" / f"f{i}.png", pixels)))
    (d / "pairs.tsv").write_text("text\tpath\n" + "".join(
        f"{t}\t{p.relative_to(d)}\n" for t, p in pairs))
    (d / "pairs.jsonl").write_text("".join(
        json.dumps({"image": str(p.relative_to(d)), "caption": t}) + "\n" for t, p in pairs))
    with tarfile.open(d / "pairs.tar", "w") as tar:
        for i, (t, p) in enumerate(pairs):
            for suffix, payload in ((".png", p.read_bytes()), (".txt", t.encode())):
                info = tarfile.TarInfo(f"{i:05d}{suffix}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    images = list(dict.fromkeys(p for _, p in pairs))
    return {**ckpt, "dir": d, "pairs": pairs, "images": images,
            "column": [images.index(p) for _, p in pairs]}


def hf_logits_per_text(folder: Path, texts: list[str], images: list[Path]) -> np.ndarray:
    """(N, M) CLIPModel's logits_per_text, the inputs through the folder's CLIPProcessor."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(folder))
    inputs = processor(text=texts, images=[Image.open(p).convert("RGB") for p in images],
                       padding=True, truncation=True, max_length=TEXT["max_position_embeddings"],
                       return_tensors="pt")
    with torch.no_grad():
        return hf_model(folder)(**inputs).logits_per_text.numpy()


def brute_force_ranks(scores: np.ndarray, match: np.ndarray) -> list[int]:
    """Per query row: 1 + the position of its first match in the candidates sorted by score,
    best first (a stable sort: no ties here)."""
    out = []
    for row, ok in zip(scores, match):
        order = sorted(range(len(row)), key=lambda j: -row[j])
        out.append(1 + next(n for n, j in enumerate(order) if ok[j]))
    return out


def test_ranks_and_recalls_match_hf_logits_by_brute_force(data: dict[str, Any]) -> None:
    """`tp infer` as a user runs it (a subprocess), on the TSV."""
    from tpcli.testing.runs import run_tp

    out = data["dir"] / "ranks.jsonl"
    done = run_tp("infer", str(data["tp"]), "--task", "retrieval", "--input",
                  str(data["dir"] / "pairs.tsv"), "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    logits = hf_logits_per_text(data["hf"], [t for t, _ in data["pairs"]], data["images"])
    match = np.asarray(data["column"])[:, None] == np.arange(len(data["images"]))[None, :]
    t2i = brute_force_ranks(logits, match)  # one query per caption
    i2t = brute_force_ranks(logits.T, match.T)  # one query per distinct image
    preds = read_jsonl(out)
    assert [p["text_to_image_rank"] for p in preds] == t2i
    assert [p["image_to_text_rank"] for p in preds] == [i2t[j] for j in data["column"]]
    assert [p["image"] for p in preds] == [str(p) for _, p in data["pairs"]]
    want = {f"t2i_recall@{k}": np.mean([r <= k for r in t2i]) for k in KS}
    want |= {f"i2t_recall@{k}": np.mean([r <= k for r in i2t]) for k in KS}
    want["mean_recall"] = np.mean(list(want.values()))
    for name, value in want.items():
        assert summary[name] == pytest.approx(value, abs=1e-12), name
    assert summary["examples"] == 17 and len(i2t) == 16
    assert 0 < summary["mean_recall"] < 1 and summary["t2i_recall@10"] < 1  # not trivial


def test_jsonl_and_webdataset_shards_rank_the_same(data: dict[str, Any]) -> None:
    """The same pairs from a JSONL manifest and from a tar shard (images as bytes: the same
    picture twice is one candidate by its digest) give the TSV's ranks."""
    results = []
    for name in ("pairs.tsv", "pairs.jsonl", "pairs.tar"):
        out = data["dir"] / f"{name}.ranks.jsonl"
        code, printed = infer(str(data["tp"]), "--task", "retrieval", "--input",
                              str(data["dir"] / name), "--out", str(out))
        assert code == 0, printed
        results.append([(p["text_to_image_rank"], p["image_to_text_rank"])
                        for p in read_jsonl(out)])
    assert results[1] == results[0] and results[2] == results[0]
    shard = read_jsonl(data["dir"] / "pairs.tar.ranks.jsonl")
    assert shard[0]["image"].endswith("pairs.tar:00000.png")


def test_rank_ties_go_to_the_match_and_the_best_of_several_matches_counts() -> None:
    from tp_multimodal.retrieval import ranks

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.randint(0, 4, (7, 9), generator=g).float()  # many ties
        match = torch.rand(7, 9, generator=g) < 0.25
        match[torch.arange(7), torch.randint(0, 9, (7,), generator=g)] = True
        want = []
        for row, ok in zip(scores.tolist(), match.tolist()):
            best = max(s for s, m in zip(row, ok) if m)
            want.append(1 + sum(1 for s, m in zip(row, ok) if not m and s > best))
        assert ranks(scores, match).tolist() == want


def test_bad_inputs_exit_1_naming_the_problem(data: dict[str, Any], tmp_path: Path) -> None:
    tp, out = str(data["tp"]), str(tmp_path / "r.jsonl")
    (tmp_path / "missing.tsv").write_text("a cat\tnowhere.png\n")
    code, printed = infer(tp, "--task", "retrieval", "--input", str(tmp_path / "missing.tsv"),
                          "--out", out)
    assert code == 1 and "nowhere.png does not exist" in printed and "missing.tsv:1" in printed
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    (tmp_path / "bad.tsv").write_text(f"a cat\t{data['images'][0]}\na dog\tbad.png\n")
    code, printed = infer(tp, "--task", "retrieval", "--input", str(tmp_path / "bad.tsv"),
                          "--out", out)
    assert code == 1 and "bad.png" in printed
    (tmp_path / "empty.tsv").write_text("text\tpath\n")
    code, printed = infer(tp, "--task", "retrieval", "--input", str(tmp_path / "empty.tsv"),
                          "--out", out)
    assert code == 1 and "holds no examples" in printed
    assert not Path(out).exists()
