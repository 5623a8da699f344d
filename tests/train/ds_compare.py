"""DeepSpeed against the single strategy, step by step, in one process (run by test_deepspeed.py).

    python tests/train/ds_compare.py RECIPE DATA [overrides ...]

Both strategies get copies of one model and the same micro-batches, driven the way tp's loop
drives a strategy (accumulate / backward(loss / grad_accum) / step). Dropout is off so that both
compute the same function. Prints one JSON object: per-step losses, learning rates and grad norms
of each, and the largest weight difference at the end (DeepSpeed's weights from full_state_dict).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

from tpcli.api import load_tokenizer
from tpcli.data.loader import make_dataset
from tpcli.model import build_model
from tpcli.plugins import get_plugins
from tpcli.recipes import load_recipe
from tpcli.train.loop import DataPosition, Sampler
from tpcli.train.strategies.deepspeed import DeepSpeedStrategy
from tpcli.train.strategies.single import SingleStrategy
from tpcli.train.strategy import Dist


def main(recipe_dir: str, data: str, *overrides: str) -> None:
    plugins = get_plugins()
    recipe = load_recipe(recipe_dir, ["model.dropout=0.0", "pretrain.strategy=deepspeed",
                                      *overrides], plugins)
    opts = recipe.pretrain
    torch.manual_seed(opts.seed)
    tokenizer = load_tokenizer(recipe, plugins)
    dataset = make_dataset(Path(data), recipe, tokenizer, opts.seed, plugins)
    model = build_model(recipe.model, plugins.registry, tokenizer.vocab_size,
                        tokenizer.special_ids)
    dist = Dist("cpu")
    runs = {"single": SingleStrategy(opts, dist), "deepspeed": DeepSpeedStrategy(opts, dist)}
    modules = {name: s.setup(copy.deepcopy(model)) for name, s in runs.items()}
    sampler = Sampler(dataset, opts.seed, DataPosition())
    micro = opts.batch_size // opts.grad_accum
    report: dict[str, dict[str, list[float]]] = {
        name: {"loss": [], "lr": [], "grad_norm": []} for name in runs}
    for _ in range(opts.steps):
        batches = [sampler.next_batch(micro) for _ in range(opts.grad_accum)]
        for name, strategy in runs.items():
            total = 0.0
            for i, batch in enumerate(batches):
                with strategy.accumulate(i == opts.grad_accum - 1):
                    out = modules[name](batch)
                    strategy.backward(out.loss / opts.grad_accum)
                total += float(out.loss.detach()) / opts.grad_accum
            norm = strategy.step()
            report[name]["loss"].append(total)
            report[name]["grad_norm"].append(float(norm))
            report[name]["lr"].append(strategy.lr())
    ref, got = runs["single"].full_state_dict(), runs["deepspeed"].full_state_dict()
    assert ref is not None and got is not None and set(ref) == set(got)
    diff = max(float((ref[k] - got[k]).abs().max()) for k in ref)
    dtypes = sorted({str(v.dtype) for v in got.values()})
    print(json.dumps({**report, "max_weight_diff": diff, "dtypes": dtypes}))
    dist.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
