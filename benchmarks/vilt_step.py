"""ViLT-B/32 pre-training step (masked language modelling over image + text), tp against
Hugging Face `ViltForMaskedLM`.

One run prints a markdown table: for a ViLT-B/32 MLM step (dandelin/vilt-b32-mlm's shapes: a
12-layer 768-wide pre-norm transformer over 40 text tokens and the 144 patches of a 384x384
image plus its class token; batch 8, 15% of the real text tokens masked) in fp32 and in bf16
autocast, the median step time of tp and of HF and the ratio HF time / tp time (the issue's
goal: >= 1.1 in fp32, >= 1.3 in bf16). A step = zero_grad + forward (the MLM loss) + backward +
AdamW step, timed as in `throughput.py` (tp and HF alternate, warm-up rounds are not timed).
Both models hold the same weights: tp's is built and loaded from HF's random ViLT by the
registered `vilt` converter (tp-multimodal) with the `mlm` target alone (HF's ViltForMaskedLM
has no image-text matching head), and the first step's losses show that they compute the same
thing. Run::

    python benchmarks/vilt_step.py                    # fp32 + bf16, 3 timed steps (2 cores)
    python benchmarks/vilt_step.py --precisions fp32 --steps 6
    python benchmarks/vilt_step.py --quick            # 2 layers, 1 step: a smoke run
    python benchmarks/vilt_step.py --device cuda --steps 20 --batch 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from cases import IGNORE, Case, registered_converter  # noqa: E402
from throughput import case_report, start_report, step_options  # noqa: E402
from tpcli.testing.convert import tp_from_hf  # noqa: E402

TEXT = 40  # ViLT's text length (max_position_embeddings)
IMAGE = 384
VOCAB = 30_522


def hf_vilt_config(quick: bool) -> Any:
    """dandelin/vilt-b32-mlm's shapes (ViltConfig's defaults: no dropout, every patch kept);
    `quick`: 2 layers."""
    import transformers

    return transformers.ViltConfig(num_hidden_layers=2 if quick else 12)


def mlm_alone(section: dict[str, Any]) -> None:
    """The translated model section with its `mlm` target alone: HF's ViltForMaskedLM has no
    image-text matching head (HF's pooler, which the converter gives to `itm`, is left out)."""
    section["target"] = {"mlm": section["target"]["mlm"]}


def vilt_case(batch: int, quick: bool) -> Case:
    """`batch` random normalised 384x384 images (every pixel real) and captions of 12-40
    tokens ([CLS], words, [SEP], padding), 15% of each caption's words masked."""
    import transformers

    torch.manual_seed(0)
    hf = transformers.ViltForMaskedLM(hf_vilt_config(quick))
    tp = tp_from_hf(registered_converter("vilt", "tp-multimodal"), hf,
                    {"processor": {"name": "image_text", "size": IMAGE}}, VOCAB,
                    edit=mlm_alone, drop=("targets.itm.",))
    g = torch.Generator().manual_seed(4)
    pixels = torch.randn(batch, 3, IMAGE, IMAGE, generator=g)  # (B, 3, 384, 384)
    pixel_mask = torch.ones(batch, IMAGE, IMAGE, dtype=torch.long)
    ids = torch.zeros(batch, TEXT, dtype=torch.long)
    mask = torch.zeros(batch, TEXT, dtype=torch.long)
    labels = torch.full((batch, TEXT), IGNORE)
    for i in range(batch):
        n = TEXT - 28 * i // max(batch - 1, 1)
        ids[i, 0], ids[i, n - 1] = 101, 102  # [CLS] ... [SEP]
        ids[i, 1:n - 1] = torch.randint(1000, VOCAB, (n - 2,), generator=g)
        mask[i, :n] = 1
        picked = 1 + torch.randperm(n - 2, generator=g)[:max(1, round(0.15 * (n - 2)))]
        labels[i, picked] = ids[i, picked]
        ids[i, picked] = 103  # [MASK]
    common = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
              "pixel_values": pixels, "pixel_mask": pixel_mask}
    case = Case(f"ViLT-B/32 MLM{' (2 layers)' if quick else ''}",
                f"{batch} pairs: 3x{IMAGE}x{IMAGE} + {TEXT} tokens, "
                f"{int((labels != IGNORE).sum())} masked", batch, tp, hf,
                {**common, "mlm_labels": labels}, {**common, "labels": labels})
    case.notes.append("tp model and weights from HF's by the registered `vilt` converter, "
                      "target `mlm` alone")
    case.notes.append(f"HF attention implementation `{hf.config._attn_implementation}`")
    return case


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_options(p, "image-text pairs", "2 layers")
    args = p.parse_args(argv)
    args.steps = args.steps or (1 if args.quick else 3)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    device = start_report(args, "ViLT-B/32 pre-training step: tp vs Hugging Face")
    case_report(args, device, vilt_case, args.batch, args.quick, rate="pairs/s", digits=1)
    print(f"(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
