"""ViT-B/16 training step, tp against Hugging Face `ViTForImageClassification`.

One run prints a markdown table: for a supervised ViT-B/16 step (batch 8 of 224x224 images,
1000 classes) in fp32 and in bf16 autocast, the median step time of tp and of HF and the ratio
HF time / tp time (the issue's goal: >= 1.2 in both precisions). With --profile it then prints,
per precision, where one step of each spends its time (torch.profiler, self CPU time grouped by
kind of op, and the top ops of each); with --whatif, the pieces of the step that tp could do
another way (attention core, q/k/v projection, patchify), each variant timed alone.

A step = zero_grad + forward (loss) + backward + AdamW step, as in `throughput.py` (whose timing
loop this reuses: tp and HF alternate, warm-up rounds are not timed, the median of the timed
steps is shown with min-max). Both models hold the same weights: tp's model is built and
loaded from HF's random ViT-B/16 by the registered `vit` converter (tp-vision); the losses of
each precision's first step show that they compute the same thing. Run::

    python benchmarks/vit_step.py                    # fp32 + bf16, 3 timed steps (~3 min, 2 cores)
    python benchmarks/vit_step.py --threads 1 --steps 5  # steadier on a machine shared with others
    python benchmarks/vit_step.py --quick            # 2 layers, 1 step: a smoke run
    python benchmarks/vit_step.py --profile --whatif --steps 5   # the report's run
    python benchmarks/vit_step.py --device cuda --steps 20 --batch 64
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from cases import Case, registered_converter  # noqa: E402
from throughput import (PRECISIONS, fmt_time, make_step, step_options,  # noqa: E402
                        measure, paired, prepare, runnable, start_report, start_tp_process, sync)
from tpcli.testing.convert import tp_from_hf  # noqa: E402

CLASSES = 1000
IMAGE = 224
DATA = {"processor": {"name": "image", "size": IMAGE}}  # the recipes' data section


def hf_vit_config(layers: int | None = None) -> Any:
    """`ViTConfig()` is ViT-B/16 at 224 (google/vit-base-patch16-224's shapes, no dropout)."""
    import transformers

    extra = {} if layers is None else {"num_hidden_layers": layers}
    return transformers.ViTConfig(num_labels=CLASSES, **extra)


def hf_beit_config(layers: int | None = None) -> Any:
    """BEiT-B/16 pre-training at 224 (microsoft/beit-base-patch16-224-pt22k's shapes: q and v
    biases, layer scale 0.1, one relative position table shared by all layers, a mask token,
    8,192 visual tokens). Stochastic depth off: tp has none, and the two then compute the same
    thing (the first losses agree)."""
    import transformers

    extra = {} if layers is None else {"num_hidden_layers": layers}
    return transformers.BeitConfig(use_mask_token=True, use_shared_relative_position_bias=True,
                                   use_relative_position_bias=False, use_mean_pooling=False,
                                   layer_scale_init_value=0.1, drop_path_rate=0.0, **extra)


def vit_b16_recipe(layers: int | None = None) -> dict[str, Any]:
    """tp's ViT-B/16 recipe (model section by the `vit` converter from HF's config; `layers`
    shrinks the encoder), images stored and cropped at 224, batch 8."""
    config = {**hf_vit_config(layers).to_dict(), "architectures": ["ViTForImageClassification"]}
    return {"model": registered_converter("vit", "tp-vision").config_to_recipe(config),
            "data": DATA, "pretrain": {"batch_size": 8}}


def vit_case(batch: int, layers: int | None = None) -> Case:
    """ViT-B/16 classification: `batch` random normalised images, random labels."""
    import transformers

    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(hf_vit_config(layers))
    tp = tp_from_hf(registered_converter("vit", "tp-vision"), hf, DATA)
    g = torch.Generator().manual_seed(4)
    pixels = torch.randn(batch, 3, IMAGE, IMAGE, generator=g)  # (B, 3, 224, 224)
    labels = torch.randint(0, CLASSES, (batch,), generator=g)  # (B,)
    case = Case(f"ViT-B/16{'' if layers is None else f' ({layers} layers)'}",
                f"{batch}x3x{IMAGE}x{IMAGE}", batch, tp, hf,
                {"pixel_values": pixels, "labels": labels},
                {"pixel_values": pixels, "labels": labels})
    case.notes.append("tp model and weights from HF's by the registered `vit` converter")
    case.notes.append(f"HF attention implementation `{hf.config._attn_implementation}`")
    return case


def beit_case(batch: int, layers: int | None = None) -> Case:
    """BEiT-B/16 masked image modelling: `batch` random normalised images, 75 of the 196
    patches of each masked in blocks (BEiT's masking, tp's `blockwise_mask`), a random visual
    token for each masked patch. HF's labels are the masked patches' tokens only."""
    import transformers
    from tp_vision.masking import blockwise_mask

    torch.manual_seed(0)
    hf = transformers.BeitForMaskedImageModeling(hf_beit_config(layers))
    tp = tp_from_hf(registered_converter("beit", "tp-vision"), hf, DATA)
    g = torch.Generator().manual_seed(4)
    grid = IMAGE // 16
    pixels = torch.randn(batch, 3, IMAGE, IMAGE, generator=g)  # (B, 3, 224, 224)
    masked = torch.stack([blockwise_mask((grid, grid), 75, g) for _ in range(batch)])  # (B, N)
    tokens = torch.randint(0, hf.config.vocab_size, masked.shape, generator=g)  # (B, N)
    labels = tokens.masked_fill(~masked, -100)  # tp: -100 on the visible patches
    case = Case(f"BEiT-B/16 MIM{'' if layers is None else f' ({layers} layers)'}",
                f"{batch}x3x{IMAGE}x{IMAGE}, {int(masked.sum())} masked", batch, tp, hf,
                {"pixel_values": pixels, "mim_mask": masked, "mim_labels": labels},
                {"pixel_values": pixels, "bool_masked_pos": masked, "labels": tokens[masked]})
    case.notes.append("BEiT: tp model and weights from HF's by the registered `beit` "
                      "converter; stochastic depth off in both (tp has none)")
    case.notes.append(f"BEiT: HF attention implementation `{hf.config._attn_implementation}`")
    return case


CASES = {"vit": vit_case, "beit": beit_case}


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


# ----------------------------------------------------------------------------- what-if

# a forward from leaves to its outputs; the harness runs the backward from dense random gradients
Piece = Callable[[], tuple[torch.Tensor, ...]]


def pieces(batch: int, layers: int, device: torch.device, precision: str
           ) -> list[tuple[str, int, dict[str, Piece]]]:
    """(piece of the step, how often a step runs it, {variant: forward}) at ViT-B/16's shapes;
    the first variant of each is what tp does today. The inputs have the model's dtypes there:
    attention reads the q/k/v projection's output (bf16 under autocast), the rest fp32."""
    import torch.nn.functional as F

    b, t, e, h, d, p = batch, 197, 768, 12, 64, 16
    kw = {"device": device}
    x = torch.randn(b, t, e, requires_grad=True, **kw)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    qkv = torch.randn(b, t, 3, h, d, dtype=dtype, requires_grad=True, **kw)
    pixels = torch.randn(b, 3, IMAGE, IMAGE, **kw)
    conv = torch.nn.Conv2d(3, e, p, p).to(device)
    fused = torch.nn.Linear(e, 3 * e).to(device)
    separate = [torch.nn.Linear(e, e).to(device) for _ in range(3)]

    def heads() -> tuple[torch.Tensor, ...]:
        return tuple(z.transpose(1, 2) for z in qkv.unbind(2))  # 3 x (B, h, T, d), views

    def matmul_attention() -> tuple[torch.Tensor, ...]:
        q, k, v = heads()
        return (((q * d ** -0.5) @ k.transpose(-1, -2)).softmax(-1) @ v,)  # (B, h, T, d)

    def patch_matmul() -> tuple[torch.Tensor, ...]:
        n = IMAGE // p  # (B, 3, n*p, n*p) -> (B, n*n, 3*p*p), conv's (C, ph, pw) order
        cut = pixels.view(b, 3, n, p, n, p).permute(0, 2, 4, 1, 3, 5).reshape(b, n * n, -1)
        return (F.linear(cut, conv.weight.flatten(1), conv.bias),)  # the conv's own weights

    return [
        ("attention core", layers, {
            "SDPA (CPU flash kernel; tp and HF)":
            lambda: (F.scaled_dot_product_attention(*heads()),),
            "softmax(q k^T / sqrt(d)) v, two matmuls": matmul_attention}),
        ("q, k, v projection", layers, {
            "one fused Linear (tp)": lambda: (fused(x),),
            "three Linears (HF)": lambda: tuple(m(x) for m in separate)}),
        ("patchify", 1, {
            "Conv2d, kernel = stride = 16 (tp and HF)": lambda: (conv(pixels),),
            "reshape + Linear on the conv's weight": patch_matmul}),
    ]


def time_piece(fn: Piece, precision: str, device: torch.device, runs: int) -> list[float]:
    """Seconds of forward + backward of `fn` under the step's autocast, `runs` times after 2.
    The output gradients are dense and random, as the layers above would send them."""
    times: list[float] = []
    grads: list[torch.Tensor] = []
    for i in range(runs + 2):
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            outs = fn()
        grads = grads or [torch.randn_like(o) for o in outs]  # made once, in the first run
        torch.autograd.backward(outs, grads)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return times


def whatif_table(batch: int, layers: int, precisions: list[str], device: torch.device,
                 runs: int) -> Iterator[str]:
    yield "### What would change the step: pieces of it alone, forward + backward"
    yield ""
    yield "| piece (runs per step) | precision | variant | ms (median, best) | per step, ms " \
          "(median) | vs first variant, per step |"
    yield "|---|---|---|---:|---:|---:|"
    for precision in precisions:
        for name, count, variants in pieces(batch, layers, device, precision):
            base = None
            for variant, fn in variants.items():
                ts = time_piece(fn, precision, device, runs)
                med = statistics.median(ts)
                base = med if base is None else base
                yield (f"| {name} (x{count}) | {precision} | {variant} | {med * 1e3:.1f}, "
                       f"{min(ts) * 1e3:.1f} | {count * med * 1e3:,.0f} | "
                       f"{count * (med - base) * 1e3:+,.0f} |")
    yield ""


# ----------------------------------------------------------------------------- report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_options(p, "images", "2 layers, 1 timed step (unless given)")
    p.add_argument("--models", default="vit,beit",
                   help="comma list of vit (ViT-B/16 classification), beit (BEiT-B/16 masked "
                        "image modelling)")
    p.add_argument("--layers", type=int, default=None, help="encoder layers (default 12)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one step of each (per-op tables)")
    p.add_argument("--top", type=int, default=12, help="ops listed per profile")
    p.add_argument("--whatif", action="store_true",
                   help="also time alternatives for pieces of the step (attention, qkv, patchify)")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in args.models:
        if m not in CASES:
            raise SystemExit(f"unknown model {m!r}; choose among {', '.join(CASES)}")
    if args.quick:
        args.layers = args.layers or 2
    args.steps = args.steps or (1 if args.quick else 3)
    return args


def step_table(case: Case, rows: list[tuple[str, dict[str, Any], float, float]]
               ) -> Iterator[str]:
    """One row per precision: (precision, {impl: Timing}, model FLOPs per step, peak FLOP/s)."""
    yield ("| model | batch | precision | tp s/step (median, min-max) | HF s/step (median, "
           "min-max) | HF/tp: medians (paired, bests) | tp images/s | GFLOP/step | "
           "tp MFU | HF MFU | loss tp / HF |")
    yield "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for precision, res, flops, peak in rows:
        tp, hf = res["tp"], res["HF"]
        yield (f"| {case.name} | {case.shape} | {precision} | {tp.median:.3f} ({min(tp.times):.3f}-"
               f"{max(tp.times):.3f}) | {hf.median:.3f} ({min(hf.times):.3f}-"
               f"{max(hf.times):.3f}) | {hf.median / tp.median:.2f}x "
               f"({paired(hf, tp):.2f}x, {min(hf.times) / min(tp.times):.2f}x) | "
               f"{case.tokens / tp.median:.1f} | "
               f"{flops / 1e9:,.0f} | {100 * flops / tp.median / peak:.1f}% | "
               f"{100 * flops / hf.median / peak:.1f}% | {tp.loss:.4f} / {hf.loss:.4f} |")


def run(args: argparse.Namespace, device: torch.device) -> Iterator[str]:
    from tpcli.train.perf import measure_peak

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    for p in precisions:
        if p not in PRECISIONS:
            raise SystemExit(f"unknown precision {p!r}; choose among {', '.join(PRECISIONS)}")
    precisions, skipped = runnable(precisions, device)
    for model in args.models:
        case = CASES[model](args.batch, args.layers)
        case.build = functools.partial(CASES[model], args.batch, args.layers)
        case.notes.extend(skipped)
        prepare(case, device)
        own = start_tp_process(case, device, args.tp_in_process, case.notes)
        rows = []
        for precision in precisions:
            res = measure(case, precision, device, args.steps, args.warmup, args.compile,
                          tp_process=own)
            flops = min(r.flops for r in res.values())
            peak = max(measure_peak(device, precision, budget_s=3.0).flops,
                       *(flops / r.median for r in res.values()))
            rows.append((precision, res, flops, peak))
            print(f"{case.name} {precision}: tp {fmt_time(res['tp'].median)}, HF "
                  f"{fmt_time(res['HF'].median)}, {res['HF'].median / res['tp'].median:.2f}x",
                  file=sys.stderr, flush=True)
        if own is not None:
            own.close()
        yield from step_table(case, rows)
        yield ""
        yield "Notes: " + "; ".join(case.notes) + "; GFLOP/step and both MFUs count the " \
              "smaller of the two steps' FLOPs; MFU over the best matmul peak measured in the " \
              "run (`tpcli.train.perf.measure_peak`)."
        yield ""
        if args.profile:
            for precision in precisions:
                yield from profile_tables(case, precision, device, args.top)
    if args.whatif:
        yield from whatif_table(args.batch, args.layers or 12, precisions, device,
                                max(args.steps, 3))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    device = start_report(args, "ViT-B/16 and BEiT-B/16 training steps: tp vs Hugging Face")
    for line in run(args, device):
        print(line, flush=True)
    print(f"(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
