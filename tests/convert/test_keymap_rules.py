"""The key-map rules added for issue 3: Reshape (BART's (1, V) bias) and Concat with unequal
parts (grouped-query attention), both directions, bit-exact."""

from __future__ import annotations

import pytest
import torch

from tpcli.convert.keymap import Concat, Reshape, convert
from tpcli.errors import CheckpointError


def test_reshape_both_ways() -> None:
    rules = [Reshape("final_logits_bias", "targets.lm.bias", hf_shape=(1, -1), tp_shape=(-1,))]
    hf = {"final_logits_bias": torch.randn(1, 7)}
    tp = convert(hf, rules, "hf_to_tp")
    assert tp["targets.lm.bias"].shape == (7,)
    back = convert(tp, rules, "tp_to_hf")
    assert back["final_logits_bias"].shape == (1, 7)
    assert torch.equal(back["final_logits_bias"], hf["final_logits_bias"])
    with pytest.raises(CheckpointError, match=r"targets.lm.bias has shape \(3, 2\)"):
        convert({"targets.lm.bias": torch.zeros(3, 2)},
                [Reshape("b", "targets.lm.bias", hf_shape=(1, 5), tp_shape=(5,))], "tp_to_hf")


def test_concat_with_sizes() -> None:
    """q has 4 rows, k and v 2 each: the split back needs the sizes."""
    rules = [Concat(("q.{i}", "k.{i}", "v.{i}"), "qkv.{i}", sizes=(4, 2, 2))]
    g = torch.Generator().manual_seed(0)
    hf = {f"{n}.{i}": torch.randn(r, 3, generator=g) for i in range(2)
          for n, r in (("q", 4), ("k", 2), ("v", 2))}
    tp = convert(hf, rules, "hf_to_tp")
    assert tp["qkv.1"].shape == (8, 3)
    assert torch.equal(tp["qkv.1"][4:6], hf["k.1"])
    back = convert(tp, rules, "tp_to_hf")
    assert set(back) == set(hf) and all(torch.equal(back[k], v) for k, v in hf.items())
    with pytest.raises(CheckpointError, match=r"splits it into \[4, 2, 2\]"):
        convert({"qkv.0": torch.zeros(9, 3)}, rules, "tp_to_hf")


def test_pad_rows_both_ways() -> None:
    """TencentPretrain's segment table: row 0 for padding before HF's rows A and B."""
    from tpcli.convert.keymap import PadRows

    rules = [PadRows("token_type.weight", "seg.weight", before=1)]
    hf = {"token_type.weight": torch.randn(2, 4)}
    tp = convert(hf, rules, "hf_to_tp")
    assert tp["seg.weight"].shape == (3, 4)
    assert torch.equal(tp["seg.weight"][0], torch.zeros(4))
    assert torch.equal(tp["seg.weight"][1:], hf["token_type.weight"])
    back = convert(tp, rules, "tp_to_hf")
    assert torch.equal(back["token_type.weight"], hf["token_type.weight"])
    # a vocabulary padded to a multiple of 8 behind the real rows
    vocab = [PadRows("wte", "word", after=3)]
    w = torch.randn(5, 2)
    padded = convert({"wte": w}, vocab, "hf_to_tp")["word"]
    assert padded.shape == (8, 2) and torch.equal(padded[:5], w)
    assert torch.equal(convert({"word": padded}, vocab, "tp_to_hf")["wte"], w)
    with pytest.raises(CheckpointError, match="has 3 rows; the key map cuts 0 before and 3 after"):
        convert({"word": torch.zeros(3, 2)}, vocab, "tp_to_hf")
