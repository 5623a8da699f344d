"""`tpcli.testing.contract_plugin`: a third party's suite, with one line in its conftest, runs
tp's module contract over its own registered modules, and a module that breaks the contract
fails with the reason named. The distribution here is a source tree (not installed): its
plugin module is found through its pyproject.toml's entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

PLUGIN = '''
from tpcli import hookimpl

@hookimpl
def tp_register_modules(register):
    register("embedding", "good_word", "third_mods:GoodWord")
    register("embedding", "nan_word", "third_mods:NanWord")
    register("pooling", "vague", "third_mods:VaguePooling")
'''

MODULES = '''
import torch
from pydantic import Field
from torch import nn

from tpcli.data.batch import BatchKey
from tpcli.model.module import ModuleConfig


class GoodWord(nn.Module):
    """Token ids -> vectors."""

    class Config(ModuleConfig):
        scale: float = Field(1.0, gt=0, description="a factor on the vectors")

    def __init__(self, config, ctx):
        super().__init__()
        self.scale = config.scale
        self.table = nn.Embedding(ctx.vocab_size, ctx.hidden_size)
        self.inputs = (BatchKey("input_ids", "int64", ("T",), pad=0, mask="attention_mask",
                                unit="tokens", low=0, high=ctx.vocab_size),)

    def forward(self, inputs):
        return self.table(inputs["input_ids"]) * self.scale


class NanWord(GoodWord):
    """Vectors that turn NaN."""

    def forward(self, inputs):
        return super().forward(inputs) * float("nan")


class VaguePooling(nn.Module):
    """An option nobody explained."""

    class Config(ModuleConfig):
        power: float = 1.0

    def __init__(self, config, ctx):
        super().__init__()
        self.proj = nn.Linear(ctx.hidden_size, ctx.hidden_size)

    def forward(self, hidden, mask=None):
        return self.proj(hidden.mean(1))
'''


def test_a_third_partys_modules_run_the_contract(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent('''
        [project]
        name = "tp-third"
        version = "0.1"
        [project.entry-points.tp]
        third = "third_plugin"
        '''))
    (tmp_path / "third_plugin.py").write_text(PLUGIN)
    (tmp_path / "third_mods.py").write_text(MODULES)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "conftest.py").write_text(
        "from tpcli.testing.contract_plugin import pytest_collect_file  # noqa: F401\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), "tests"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 1, out  # some failed
    for check in ("forward_backward", "declares_inputs", "state_dict_round_trip", "config"):
        assert f"PASSED tests/conftest.py::contract[{check}-embedding-good_word]" in out, out
    assert "FAILED tests/conftest.py::contract[forward_backward-embedding-nan_word]" in out
    assert "embedding NanWord fails the contract (forward_backward)" in out
    assert "FAILED tests/conftest.py::contract[config-pooling-vague]" in out
    assert "option 'power' has no description" in out
    assert "PASSED tests/conftest.py::contract[forward_backward-pooling-vague]" in out
    failed = sorted(line.split("::")[1].split(" ")[0] for line in out.splitlines()
                    if line.startswith("FAILED "))
    # NaN outputs fail the bit-exact state-dict comparison too; nothing of tp's own is checked
    assert failed == ["contract[config-pooling-vague]",
                      "contract[forward_backward-embedding-nan_word]",
                      "contract[state_dict_round_trip-embedding-nan_word]"], out
