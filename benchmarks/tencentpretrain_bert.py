"""TencentPretrain's own BERT-base training step, the third implementation of
`benchmarks/throughput.py`'s BERT case (`--tencentpretrain PATH`, a checkout: its code is run
from there, not copied). `case` is a `cases.Case`: tp's model, spec and batch, HF's model.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

TPRE = "TencentPretrain"
TPRE_GET = "git clone https://github.com/Tencent/TencentPretrain"


@contextlib.contextmanager
def _in_checkout(path: Path) -> Iterator[None]:
    """Inside a TencentPretrain checkout: its package importable, and the working directory its
    constants module reads `models/special_tokens_map.json` from (at import)."""
    here = os.getcwd()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(here)


def _tpre_args(path: Path, layers: int | None, vocab: int) -> argparse.Namespace:
    """The options TencentPretrain's pretrain.py would hold for
    `--config_path models/bert/base_config.json` (its defaults: AdamW at lr 2e-5 without bias
    correction, linear schedule with 10% warm-up over 100,000 steps), the learning rate set to
    the benchmark's 1e-5, and a vocabulary of `vocab` words."""
    import json
    import types

    from tencentpretrain.opts import (model_opts, mp_opts, optimization_opts,  # type: ignore
                                      tgt_tokenizer_opts, tokenizer_opts)

    p = argparse.ArgumentParser()
    for opts in (model_opts, tokenizer_opts, tgt_tokenizer_opts, mp_opts, optimization_opts):
        opts(p)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--data_processor", default="bert")
    p.add_argument("--labels_num", type=int, default=None)
    a = vars(p.parse_args([]))
    a.update(json.loads((path / "models" / "bert" / "base_config.json").read_text()))
    if layers is not None:
        a["layers_num"] = layers
    a.update(total_steps=100000, learning_rate=1e-5, use_lora=False, deepspeed=False,
             vocab_size=vocab)
    ns = argparse.Namespace(**a)
    ns.tokenizer = types.SimpleNamespace(vocab=list(range(vocab)))
    ns.tgt_tokenizer = ns.tokenizer
    return ns


def tencentpretrain_checkout(path: Path) -> Path:
    """`path` resolved, or exit saying it is not a TencentPretrain checkout and how to get one."""
    path = path.expanduser().resolve()
    if not (path / "tencentpretrain" / "model_builder.py").is_file():
        raise SystemExit(f"--tencentpretrain {path}: not a TencentPretrain checkout (no "
                         f"tencentpretrain/model_builder.py); get one with `{TPRE_GET}`")
    return path


def tencentpretrain_bert(case: Any, path: Path, layers: int | None) -> None:
    """TencentPretrain's own BERT (its `build_model` on models/bert/base_config.json) with the
    case's weights (tp's state dict through `tp convert --to tencentpretrain`'s key map), added
    to `case.others`. Its step is its trainer's: `model(src, tgt, seg)` -> the mlm and sp loss
    infos, their sum, the `.item()`s its BertTrainer logs, backward, its own AdamW (Python, one
    parameter at a time) + linear schedule step (`init_optimizer`), `model.zero_grad()`; fp32
    only (its pretrain.py's half precision is apex fp16, not autocast bf16)."""
    from tpcli.convert.keymap import convert as apply_rules
    from tpcli.convert.tencentpretrain import key_rules

    path = tencentpretrain_checkout(path)
    vocab = int(case.hf.config.vocab_size)
    with _in_checkout(path):
        from tencentpretrain.model_builder import build_model  # type: ignore
        from tencentpretrain.trainer import init_optimizer  # type: ignore

        args = _tpre_args(path, layers, vocab)
        torch.manual_seed(0)
        model = build_model(args)
    state = apply_rules(case.tp.state_dict(), key_rules(case.spec), "tp_to_hf")
    model.load_state_dict(state, strict=True)
    b = case.tp_batch
    labels = b["mlm_labels"]
    # its batch: mlm targets are the word at a masked position, 0 elsewhere; segments are
    # 1 (A), 2 (B), 0 (padding), and padding is where seg is 0
    tpre_batch = {"src": b["input_ids"], "tgt_mlm": labels.masked_fill(labels < 0, 0),
                  "tgt_sp": b["sp_labels"], "seg": (b["segment_ids"] + 1) * b["attention_mask"]}

    def make(precision: str, device: torch.device) -> Callable[[], float] | None:
        if precision != "fp32":
            return None
        model.to(device).train()
        batch = {k: v.to(device) for k, v in tpre_batch.items()}
        optimizer, scheduler, _ = init_optimizer(args, model)

        def step() -> float:
            info = model(batch["src"], {"mlm": batch["tgt_mlm"], "sp": batch["tgt_sp"]},
                         batch["seg"])
            loss_mlm, correct_mlm, denominator = info["mlm"]
            loss_sp, correct_sp = info["sp"]
            loss = loss_mlm + loss_sp
            # what BertTrainer.forward_propagation logs each step
            for t in (loss, loss_mlm, loss_sp, correct_mlm, correct_sp, denominator):
                t.item()
            loss.backward()
            optimizer.step()
            scheduler.step()
            model.zero_grad()
            return float(loss.detach())

        return step

    case.others[TPRE] = make
    case.notes.append(f"{TPRE} ({path}): fp32 only (its pretrain.py's half precision is apex "
                      "fp16, not autocast); its own BertTrainer step, AdamW and LayerNorm (which "
                      "divides by the unbiased std + 1e-6: without dropout its loss is tp's "
                      "within ~1e-4, and within 1e-6 with torch's LayerNorm in its place; with "
                      "dropout each implementation draws its own masks)")
