"""ViT-B/16 training step, tp against Hugging Face `ViTForImageClassification`.

One run prints a markdown table: for a supervised ViT-B/16 step (batch 8 of 224x224 images,
1000 classes) in fp32 and in bf16 autocast, the median step time of tp and of HF and the ratio
HF time / tp time (the issue's goal: >= 1.2 in both precisions). With --profile it then prints,
per precision, where one step of each spends its time (torch.profiler, self CPU time grouped by
kind of op, and the top ops of each).

A step = zero_grad + forward (loss) + backward + AdamW step, as in `throughput.py` (whose timing
loop this reuses: tp and HF alternate, warm-up rounds are not timed, the median of the timed
steps is shown with min-max). Both models hold the same weights: HF's random ViT-B/16, converted
by the registered `vit` converter when there is one, else loaded into tp's ViT-B/16 recipe
(`VIT_B16` below) by this file's own key map; the losses of the first step show they agree.
Run::

    python benchmarks/vit_step.py                    # fp32 + bf16, 3 timed steps (~3 min, 2 cores)
    python benchmarks/vit_step.py --quick            # 2 layers, 1 step: a smoke run
    python benchmarks/vit_step.py --profile --precisions bf16
    python benchmarks/vit_step.py --device cuda --steps 20 --batch 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from throughput import (PRECISIONS, Case, fmt_time, machine, make_step,  # noqa: E402
                        measure)

CLASSES = 1000
IMAGE, PATCH = 224, 16
# tp's ViT-B/16: what `transformers.ViTConfig()` is, in the paper's vocabulary
VIT_B16: dict[str, Any] = {
    "hidden_size": 768,
    "dropout": 0.0,
    "norm_eps": 1e-12,
    "embedding_norm": "none",
    "embedding": [{"name": "patch", "image_size": IMAGE, "patch_size": PATCH},
                  {"name": "pos", "max_length": (IMAGE // PATCH) ** 2 + 1}],
    "encoder": {"name": "transformer", "layers": 12, "heads": 12, "ffn_size": 3072,
                "pre_norm": True, "qkv_bias": "all"},
    "target": {"cls": {"labels": CLASSES, "pooling": "first"}},
}


def vit_b16_recipe(layers: int | None = None, image_size: int = IMAGE) -> dict[str, Any]:
    """A whole recipe (model, data, pretrain) around `VIT_B16`; `layers` shrinks the encoder."""
    model = {**VIT_B16, "encoder": {**VIT_B16["encoder"]}}
    if layers is not None:
        model["encoder"]["layers"] = layers
    return {"model": model, "data": {"processor": {"name": "image", "size": image_size}},
            "pretrain": {"batch_size": 8}}


# ----------------------------------------------------------------------------- the models


def hf_key_map(layers: int) -> dict[str, list[str]]:
    """tp key -> the `ViTForImageClassification` keys (transformers 5) concatenated into it
    (HF's separate q, k, v -> tp's fused qkv); only used while no `vit` converter exists."""
    e, s = "stack.embedding.parts.", "stack.encoder."
    out = {f"{e}patch.cls_token": ["vit.embeddings.cls_token"],
           f"{e}pos.embedding.weight": ["vit.embeddings.position_embeddings"],
           "targets.cls.classifier.weight": ["classifier.weight"],
           "targets.cls.classifier.bias": ["classifier.bias"]}
    for p in ("weight", "bias"):
        out[f"{e}patch.projection.{p}"] = [f"vit.embeddings.patch_embeddings.projection.{p}"]
        out[f"{s}final_norm.{p}"] = [f"vit.layernorm.{p}"]
        for i in range(layers):
            hf, tp = f"vit.layers.{i}.", f"{s}layers.{i}."
            out[f"{tp}attn.qkv.{p}"] = [f"{hf}attention.{n}_proj.{p}" for n in "qkv"]
            for tp_name, hf_name in (("attn.out", "attention.o_proj"), ("ffn.fc1", "mlp.fc1"),
                                     ("ffn.fc2", "mlp.fc2"), ("attn_norm", "layernorm_before"),
                                     ("ffn_norm", "layernorm_after")):
                out[f"{tp}{tp_name}.{p}"] = [f"{hf}{hf_name}.{p}"]
    return out


def build_tp(raw: dict[str, Any]) -> torch.nn.Module:
    from tpcli.model import build_model
    from tpcli.plugins import get_plugins
    from tpcli.recipes.config import build_recipe

    registry = get_plugins().registry
    return build_model(build_recipe(raw, registry).model, registry, 0)


def tp_from_hf(hf: Any) -> tuple[torch.nn.Module, str]:
    """tp's model holding `hf`'s weights (strict load), and how it was made, for the notes."""
    from tpcli.plugins import get_plugins

    config = {**hf.config.to_dict(), "architectures": [type(hf).__name__]}
    registry = get_plugins().registry
    converter = registry.get("converter", "vit") if registry.has("converter", "vit") else None
    if converter is not None and converter.hf_architecture == type(hf).__name__:
        data = converter.processor(config) if converter.processor else {"name": "image"}
        tp = build_tp({"model": converter.config_to_recipe(config),
                       "data": {"processor": data}, "pretrain": {}})
        state = converter.hf_to_tp(hf.state_dict(), expected=tp.state_dict().keys(),
                                   hf_config=config)
        how = "tp model and weights from the registered `vit` converter"
    else:
        tp = build_tp(vit_b16_recipe(hf.config.num_hidden_layers))
        hf_sd, shapes = hf.state_dict(), {k: v.shape for k, v in tp.state_dict().items()}
        key_map = hf_key_map(hf.config.num_hidden_layers)
        state = {k: torch.cat([hf_sd[h] for h in hs]).reshape(shapes[k])
                 for k, hs in key_map.items()}
        how = ("no `vit` converter registered: tp model from this file's ViT-B/16 recipe, "
               "HF weights copied by its key map")
    tp.load_state_dict(state, strict=True)
    return tp, how


def vit_case(batch: int, layers: int | None = None) -> Case:
    """ViT-B/16 classification: `batch` random normalised images, random labels."""
    import transformers

    torch.manual_seed(0)
    extra = {} if layers is None else {"num_hidden_layers": layers}
    # ViTConfig() is ViT-B/16 at 224 (google/vit-base-patch16-224's shapes); no dropout
    hf = transformers.ViTForImageClassification(
        transformers.ViTConfig(num_labels=CLASSES, **extra))
    tp, how = tp_from_hf(hf)
    g = torch.Generator().manual_seed(4)
    pixels = torch.randn(batch, 3, IMAGE, IMAGE, generator=g)  # (B, 3, 224, 224)
    labels = torch.randint(0, CLASSES, (batch,), generator=g)  # (B,)
    case = Case(f"ViT-B/16{'' if layers is None else f' ({layers} layers)'}",
                f"{batch}x3x{IMAGE}x{IMAGE}", batch, tp, hf,
                {"pixel_values": pixels, "labels": labels},
                {"pixel_values": pixels, "labels": labels})
    case.notes.append(how)
    case.notes.append(f"HF attention implementation `{hf.config._attn_implementation}`")
    return case


# ----------------------------------------------------------------------------- profile

# op-name fragments -> the kind of work (first match wins; self CPU time is summed per kind)
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention (SDPA kernels)", ("scaled_dot_product", "flash_attention", "efficient_attention")),
    ("patchify conv", ("convolution", "conv2d")),
    ("matmul (Linear fwd/bwd)", ("addmm", "aten::mm", "bmm", "matmul", "linear")),
    ("AdamW", ("adam", "optimizer")),
    ("layer norm", ("layer_norm",)),
    ("gelu", ("gelu",)),
    ("softmax / cross-entropy", ("softmax", "nll_loss", "cross_entropy")),
    ("casts and copies", ("copy_", "_to_copy", "clone", "contiguous", "aten::to", "cat")),
    ("bias-grad sums", ("aten::sum",)),
    ("elementwise", ("add", "mul", "div", "sub", "fill_", "zero_", "sqrt", "tanh")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, parts in KINDS:
        if any(p in low for p in parts):
            return kind
    return "other"


def profile_step(step: Callable[[], float]) -> tuple[float, list[Any]]:
    """Wall time of one profiled step and the profiler's per-op averages (self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        step()
        wall = time.perf_counter() - start
    return wall, list(prof.key_averages())


def profile_tables(case: Case, precision: str, device: torch.device, top: int) -> Iterator[str]:
    """Markdown: self CPU ms per kind of op for tp and HF side by side, then each one's top ops."""
    steps = {"tp": make_step(case.tp, case.tp_batch, False, precision, device, False),
             "HF": make_step(case.hf, case.hf_batch, True, precision, device, False)}
    result = {}
    for name, step in steps.items():
        step()  # warm: kernels chosen, optimizer state allocated
        result[name] = profile_step(step)
    kinds: dict[str, dict[str, float]] = {}
    for name, (_, ops) in result.items():
        for op in ops:
            per = kinds.setdefault(kind_of(op.key), {"tp": 0.0, "HF": 0.0})
            per[name] += op.self_cpu_time_total / 1e3  # ms
    yield f"### Where the time goes, {precision} (one profiled step each, self CPU time)"
    yield ""
    yield "| kind of op | tp ms | HF ms | HF - tp ms |"
    yield "|---|---:|---:|---:|"
    for kind, ms in sorted(kinds.items(), key=lambda kv: -max(kv[1].values())):
        yield f"| {kind} | {ms['tp']:.1f} | {ms['HF']:.1f} | {ms['HF'] - ms['tp']:+.1f} |"
    walls = {n: r[0] * 1e3 for n, r in result.items()}
    yield f"| (profiled step, wall) | {walls['tp']:.1f} | {walls['HF']:.1f} | " \
          f"{walls['HF'] - walls['tp']:+.1f} |"
    for name, (_, ops) in result.items():
        yield ""
        yield f"{name}, {precision}: top {top} ops by self CPU time"
        yield ""
        yield "| op | calls | self ms | % of profiled ops |"
        yield "|---|---:|---:|---:|"
        total = sum(op.self_cpu_time_total for op in ops) or 1.0
        for op in sorted(ops, key=lambda o: -o.self_cpu_time_total)[:top]:
            yield (f"| `{op.key}` | {op.count} | {op.self_cpu_time_total / 1e3:.1f} | "
                   f"{100 * op.self_cpu_time_total / total:.1f}% |")
    yield ""


# ----------------------------------------------------------------------------- report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per implementation (default 3; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds (the first counts FLOPs)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list of fp32, bf16")
    p.add_argument("--batch", type=int, default=8, help="images per step")
    p.add_argument("--layers", type=int, default=None, help="encoder layers (default 12)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 layers, 1 timed step (unless given)")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one step of each (per-op tables)")
    p.add_argument("--top", type=int, default=12, help="ops listed per profile")
    args = p.parse_args(argv)
    if args.quick:
        args.layers = args.layers or 2
    args.steps = args.steps or (1 if args.quick else 3)
    return args


def run(args: argparse.Namespace, device: torch.device) -> Iterator[str]:
    from tpcli.train.perf import measure_peak

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    for p in precisions:
        if p not in PRECISIONS:
            raise SystemExit(f"unknown precision {p!r}; choose among {', '.join(PRECISIONS)}")
    case = vit_case(args.batch, args.layers)
    case.tp.to(device).train()
    case.hf.to(device).train()
    case.tp_batch = {k: v.to(device) for k, v in case.tp_batch.items()}
    case.hf_batch = {k: v.to(device) for k, v in case.hf_batch.items()}
    rows = []
    for precision in precisions:
        res = measure(case, precision, device, args.steps, args.warmup, args.compile)
        flops = min(r.flops for r in res.values())
        peak = max(measure_peak(device, precision, budget_s=3.0).flops,
                   *(flops / r.median for r in res.values()))
        rows.append((precision, res, flops, peak))
        print(f"{precision}: tp {fmt_time(res['tp'].median)}, HF {fmt_time(res['HF'].median)}, "
              f"{res['HF'].median / res['tp'].median:.2f}x", file=sys.stderr, flush=True)
    yield ("| model | batch | precision | tp s/step (median, min-max) | HF s/step (median, "
           "min-max) | HF/tp (goal >= 1.2) | tp images/s | GFLOP/step | tp MFU | HF MFU | "
           "loss tp / HF |")
    yield "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for precision, res, flops, peak in rows:
        tp, hf = res["tp"], res["HF"]
        yield (f"| {case.name} | {case.shape} | {precision} | {tp.median:.3f} ({min(tp.times):.3f}-"
               f"{max(tp.times):.3f}) | {hf.median:.3f} ({min(hf.times):.3f}-"
               f"{max(hf.times):.3f}) | {hf.median / tp.median:.2f}x | "
               f"{case.tokens / tp.median:.1f} | {flops / 1e9:,.0f} | "
               f"{100 * flops / tp.median / peak:.1f}% | {100 * flops / hf.median / peak:.1f}% | "
               f"{tp.loss:.4f} / {hf.loss:.4f} |")
    yield ""
    yield "Notes: " + "; ".join(case.notes) + "; MFU over the best matmul peak measured in the " \
          "run (`tpcli.train.perf.measure_peak`)."
    yield ""
    if args.profile:
        for precision in precisions:
            yield from profile_tables(case, precision, device, args.top)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    start = time.perf_counter()
    print(f"# ViT-B/16 training step: tp vs Hugging Face\n\nMachine: {machine(device)}\n",
          flush=True)
    print(f"Steps: {args.steps} timed per implementation after {args.warmup} warm-up round(s), "
          f"tp and HF alternating; forward + backward + AdamW (fused); bf16 = autocast"
          f"{'; torch.compile' if args.compile else ''}.\n", flush=True)
    for line in run(args, device):
        print(line, flush=True)
    print(f"(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
