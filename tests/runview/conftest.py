"""Real runs for `tp runs`, made once per session under one folder: two finished pre-training
runs that differ in two recipe keys, one that diverged (failed), one stopped by Ctrl-C, one
killed with SIGKILL mid-run (read while it ran, too), and a fine-tuning run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tpcli.testing.recipes import TINY_BERT

ROOT = Path(__file__).resolve().parents[2]
TP = [sys.executable, "-m", "tpcli.cli.main"]
TOPICS = ("assignment", "for", "with")
SHORT = ["pretrain.steps=6", "pretrain.save_every=3", "pretrain.log_every=1"]


@dataclass
class Runs:
    root: Path
    a: Path  # finished, lr 1e-3, 1 layer
    b: Path  # finished, lr 2e-3, 2 layers
    failed: Path  # diverged at step 2, before its first checkpoint
    ctrlc: Path  # stopped by Ctrl-C after step 6 (checkpoint at 4)
    killed: Path  # SIGKILL after its step-10 checkpoint, of 80 steps
    ft: Path  # fine-tuned from `a`
    while_running: object  # tpcli.runview.read.Run of `killed`, read before the kill
    killed_pid: int


def _sentences(topic: str) -> list[str]:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from pydoc_corpus import sentences
    finally:
        sys.path.pop(0)
    from pydoc_data.topics import topics

    return [s.replace("\t", " ") for s in sentences(topics[topic]) if len(s.split()) > 3]


def tp_env() -> dict[str, str]:
    """A child tp's environment: offline, a fixed FLOP peak, one thread (as quiet_machine:
    on a shared machine a thread pool only adds contention)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TP_PEAK_FLOPS": "1e12", "OMP_NUM_THREADS": "1"}


def _killed_run(recipe: Path, data: Path, out: Path) -> tuple[object, int]:
    """Pre-training in a child process, read by tp runs once its step-10 checkpoint is there,
    then killed with SIGKILL."""
    from tpcli.runview.read import read_run

    proc = subprocess.Popen([*TP, "pretrain", str(recipe), "--data", str(data), "--out",
                             str(out), "pretrain.steps=80", "pretrain.save_every=10",
                             "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=tp_env())
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "step-00000010").is_dir():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.02)
        seen = read_run(out)
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    return seen, proc.pid


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    from tpcli.errors import TpError
    from tpcli.plugins import make_plugins
    from tpcli.testing.runs import StopAt, quiet_machine
    from tpcli.verbs import (FinetuneRequest, PreprocessRequest, PretrainRequest, TaskData,
                             finetune, preprocess, pretrain)

    d = tmp_path_factory.mktemp("runview")
    recipe = d / "tiny"
    recipe.mkdir()
    (recipe / "recipe.yaml").write_text(TINY_BERT + "finetune: {batch_size: 8, lr: 2.0e-3, "
                                        "epochs: 2, max_length: 48, seed: 5, log_every: 2}\n")
    rows = [(t, s) for t in TOPICS for s in _sentences(t)[:24]]
    for name, part in (("train", [r for i, r in enumerate(rows) if i % 4]),
                       ("dev", [r for i, r in enumerate(rows) if i % 4 == 0])):
        (d / f"{name}.tsv").write_text("label\ttext_a\n" + "".join(f"{a}\t{b}\n" for a, b in part))
    (d / "corpus.txt").write_text("\n\n".join("\n".join(_sentences(t)) for t in TOPICS) + "\n")
    root = d / "runs"
    with quiet_machine():
        preprocess(PreprocessRequest(str(recipe), str(d / "corpus.txt"), d / "data"))

        def run(out: str, *overrides: str, plugins: object = None) -> Path:
            pretrain(PretrainRequest(str(recipe), d / "data", root / out, list(overrides),
                                     progress=False, plugins=plugins))
            return root / out

        a = run("a", *SHORT)
        b = run("b", *SHORT, "pretrain.lr=2e-3", "model.encoder.layers=2")
        with pytest.raises(TpError, match="loss became nan at step 2"):
            run("failed", "pretrain.steps=4", "pretrain.save_every=10", "pretrain.lr=1e30")
        with pytest.raises(TpError, match="stopped by Ctrl-C"):
            run("ctrlc", "pretrain.steps=8", "pretrain.save_every=4",
                plugins=make_plugins([StopAt(6)]))
        finetune(FinetuneRequest(None, "classification", root / "ft",
                                 TaskData(str(d / "train.tsv"), [str(d / "dev.tsv")]),
                                 init=str(a), progress=False))
    seen, pid = _killed_run(recipe, d / "data", root / "nested" / "killed")
    return Runs(root, a, b, root / "failed", root / "ctrlc", root / "nested" / "killed",
                root / "ft", seen, pid)
