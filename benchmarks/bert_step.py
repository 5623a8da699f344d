"""BERT-base pre-training step, tp against Hugging Face (and TencentPretrain's own BERT, given a
checkout): now one case of `benchmarks/throughput.py`, which this runs (BERT only, no
preprocessing section). Run::

    python benchmarks/bert_step.py --steps 3             # = throughput.py --models bert
    python benchmarks/bert_step.py --layers 2 --steps 1  # quick
    python benchmarks/bert_step.py --precisions fp32 --steps 5 \\
        --tencentpretrain ~/TencentPretrain --profile   # + its row; profiler tables

`--tencentpretrain PATH` is a TencentPretrain checkout
(`git clone https://github.com/Tencent/TencentPretrain`); without it that row is skipped and
the output says so. Every option of throughput.py is accepted (e.g. --precisions bf16,
--device cuda).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import main  # noqa: E402

if __name__ == "__main__":
    main(["--models", "bert", "--no-preprocess", *sys.argv[1:]])
