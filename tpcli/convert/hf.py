"""`tp convert`: tp checkpoints to Hugging Face folders and back, and the parity check.

    to_hf(CKPT, OUT)      model.safetensors (tied keys once) + config.json + tokenizer files,
                          loadable by plain `transformers` `from_pretrained(OUT)`  (to_hf.py)
    from_hf(SRC, OUT)     a tp checkpoint folder with the layout training writes (model.safetensors,
                          recipe.yaml, tokenizer/, checkpoint.json): `tpcli.train.checkpoint.load_checkpoint`
                          (from_hf.py)
    --check               both models on one padded batch, max abs difference  (check.py)

Both directions write into a temporary folder beside OUT and rename it into place only when
everything (including `--check`) succeeded, so a failure leaves nothing half-written. Every user
mistake is a TpError; loading is strict (missing, unexpected and mis-shaped keys are named).
"""

from __future__ import annotations

from tpcli.convert.check import check_batch, max_abs_diff
from tpcli.convert.common import ConvertResult, describe_model
from tpcli.convert.from_hf import choose_hf_converter, from_hf, read_hf_config, read_hf_weights
from tpcli.convert.to_hf import choose_converter, to_hf

__all__ = ["ConvertResult", "check_batch", "choose_converter", "choose_hf_converter",
           "describe_model", "from_hf", "max_abs_diff", "read_hf_config", "read_hf_weights",
           "to_hf"]
