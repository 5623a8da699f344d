"""The declarative key map: both directions, layer placeholders, fused tensors, strictness."""

from __future__ import annotations

import pytest
import torch

from tpcli.convert.keymap import Concat, Drop, Rename, Tied, Transpose, convert
from tpcli.errors import CheckpointError

RULES = [
    Rename("emb.weight", "embedding.word.weight"),
    Rename("layer.{i}.fc.weight", "layers.{i}.ffn.weight"),
    Concat(("layer.{i}.q", "layer.{i}.k", "layer.{i}.v"), "layers.{i}.qkv"),
    Rename("pooler.weight", "pool.weight", optional=True),
    Drop("position_ids"),
    Tied("decoder.weight", "emb.weight"),
]


def hf_state(layers: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {"emb.weight": torch.randn(5, 3, generator=g), "position_ids": torch.arange(4)}
    for i in range(layers):
        sd[f"layer.{i}.fc.weight"] = torch.randn(3, 3, generator=g)
        for n in "qkv":
            sd[f"layer.{i}.{n}"] = torch.randn(3, 3, generator=g)
    sd["decoder.weight"] = sd["emb.weight"]
    return sd


def test_both_directions() -> None:
    hf = hf_state(layers=12)  # two-digit layer numbers too
    tp = convert(hf, RULES, "hf_to_tp")
    assert sorted(tp) == sorted(
        ["embedding.word.weight"]
        + [f"layers.{i}.{p}" for i in range(12) for p in ("ffn.weight", "qkv")]
    )
    assert torch.equal(tp["layers.11.qkv"][3:6], hf["layer.11.k"])  # rows [q; k; v]
    back = convert(tp, RULES, "tp_to_hf")
    assert set(back) == set(hf) - {"position_ids"}  # a dropped buffer is not written back
    for key, value in back.items():
        assert torch.equal(value, hf[key]), key
    assert back["decoder.weight"] is back["emb.weight"]  # tied: one tensor under two names


def test_unconsumed_and_missing_keys_are_named() -> None:
    hf = hf_state()
    with pytest.raises(CheckpointError, match=r"no rule converts: layer\.0\.bias, stray"):
        convert({**hf, "stray": torch.zeros(1), "layer.0.bias": torch.zeros(1)}, RULES, "hf_to_tp")
    with pytest.raises(CheckpointError, match=r"source lacks: layer\.1\.v"):
        convert({k: v for k, v in hf.items() if k != "layer.1.v"}, RULES, "hf_to_tp")
    with pytest.raises(CheckpointError, match=r"source lacks: emb\.weight"):
        convert({k: v for k, v in hf.items() if "emb" not in k and "decoder" not in k},
                RULES, "hf_to_tp")


def test_ignore_and_expected() -> None:
    hf = {**hf_state(), "pooler.weight": torch.ones(2)}
    assert "pool.weight" in convert(hf, RULES, "hf_to_tp")
    out = convert(hf, RULES, "hf_to_tp", ignore=["pooler.*"])
    assert "pool.weight" not in out
    with pytest.raises(CheckpointError, match=r"result lacks: layers\.2\.qkv"):
        convert(hf, RULES, "hf_to_tp", ignore=["pooler.*"],
                expected=[*out, "layers.2.qkv"])


def test_untied_source_is_refused() -> None:
    hf = hf_state()
    hf["decoder.weight"] = hf["emb.weight"] + 1
    with pytest.raises(CheckpointError, match="not tied"):
        convert(hf, RULES, "hf_to_tp")


def test_transpose_both_ways_and_2d_only() -> None:
    """Conv1D (in, out) <-> Linear (out, in): transposed, contiguous, bit-identical round trip."""
    rules = [Transpose("h.{i}.c_fc.weight", "layers.{i}.fc1.weight")]
    w = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))  # (in, out)
    tp = convert({"h.0.c_fc.weight": w}, rules, "hf_to_tp")
    assert tp["layers.0.fc1.weight"].shape == (5, 3) and tp["layers.0.fc1.weight"].is_contiguous()
    assert torch.equal(tp["layers.0.fc1.weight"], w.t())
    back = convert(tp, rules, "tp_to_hf")
    assert torch.equal(back["h.0.c_fc.weight"], w)
    with pytest.raises(CheckpointError, match="keys the source lacks: h.{i}.c_fc.weight"):
        convert({}, rules, "hf_to_tp")
    with pytest.raises(CheckpointError, match="Transpose needs 2-D"):
        convert({"h.0.c_fc.weight": torch.zeros(3)}, rules, "hf_to_tp")
