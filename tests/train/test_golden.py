"""Golden losses: a fixed-seed tiny BERT run reproduces its first losses, and learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import run_tp

# First 10 losses of the tiny recipe (tpcli/testing/recipes.py) on the first 20 pydoc topics,
# seed 3, torch 2.13 CPU, fp32. Regenerate only when a change is meant to alter training (last:
# the MFU peak measurement draws from a private generator, no longer from the dropout stream).
GOLDEN = [10.9958, 11.05625, 10.98834, 10.98439, 10.95447, 11.00192, 10.96637, 10.93609,
          10.90767, 10.92541]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_golden_losses_and_learning(tmp_path: Path, tiny_recipe: Path, tiny_data: Path) -> None:
    run = tmp_path / "run"
    r = run_tp("pretrain", str(tiny_recipe), "--data", str(tiny_data), "--out", str(run),
               "--no-progress")
    assert r.returncode == 0, r.stderr
    recs = _metrics(run)
    assert [m["step"] for m in recs] == list(range(1, 41))
    assert [m["loss"] for m in recs[:10]] == pytest.approx(GOLDEN, abs=2e-4)
    first, last = recs[0], recs[-1]
    # a 30522-way MLM starts near ln(30522) + ln(2) for the two targets
    assert 10.0 < first["loss"] < 11.5
    early = sum(m["loss"] for m in recs[:5]) / 5
    late = sum(m["loss"] for m in recs[-5:]) / 5
    assert late < early - 0.3  # 40 steps at lr 1e-3: 11.0 -> 10.5
    for key in ("mlm.acc", "sp.acc", "lr", "grad_norm", "tokens_per_s", "mfu"):
        assert key in last, key
    assert 0.0 < last["mfu"] < 1.0
    assert (run / "last" / "model.safetensors").is_file()
    assert "step     40/40" in r.stderr


def test_existing_run_folder_is_not_overwritten(tmp_path: Path, tiny_recipe: Path,
                                                tiny_data: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    r = run_tp("pretrain", str(tiny_recipe), "--data", str(tiny_data), "--out", str(run))
    assert r.returncode == 1
    # a folder tp did not make is neither resumed nor taken over
    assert "is not a tp run folder (it holds keep.txt)" in r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]


def test_dataset_of_another_tokenizer_is_refused(tmp_path: Path, tiny_recipe: Path,
                                                 tiny_data: Path) -> None:
    run = tmp_path / "run"
    r = run_tp("pretrain", str(tiny_recipe), "--data", str(tiny_data), "--out", str(run),
               "data.tokenizer.lowercase=false")
    assert r.returncode == 1
    assert "was tokenized with wordpiece" in r.stderr and "preprocess` with this recipe" in r.stderr
    assert "Traceback" not in r.stderr
    assert not run.exists()


def test_checkpoint_with_missing_keys_is_named(tmp_path: Path, tiny_recipe: Path,
                                               tiny_data: Path) -> None:
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    assert run_tp("pretrain", str(tiny_recipe), "--data", str(tiny_data), "--out", str(run),
                  "pretrain.steps=2", "pretrain.save_every=1", "--no-progress").returncode == 0
    weights = run / "last" / "model.safetensors"
    state = load_file(str(weights))
    del state["targets.sp.classifier.weight"]
    save_file(state, str(weights))
    r = run_tp("pretrain", "--resume", str(run), "pretrain.steps=4")
    assert r.returncode == 1
    assert "missing: targets.sp.classifier.weight" in r.stderr and "does not fit the model" in r.stderr
    assert "Traceback" not in r.stderr
