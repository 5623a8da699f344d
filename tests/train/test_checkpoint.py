"""Checkpoint files: atomic writes, strict loading that names keys, corrupt files rejected."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tpcli.errors import CheckpointError, TpError
from tpcli.train import checkpoint as ck


class _Tok:
    def save(self, directory: str) -> None:
        Path(directory).mkdir()
        (Path(directory) / "vocab.txt").write_text("[PAD]\n")


def _write(run: Path, step: int, model: torch.nn.Module, keep: int = 2) -> Path:
    return ck.save_checkpoint(run, step, ck.Unsharded(model), None, {"step": step},
                              {"model": {}}, _Tok(), keep)


def test_write_prunes_and_points_last(tmp_path: Path) -> None:
    m = torch.nn.Linear(3, 2)
    for step in (10, 20, 30):
        _write(tmp_path, step, m)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000020", "step-00000030"]
    assert (tmp_path / "last").resolve().name == "step-00000030"
    assert ck.find_checkpoint(tmp_path) == (tmp_path / "checkpoints" / "step-00000030").resolve()
    state = ck.read_weights(ck.find_checkpoint(tmp_path))
    assert torch.equal(state["weight"], m.weight)


def test_failed_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    m = torch.nn.Linear(3, 2)
    _write(tmp_path, 10, m)

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_weights", disk_full)
    with pytest.raises(TpError, match="No space left on device.*previous checkpoint is intact"):
        _write(tmp_path, 20, m)
    assert (tmp_path / "last").resolve().name == "step-00000010"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000010"]


def test_strict_load_names_missing_unexpected_and_shapes(tmp_path: Path) -> None:
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    state = {k: v.clone() for k, v in m.state_dict().items()}
    del state["1.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(5, 5)
    with pytest.raises(CheckpointError) as e:
        ck.load_weights(m, state, "x")
    msg = str(e.value)
    assert "missing: 1.bias" in msg and "unexpected: extra.weight" in msg
    assert "wrong shape: 0.weight (5, 5) vs model (2, 3)" in msg


def test_corrupt_and_absent_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.find_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        ck.find_checkpoint(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ck.WEIGHTS).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        ck.read_weights(ck.find_checkpoint(bad))
    (bad / ck.TRAINER).write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="corrupt"):
        ck.read_trainer_state(bad)
    save_file({"w": torch.zeros(1)}, str(bad / ck.WEIGHTS))
    assert ck.read_weights(bad)["w"].shape == (1,)
