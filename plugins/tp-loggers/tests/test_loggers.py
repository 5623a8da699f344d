"""TensorBoard and W&B on real runs of a tiny BERT, read back with the tools' own readers; a
missing package, an unknown name and a logger failing mid-run; the rank guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tpcli import hookimpl
from tpcli.errors import TpError
from tpcli.plugins import make_plugins
from tpcli.testing.runs import StopAt, quiet_machine
from tpcli.verbs import PretrainRequest, pretrain

from .conftest import float32, jsonl_metrics, tensorboard_scalars, wandb_run
from tp_loggers.common import tag

# steps 1..6 logged, a checkpoint at 4, stopped like Ctrl-C after step 7: the resume re-logs 5, 6
RUN = ["pretrain.steps=9", "pretrain.save_every=4", "pretrain.log_every=1"]


@pytest.fixture(scope="module")
def stopped_and_resumed(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with both loggers chosen on the command line, stopped after step 7 (checkpoint 4)
    and resumed to step 9 with neither named again (the run folder's recipe keeps them)."""
    run = tmp_path_factory.mktemp("run") / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_CODE": "true",
           "WANDB_CONFIG_DIR": str(run.parent / "wandb-config"),
           "WANDB_CACHE_DIR": str(run.parent / "wandb-cache")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # a module-scoped fixture: monkeypatch is per test
    try:
        with quiet_machine():
            with pytest.raises(TpError, match="stopped by Ctrl-C"):
                pretrain(PretrainRequest(str(tiny["recipe"]), tiny["data"], run, RUN,
                                         progress=False, plugins=make_plugins([StopAt(7)]),
                                         loggers=["tensorboard", "wandb"]))
            pretrain(PretrainRequest(None, None, None, resume=run, progress=False,
                                     plugins=make_plugins()))
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return run


def test_tensorboard_holds_every_logged_scalar_once(stopped_and_resumed: Path) -> None:
    """TensorBoard's EventAccumulator gives, for every key of metrics.jsonl, each step once
    (the stopped segment's steps 5 and 6 purged) with the value of the line that counts."""
    run = stopped_and_resumed
    logged = jsonl_metrics(run / "metrics.jsonl")
    assert sorted(logged["loss"]) == list(range(1, 10))
    first, _ = sorted((run / "tensorboard").glob("events.out.tfevents.*"))  # two segments
    assert _steps(first, "train/loss") == [1, 2, 3, 4, 5, 6]  # 5, 6 are written twice on disk
    scalars = tensorboard_scalars(run / "tensorboard")
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mlm.acc", "sp.acc"} <= set(logged)
    assert set(scalars) == {tag(k) for k in logged}
    for key, by_step in logged.items():
        got = scalars[tag(key)]
        assert [s for s, _ in got] == sorted(by_step), key  # each step once, in order
        assert [v for _, v in got] == [float32(by_step[s]) for s in sorted(by_step)], key


def _steps(events: Path, tag: str) -> list[int]:
    """The steps one event file holds for `tag`, read raw (no purging)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return [e.step for e in EventFileLoader(str(events)).Load()
            if any(v.tag == tag for v in e.summary.value)]


def test_tensorboard_holds_the_recipe(stopped_and_resumed: Path) -> None:
    """The recipe as it runs, as hyperparameters (HPARAMS dashboard) and as text."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(stopped_and_resumed / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    hparams: dict[str, Any] = {}
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        for key, value in data.session_start_info.hparams.items():
            hparams[key] = value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
    assert hparams["pretrain.lr"] == pytest.approx(1e-3)
    assert hparams["pretrain.steps"] == 9
    assert hparams["model.encoder.layers"] == 1
    assert hparams["pretrain.loggers"] == '["tensorboard", "wandb"]'
    assert hparams["pretrain.grad_clip"] == 1.0  # a default the recipe does not write
    text = acc.Tensors("recipe/text_summary")
    assert [e.step for e in text] == [0, 4]  # the run's start and the resume's
    assert b"layers: 1" in text[0].tensor_proto.string_val[0]


def test_wandb_offline_run_holds_config_and_history(stopped_and_resumed: Path) -> None:
    """Two offline segments of one W&B run (the id kept in RUN/wandb-id): the config is the
    recipe as it runs, the history every scalar of metrics.jsonl at its step."""
    run = stopped_and_resumed
    run_id = (run / "wandb-id").read_text().strip()
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert [f.name.rsplit("-", 1)[1] for f in folders] == [run_id, run_id]
    first, second = (wandb_run(f) for f in folders)
    assert first["id"] == second["id"] == run_id
    assert second["config"]["pretrain"]["lr"] == pytest.approx(1e-3)
    assert second["config"]["pretrain"]["loggers"] == ["tensorboard", "wandb"]
    assert second["config"]["model"]["encoder"]["layers"] == 1
    logged = jsonl_metrics(run / "metrics.jsonl")
    for segment, steps in ((first, range(1, 7)), (second, range(5, 10))):
        rows = {row["_step"]: row for row in segment["history"]}
        assert sorted(rows) == list(steps)
        for step in steps:
            for key in ("loss", "lr", "mlm.acc", "tokens_per_s"):
                if segment is second or step < 5:  # the first segment's 5, 6 were redone
                    assert rows[step][tag(key)] == pytest.approx(logged[key][step], rel=1e-12)


def test_finetune_evaluations_reach_tensorboard(tiny: dict[str, Path],
                                                stopped_and_resumed: Path, tmp_path: Path) -> None:
    """tp finetune --logger tensorboard: the evaluations (eval.jsonl) as eval/<set>.<metric>,
    the training scalars as train/<key>, at their steps."""
    from tpcli.downstream.finetune import FinetuneRequest
    from tpcli.downstream.tasks import TaskData
    from tpcli.verbs import finetune

    out = tmp_path / "ft"
    with quiet_machine():
        finetune(FinetuneRequest(None, "classification", out,
                                 TaskData(str(tiny["train"]), [str(tiny["dev"])]),
                                 str(stopped_and_resumed), ["finetune.steps=4",
                                                            "finetune.eval_every=2",
                                                            "finetune.log_every=1"],
                                 progress=False, plugins=make_plugins(), loggers=["tensorboard"]))
    scalars = tensorboard_scalars(out / "tensorboard")
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4]
    for key in ("dev.accuracy", "dev.macro_f1"):
        assert scalars[f"eval/{key}"] == [(e["step"], float32(e[key])) for e in evals]
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert "tensorboard" in (out / "recipe.yaml").read_text()


def test_missing_package_is_a_clean_error_before_the_run_folder(tiny: dict[str, Path],
                                                               tmp_path: Path) -> None:
    """`import tensorboard` failing (a PYTHONPATH shim in a real `tp` process): exit 1, one
    paragraph naming `pip install tensorboard`, no traceback, no run folder."""
    shim = tmp_path / "shim" / "tensorboard"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError(\"No module named 'tensorboard'\")\n")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "tpcli.cli.main", "pretrain", str(tiny["recipe"]), "--data",
         str(tiny["data"]), "--out", str(out), "--logger", "tensorboard", "--no-progress"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(shim.parent), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1, proc.stderr
    assert "logger 'tensorboard' needs the tensorboard package" in proc.stderr
    assert "pip install tensorboard" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_missing_wandb_and_unknown_names(tiny: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """wandb that cannot be imported (None in sys.modules: Python's own way to block an
    import) names `pip install wandb`; an unknown name is the registry's "did you mean" error,
    in the recipe as on the command line; neither writes the run folder."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    out = tmp_path / "run"
    with pytest.raises(TpError, match=r"pip install wandb"):
        pretrain(PretrainRequest(str(tiny["recipe"]), tiny["data"], out, progress=False,
                                 plugins=make_plugins(), loggers=["wandb"]))
    with pytest.raises(TpError, match=r"unknown logger 'tensorbord'; did you mean "
                                      r"'tensorboard'\? \(installed: .*tp modules logger"):
        pretrain(PretrainRequest(str(tiny["recipe"]), tiny["data"], out,
                                 ["pretrain.loggers=[tensorbord]"], progress=False,
                                 plugins=make_plugins()))
    assert not out.exists()


class Flaky:
    """A logger that fails like a full disk at its second log line, and counts its calls."""

    calls: list[str] = []

    def tp_on_log(self, step: int, metrics: dict[str, float]) -> None:
        Flaky.calls.append(f"log {step}")
        if step == 2:
            raise OSError(28, "No space left on device")

    def close(self) -> None:
        Flaky.calls.append("close")


class FlakyPlugin:
    __name__ = "flaky-plugin"

    @hookimpl
    def tp_register_loggers(self, register: Any) -> None:
        register("flaky", Flaky)


def test_a_failing_logger_warns_once_and_training_goes_on(
        tiny: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A logger raising mid-run: one warning line, the logger off (closed, no more calls), the
    other loggers and the run unaffected."""
    out = tmp_path / "run"
    Flaky.calls.clear()
    with quiet_machine():
        summary = pretrain(PretrainRequest(
            str(tiny["recipe"]), tiny["data"], out,
            ["pretrain.steps=5", "pretrain.log_every=1", "pretrain.loggers=[flaky]"],
            progress=False, plugins=make_plugins([FlakyPlugin()]), loggers=["tensorboard"]))
    assert summary["steps"] == 5
    assert Flaky.calls == ["log 1", "log 2", "close"]
    warnings = [line for line in capfd.readouterr().err.splitlines() if "flaky" in line]
    assert warnings == ["tp: warning: logger 'flaky' failed (OSError: [Errno 28] No space left "
                        "on device) and is off for the rest of this run; training goes on"]
    assert [s for s, _ in tensorboard_scalars(out / "tensorboard")["train/loss"]] == [1, 2, 3,
                                                                                       4, 5]


def test_only_rank_0_attaches_loggers(tmp_path: Path) -> None:
    """The rank guard: on a rank other than 0 a chosen logger is not built, so the observer
    hooks (which other ranks do not call either) reach nothing and write nothing."""
    from tpcli.train.loggers import attached_loggers

    plugins = make_plugins()
    run = {"out": str(tmp_path), "start_step": 0, "steps": 1, "recipe": {}, "params": 1}
    for active, written in ((False, False), (True, True)):
        with attached_loggers(["tensorboard"], plugins, active):
            for impl in plugins.pm.hook.tp_on_train_start.get_hookimpls():
                if impl.plugin_name.startswith("tp-logger-"):
                    impl.function(run=run)
        assert (tmp_path / "tensorboard").exists() == written
    assert not any(i.plugin_name.startswith("tp-logger-")
                   for i in plugins.pm.hook.tp_on_log.get_hookimpls())  # detached after
