"""DeepSpeed ZeRO-2 and ZeRO-3 on CPU (gloo, 2 processes): train, save, resume, export; ZeRO-1 +
offload against the single strategy; the recipe/JSON contradiction; a missing DeepSpeed.

Each distributed test is one `tp pretrain --nproc 2` run of 6 steps (checkpoints at 3 and 6) and
one `--resume` of a copy cut back to step 3. Tolerances: resumed losses within 1e-6 (relative) of
the uninterrupted run's (on one machine they are bitwise equal); the exported model.safetensors
equals DeepSpeed's own consolidation of its ZeRO shards (`zero_to_fp32`) exactly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tpcli.errors import TpError
from tpcli.recipes import load_recipe

from .conftest import losses, run_tp

INSTALL = "DS_BUILD_OPS=0 pip install deepspeed"
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason=f"DeepSpeed is not installed: {INSTALL}")
DS_ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def cut_back(run: Path, copy: Path, step: int) -> None:
    """`copy` = `run` as if it had been killed right after checkpoint `step`."""
    shutil.copytree(run, copy, symlinks=True)
    for ckpt in (copy / "checkpoints").glob("step-*"):
        if int(ckpt.name.removeprefix("step-")) > step:
            shutil.rmtree(ckpt)
    (copy / "last").unlink()
    (copy / "last").symlink_to(Path("checkpoints") / f"step-{step:08d}")
    kept = [line for line in (copy / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["step"] <= step]
    (copy / "metrics.jsonl").write_text("\n".join(kept) + "\n")


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.parametrize("stage,accum,precision", [(2, 1, "fp32"), (3, 2, "bf16")])
def test_zero_trains_saves_resumes_and_exports(tmp_path: Path, tiny_recipe: Path,
                                               tiny_data: Path, stage: int, accum: int,
                                               precision: str) -> None:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from tpcli.api import load_checkpoint

    opts = ["pretrain.strategy=deepspeed", "pretrain.device=cpu", f"pretrain.zero_stage={stage}",
            f"pretrain.grad_accum={accum}", f"pretrain.precision={precision}",
            "pretrain.steps=6", "pretrain.save_every=3", "pretrain.keep_last=2",
            "--nproc", "2", "--no-progress"]
    ref = tmp_path / "ref"
    r = run_tp("pretrain", str(tiny_recipe), "--data", str(tiny_data), "--out", str(ref), *opts,
               env=DS_ENV)
    assert r.returncode == 0, r.stderr
    expected = losses(ref)
    assert sorted(expected) == list(range(1, 7))
    assert all(9.0 < v < 12.0 for v in expected.values()), expected  # ~ln(vocab 30522) = 10.3

    last = (ref / "last").resolve()
    assert last.name == "step-00000006"
    info = json.loads((last / "checkpoint.json").read_text())
    assert (info["strategy"], info["world_size"]) == ("deepspeed", 2)
    shards = sorted(p.name for p in (last / "deepspeed" / "state").glob("*optim_states.pt"))
    assert len(shards) == 2, shards  # one optimizer partition per rank

    # export: model.safetensors is the full fp32 model with tp's keys (bf16 runs: the fp32
    # master weights), loadable without DeepSpeed, and equal to DeepSpeed's own consolidation of
    # the ZeRO shards
    loaded = load_checkpoint(ref)
    assert loaded.step == 6
    ours = loaded.model.state_dict()
    theirs = get_fp32_state_dict_from_zero_checkpoint(str(last / "deepspeed"), tag="state")
    assert set(theirs) <= set(ours)
    for key, value in theirs.items():
        assert ours[key].dtype == torch.float32
        assert value.dtype == torch.float32 and torch.equal(ours[key], value), key
    initial = load_checkpoint(ref / "checkpoints" / "step-00000003").model.state_dict()
    moved = [k for k in theirs if not torch.equal(initial[k], ours[k])]
    assert len(moved) == len(theirs)  # every weight trained between step 3 and step 6

    # resume from step 3 of a copy: the same losses and the same final weights
    run = tmp_path / "resumed"
    cut_back(ref, run, 3)
    r = run_tp("pretrain", "--resume", str(run), "--nproc", "2", "--no-progress", env=DS_ENV)
    assert r.returncode == 0, r.stderr
    assert "resuming at step 3" in r.stderr
    got = losses(run)
    assert sorted(got) == list(range(1, 7))
    for step in range(4, 7):
        assert abs(got[step] - expected[step]) <= 1e-6 * abs(expected[step]), (step, got, expected)
    again = load_checkpoint(run).model.state_dict()
    for key, value in ours.items():
        torch.testing.assert_close(again[key], value, rtol=1e-6, atol=1e-7, msg=key)


@needs_deepspeed
def test_one_process_matches_the_single_strategy(tiny_recipe: Path, tiny_data: Path) -> None:
    """ZeRO-1 with CPU offload, one process, 2 micro-batches per step. Same model, same
    micro-batches (dropout off): DeepSpeed's AdamW steps, schedule, accumulation and clipping
    are the single strategy's. Losses and lrs agree to 1e-6; grad norms
    to 1e-3 (DeepSpeed sums squares in fp64, clip_grad_norm_ in fp32); weights after 4 steps to
    1e-5."""
    script = Path(__file__).with_name("ds_compare.py")
    r = subprocess.run([sys.executable, str(script), str(tiny_recipe), str(tiny_data),
                        "pretrain.grad_accum=2", "pretrain.steps=4", "pretrain.zero_stage=1",
                        "pretrain.offload=true"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", **DS_ENV})
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    single, ds = got["single"], got["deepspeed"]
    assert len(ds["loss"]) == 4
    for key, tol in (("loss", 1e-6), ("lr", 1e-12), ("grad_norm", 1e-3)):
        for a, b in zip(single[key], ds[key]):
            assert abs(a - b) <= tol * max(abs(a), 1e-3), (key, single[key], ds[key])
    assert got["max_weight_diff"] <= 1e-5 and got["dtypes"] == ["torch.float32"], got


def _opts(tmp_path: Path, tiny_recipe: Path, config: dict, *overrides: str):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    recipe = load_recipe(str(tiny_recipe), ["pretrain.strategy=deepspeed",
                                            f"pretrain.deepspeed_config={path}", *overrides])
    return recipe.pretrain, path


@pytest.mark.parametrize("config,theirs,option,ours", [
    ({"train_batch_size": 16}, "train_batch_size=16", "pretrain.batch_size", "8"),
    ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps=4", "pretrain.grad_accum",
     "1"),
    ({"gradient_clipping": 0.5}, "gradient_clipping=0.5", "pretrain.grad_clip", "1.0"),
    ({"bf16": {"enabled": True}}, "bf16.enabled=true", "pretrain.precision", "false"),
    ({"zero_optimization": {"stage": 3}}, "zero_optimization.stage=3", "pretrain.zero_stage",
     "2"),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 3e-4}}}, "optimizer.params.lr=0.0003",
     "pretrain.lr", "0.001"),
])
def test_contradicting_json_names_both_values(tmp_path: Path, tiny_recipe: Path, config: dict,
                                              theirs: str, option: str, ours: str) -> None:
    from tpcli.train.strategies.deepspeed import build_config

    opts, path = _opts(tmp_path, tiny_recipe, config)
    with pytest.raises(TpError) as e:
        build_config(opts, 2)
    msg = str(e.value)
    assert f"{path} sets {theirs}" in msg and f"{option} gives {ours}" in msg, msg
    assert "hint: remove" in msg


def test_agreeing_json_is_merged_and_auto_is_filled(tmp_path: Path, tiny_recipe: Path) -> None:
    from tpcli.train.strategies.deepspeed import build_config

    config = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": 2,
              "gradient_clipping": 1.0, "bf16": {"enabled": "auto"},
              "zero_optimization": {"stage": 3, "overlap_comm": True,
                                    "stage3_max_live_parameters": 1000},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.999]}}}
    opts, _ = _opts(tmp_path, tiny_recipe, config, "pretrain.grad_accum=2",
                    "pretrain.zero_stage=3", "pretrain.offload=true")
    cfg = build_config(opts, 2)
    assert cfg["train_batch_size"] == 8 and cfg["train_micro_batch_size_per_gpu"] == 2
    assert cfg["gradient_accumulation_steps"] == 2 and cfg["gradient_clipping"] == 1.0
    assert cfg["bf16"] == {"enabled": False} and cfg["fp16"] == {"enabled": False}
    assert cfg["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"},
                                        "overlap_comm": True, "stage3_max_live_parameters": 1000}
    assert "optimizer" not in cfg and "scheduler" not in cfg  # tp's AdamW and schedule run


def test_scheduler_block_and_bad_files_are_refused(tmp_path: Path, tiny_recipe: Path) -> None:
    from tpcli.train.strategies.deepspeed import build_config

    opts, _ = _opts(tmp_path, tiny_recipe, {"scheduler": {"type": "WarmupLR"}})
    with pytest.raises(TpError, match="scheduler block.*pretrain.schedule"):
        build_config(opts, 2)
    opts, path = _opts(tmp_path, tiny_recipe, {})
    path.write_text("{not json")
    with pytest.raises(TpError, match="is not valid JSON"):
        build_config(opts, 2)
    path.unlink()
    with pytest.raises(TpError, match="does not exist"):
        build_config(opts, 2)
    opts, _ = _opts(tmp_path, tiny_recipe, {}, "pretrain.batch_size=6", "pretrain.grad_accum=2")
    with pytest.raises(TpError, match=r"batch_size=6 is not divisible.*=2 x 2 processes"):
        build_config(opts, 2)


@needs_deepspeed
def test_contradiction_is_a_one_paragraph_cli_error(tmp_path: Path, tiny_recipe: Path,
                                                    tiny_data: Path) -> None:
    cfg = tmp_path / "ds.json"
    cfg.write_text(json.dumps({"train_batch_size": 32}))
    r = run_tp("pretrain", str(tiny_recipe), "--data", str(tiny_data), "--out",
               str(tmp_path / "run"), "pretrain.strategy=deepspeed",
               f"pretrain.deepspeed_config={cfg}", "--no-progress", env=DS_ENV)
    assert r.returncode == 1, r.stderr
    assert f"{cfg} sets train_batch_size=32" in r.stderr
    assert "pretrain.batch_size gives 8" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_missing_deepspeed_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                               tiny_recipe: Path) -> None:
    from tpcli.train.strategies.deepspeed import import_deepspeed
    from tpcli.train.strategies import make_strategy
    from tpcli.train.strategy import Dist

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` raises ImportError
    with pytest.raises(TpError) as e:
        import_deepspeed()
    assert INSTALL in str(e.value)
    opts = load_recipe(str(tiny_recipe), ["pretrain.strategy=deepspeed"]).pretrain
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(TpError) as e:
        make_strategy(opts, Dist("cpu"))
    assert INSTALL in str(e.value)
