"""CLIP ViT-B/16 training step, tp against Hugging Face `CLIPModel`; the contrastive loss's memory.

One run prints two markdown tables.

1. For a CLIP ViT-B/16 step (openai/clip-vit-base-patch16's shapes: a 12-layer 512-wide text
   tower over 77 tokens, a 12-layer 768-wide image tower over 224x224 images in 16x16 patches,
   512-d projections; batch 8 image-text pairs, captions of 12-40 tokens padded to 77 as CLIP's
   processor pads) in fp32 and in bf16 autocast: the median step time of tp and of HF and the
   ratio HF time / tp time (the issue's goal: >= 1.2 in both precisions). A step = zero_grad +
   forward (the symmetric InfoNCE loss) + backward + AdamW step, timed as in `throughput.py`
   (tp and HF alternate, warm-up rounds are not timed). Both models hold the same weights: tp's
   is built and loaded from HF's random CLIP by the registered `clip` converter (tp-multimodal),
   and the first step's losses show that they compute the same thing.
2. The memory of the contrastive loss alone as the global batch N grows (the N x N logits of
   one step over every process's pairs): the peak resident memory the loss's forward and
   backward add in a fresh process (Linux: the peak is reset through /proc/self/clear_refs and
   read from VmHWM), tp's `clr` target against HF's CLIP loss (`image_text_contrastive_loss`) on the same
   normalised embeddings, with the N x N fp32 matrix's size for scale.

Run::

    python benchmarks/clip_step.py                    # fp32 + bf16, 3 timed steps (2 cores)
    python benchmarks/clip_step.py --threads 1 --steps 5
    python benchmarks/clip_step.py --quick            # 2-layer towers, 1 step: a smoke run
    python benchmarks/clip_step.py --device cuda --steps 20 --batch 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from cases import Case, registered_converter  # noqa: E402
from throughput import case_report, start_report, step_options  # noqa: E402
from tpcli.testing.convert import tp_from_hf  # noqa: E402

CONTEXT = 77  # CLIP's text length
IMAGE = 224
VOCAB = 49_408


def hf_clip_config(quick: bool) -> Any:
    """openai/clip-vit-base-patch16's shapes (no dropout: CLIP has none); `quick`: 2 layers."""
    import transformers

    layers = 2 if quick else 12
    text = dict(vocab_size=VOCAB, hidden_size=512, intermediate_size=2048, num_hidden_layers=layers,
                num_attention_heads=8, max_position_embeddings=CONTEXT, hidden_act="quick_gelu",
                eos_token_id=49_407, bos_token_id=49_406, pad_token_id=1)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=layers,
                  num_attention_heads=12, image_size=IMAGE, patch_size=16, hidden_act="quick_gelu")
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)


def clip_case(batch: int, quick: bool) -> Case:
    """`batch` random normalised images and captions of 12-40 tokens (start, words, end of
    text), padded to 77 with the end-of-text id as HF's CLIP tokenizer pads."""
    import transformers

    torch.manual_seed(0)
    config = hf_clip_config(quick)
    hf = transformers.CLIPModel(config)
    tp = tp_from_hf(registered_converter("clip", "tp-multimodal"), hf,
                    {"processor": {"name": "image_text", "layout": "dual", "size": IMAGE}}, VOCAB)
    g = torch.Generator().manual_seed(4)
    pixels = torch.randn(batch, 3, IMAGE, IMAGE, generator=g)  # (B, 3, 224, 224)
    ids = torch.full((batch, CONTEXT), 49_407, dtype=torch.long)
    mask = torch.zeros(batch, CONTEXT, dtype=torch.long)
    for i in range(batch):
        n = 40 - 28 * i // max(batch - 1, 1)
        ids[i, 0] = 49_406
        ids[i, 1:n - 1] = torch.randint(0, 49_405, (n - 2,), generator=g)
        mask[i, :n] = 1
    tp_batch = {"stream_0.input_ids": ids, "stream_0.attention_mask": mask,
                "stream_1.pixel_values": pixels}
    hf_batch = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels,
                "return_loss": True}
    case = Case(f"CLIP ViT-B/16{' (2+2 layers)' if quick else ''}",
                f"{batch} pairs: 3x{IMAGE}x{IMAGE} + {CONTEXT} tokens", batch, tp, hf,
                tp_batch, hf_batch)
    case.notes.append("tp model and weights from HF's by the registered `clip` converter")
    case.notes.append(f"HF attention implementation `{hf.config._attn_implementation}`")
    return case


# ----------------------------------------------------------------------------- loss memory

LOSS_CHILD = r"""
import json, sys, torch
impl, n, dim = sys.argv[1], int(sys.argv[2]), 512
torch.manual_seed(0)
text = torch.randn(n, dim, requires_grad=True)
image = torch.randn(n, dim, requires_grad=True)
if impl == "tp":
    from tpcli.model.module import BuildContext, Features
    from tpcli.plugins import get_plugins
    cls = get_plugins().registry.get("target", "clr")
    ctx = BuildContext(hidden_size=dim, vocab_size=0, stream_sizes={"stream_0": dim,
                                                                   "stream_1": dim})
    clr = cls(cls.Config(projection_dim=dim), ctx)
    feats = Features(None, streams=(Features(None, pooled=text), Features(None, pooled=image)))
    run = lambda: clr(feats, {}).loss
else:
    from transformers.models.clip import modeling_clip as m
    clip_loss = getattr(m, "clip_loss", None) or m.image_text_contrastive_loss  # 4.x / 5
    scale = torch.nn.Parameter(torch.tensor(2.6592))
    proj_t = torch.nn.Linear(dim, dim, bias=False)
    proj_i = torch.nn.Linear(dim, dim, bias=False)
    def run():
        t = proj_t(text)
        i = proj_i(image)
        t = t / t.norm(dim=-1, keepdim=True)
        i = i / i.norm(dim=-1, keepdim=True)
        return clip_loss(scale.exp() * t @ i.t())
def status(key):  # kB, from /proc/self/status
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
run().backward()  # once untimed: lazy initialisation is not the loss's memory
for p in (text, image):
    p.grad = None
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
before = status("VmRSS")
loss = run()
loss.backward()
after = status("VmHWM")
print(json.dumps({"peak_mib": (after - before) / 1024, "loss": float(loss)}))
"""


def loss_memory(n: int, impl: str) -> dict[str, float]:
    """Peak memory a fresh process adds for the loss (forward + backward) of n pairs."""
    out = subprocess.run([sys.executable, "-c", LOSS_CHILD, impl, str(n)], capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"the {impl} loss at N={n} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_table(sizes: list[int]) -> Iterator[str]:
    yield ("| global batch N | N x N fp32 logits | tp `clr` peak (MiB) | HF `clip_loss` peak "
           "(MiB) | tp / HF | loss tp / HF |")
    yield "|---:|---:|---:|---:|---:|---:|"
    for n in sizes:
        tp, hf = loss_memory(n, "tp"), loss_memory(n, "hf")
        yield (f"| {n:,} | {n * n * 4 / 2 ** 20:,.0f} MiB | {tp['peak_mib']:,.0f} | "
               f"{hf['peak_mib']:,.0f} | {tp['peak_mib'] / max(hf['peak_mib'], 1e-9):.2f} | "
               f"{tp['loss']:.4f} / {hf['loss']:.4f} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_options(p, "image-text pairs", "2-layer towers")
    p.add_argument("--memory", default="1024,4096,16384",
                   help="comma list of global batch sizes for the loss-memory table ('' skips)")
    args = p.parse_args(argv)
    args.steps = args.steps or (1 if args.quick else 3)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    device = start_report(args, "CLIP ViT-B/16 training step: tp vs Hugging Face")
    case_report(args, device, clip_case, args.batch, args.quick, rate="pairs/s", digits=1)
    sizes = [int(s) for s in args.memory.split(",") if s.strip()]
    if sizes:
        print("## Memory of the contrastive loss as the global batch grows\n")
        for line in memory_table(sizes):
            print(line, flush=True)
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
