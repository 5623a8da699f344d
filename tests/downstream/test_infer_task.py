"""`tp infer --task NAME`: which task runs, with which options (no model needed here; the CLIP
tasks of tp-multimodal run it end to end on converted checkpoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tpcli.downstream.finetune import infer_section
from tpcli.errors import CheckpointError, TpError
from tpcli.plugins.requests import InferRequest

WHERE = Path("runs/ckpt")
SAVED = {"name": "image_classification", "classes": ["cat", "dog"], "workers": 3}


def request(task: str | None = None, *overrides: str) -> InferRequest:
    return InferRequest("runs/ckpt", "in.tsv", Path("out.jsonl"), task=task,
                        overrides=list(overrides))


def test_the_checkpoints_task_without_task() -> None:
    assert infer_section(request(), SAVED, WHERE) == SAVED
    assert infer_section(request(), "classification", WHERE) == {"name": "classification"}


def test_no_task_anywhere_keeps_the_clear_error() -> None:
    with pytest.raises(CheckpointError, match="not a fine-tuned checkpoint") as e:
        infer_section(request(), None, WHERE)
    assert "--task NAME" in (e.value.hint or "")


def test_another_task_runs_without_the_saved_options() -> None:
    """A pre-trained checkpoint (no finetune.task) or another task than the saved one: the named
    task alone, with the options given on the command line (parsed as recipe overrides are)."""
    got = infer_section(request("zero_shot", "finetune.task.classes=[cat, dog]",
                                "finetune.task.workers=4"), None, WHERE)
    assert got == {"name": "zero_shot", "classes": ["cat", "dog"], "workers": 4}
    assert infer_section(request("zero_shot"), SAVED, WHERE) == {"name": "zero_shot"}


def test_the_same_task_keeps_its_fitted_state_and_takes_overrides() -> None:
    got = infer_section(request("image_classification", "finetune.task.workers=1"), SAVED, WHERE)
    assert got == {**SAVED, "workers": 1}
    assert infer_section(request(None, "finetune.task.workers=1"), SAVED, WHERE) == got


@pytest.mark.parametrize("bad", ["model.hidden_size=8", "finetune.lr=1", "finetune.task=x",
                                 "finetune.task.name=x", "finetune.task.a.b=1", "workers"])
def test_only_task_options_are_taken(bad: str) -> None:
    with pytest.raises(TpError) as e:
        infer_section(request("zero_shot", bad), None, WHERE)
    assert bad.partition("=")[0] in e.value.message


def test_the_command_line_passes_task_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import tpcli.verbs
    from tpcli.cli.main import main

    seen: list[Any] = []

    def fake(req: InferRequest) -> dict[str, Any]:
        seen.append(req)
        return {"examples": 0, "out": str(req.out)}

    monkeypatch.setattr(tpcli.verbs, "infer", fake)
    assert main(["infer", "ckpt", "finetune.task.classes=[a, b]", "--task", "zero_shot",
                 "--input", "in.tsv", "--out", "o.jsonl", "finetune.task.workers=2"]) == 0
    assert (seen[0].task, seen[0].overrides) == \
        ("zero_shot", ["finetune.task.classes=[a, b]", "finetune.task.workers=2"])
    assert main(["infer", "ckpt", "--input", "in.tsv", "--out", "o.jsonl"]) == 0
    assert (seen[1].task, seen[1].overrides) == (None, [])
