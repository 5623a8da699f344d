"""Parameter counts of TencentPretrain's own models, built by its code, for tp's tests.

    git clone https://github.com/Tencent/TencentPretrain /tmp/TencentPretrain
    python scripts/tencentpretrain_counts.py /tmp/TencentPretrain \
        > tests/recipes/tencentpretrain/parameters.json

For each config under tests/recipes/tencentpretrain/models (copies of the repository's files),
this builds the model TencentPretrain builds (`build_model`, or `run_classifier_siamese`'s
classifier for a dual config, which names no pre-training target) on the meta device, with the
vocabulary size the family's published vocabulary has, and counts its parameters, a tied tensor
once. tests/recipes/test_tencentpretrain.py checks tp builds the same number from each config.

One table is left out: TencentPretrain's current encoder builds a relative-position table
(`encoder.relative_pos_emb`) besides the one its layers share and read
(`encoder.transformer.N.relative_pos_emb`); its conversion scripts and checkpoints name one table
per stack, and so does tp.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent.parent / "tests" / "recipes" / "tencentpretrain"
# the size of each family's published vocabulary (its vocab / spm / bpe file)
VOCAB = {"bert": 30522, "albert": 30000, "gpt2": 50257, "t5": 32128, "t5-v1_1": 32128,
         "bart": 50265, "xlm-roberta": 250002, "llama": 32000, "llama2": 32000, "rnn": 30522,
         "sbert": 21128}
UNREAD = "encoder.relative_pos_emb.relative_attention_bias.weight"


def build(repo: Path, config: Path, vocab: int) -> torch.nn.Module:
    from tencentpretrain.model_builder import build_model
    from tencentpretrain.opts import model_opts, mp_opts, tgt_tokenizer_opts, tokenizer_opts

    parser = argparse.ArgumentParser()
    for opts in (model_opts, tokenizer_opts, tgt_tokenizer_opts, mp_opts):
        opts(parser)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--data_processor", default="bert")
    args = vars(parser.parse_args([]))
    args.update(json.loads(config.read_text()))
    a = argparse.Namespace(**args)
    a.tokenizer = a.tgt_tokenizer = types.SimpleNamespace(vocab=range(vocab))
    with torch.device("meta"):
        if hasattr(a, "stream_0"):
            sys.path.insert(0, str(repo / "finetune"))
            from run_classifier_siamese import SiameseClassifier

            a.labels_num = 2
            return SiameseClassifier(a)
        return build_model(a)


def count(model: torch.nn.Module) -> int:
    seen: dict[int, int] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if key != UNREAD:
            seen.setdefault(id(value), value.numel())
    return sum(seen.values())


def main() -> None:
    repo = Path(sys.argv[1]).resolve()
    os.chdir(repo)  # TencentPretrain reads models/special_tokens_map.json at import
    sys.path.insert(0, str(repo))
    out = {}
    for config in sorted((HERE / "models").glob("*/*.json")):
        family = config.parent.name
        if family not in VOCAB:
            continue
        rel = str(config.relative_to(HERE))
        out[rel] = {"vocab_size": VOCAB[family],
                    "parameters": count(build(repo, config, VOCAB[family]))}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
