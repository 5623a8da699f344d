"""Image loading rate of tp against a plain Pillow loop, and the share of a training step that
waits for data.

Real images, written to a temporary folder and made into array datasets by `tp preprocess`:
Fashion-MNIST (28x28 PNGs from scripts/fashion_mnist.py, for recipes/vit-tiny; skipped with a
message without /usr/share/datasets/fashion-mnist) and the sample photos of scikit-image and
scikit-learn, cut into random crops saved as JPEG (~230-1400 px a side), for ViT-B/16 at 224
(`vit_step.vit_b16_recipe`: the `vit` converter's recipe of HF's ViTConfig()). Tables:

1. images/s of tp's loader in one process (`tpcli.train.batches.Sampler.next_batch`: the
   `image` processor's dataset and collate, as the training loop calls them) against a Pillow loop over the same
   files (decode, random resized crop, flip, normalise, stack), plain and with JPEG draft mode;
2. where tp's time per image goes;
3. the loader's time per batch against the step's (tp, fused AdamW), as if each batch were
   loaded in the training process before its step (`data_workers=0`); for vit-tiny the loop
   itself, fed four ways in turns: one pre-loaded batch, tp's batches with 0 and with 1 data
   worker process (`tpcli.train.batches.Batches`, what `tp pretrain` runs), and the Sampler run
   ahead by a thread; with the share of each step spent waiting for its batch.

Medians and bests: on a shared machine the best is the least disturbed; there --threads 1 also
keeps torch's thread pool from stalling on busy cores (it did: 2 threads made a 16-image
torch.stack take 250 ms instead of 1.4). Run::

    python benchmarks/image_loader.py             # 1-5 min on 2 CPU cores
    python benchmarks/image_loader.py --threads 1 # steadier on a machine shared with others
    python benchmarks/image_loader.py --quick     # small corpora, ViT-B/16 with 2 layers
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from throughput import machine  # noqa: E402
from vit_step import vit_b16_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry",
                  "hubble_deep_field", "retina", "moon", "coins", "clock", "brick", "grass",
                  "gravel")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
DEIT_AUG = ["data.processor.randaugment=[2,9]", "data.processor.mixup=0.8",
            "data.processor.cutmix=1.0", "data.processor.smoothing=0.1"]


# ----------------------------------------------------------------------------- corpora


def sample_photos() -> dict[str, np.ndarray]:
    """name -> (H, W) or (H, W, 3) uint8, the photos that ship with scikit-image / -learn."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    photos = {name: getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS}
    photos |= {name.removesuffix(".jpg"): load_sample_image(name) for name in SKLEARN_PHOTOS}
    return photos


def write_photos(out: Path, copies: int, seed: int = 0) -> list[Path]:
    """out/<photo>/<i>.jpg: `copies` random crops (60-100% of the area, aspect 3/4-4/3, flipped
    half the time) of each sample photo; one class per photo."""
    rng = random.Random(seed)
    paths = []
    for name, pixels in sample_photos().items():
        image = Image.fromarray(pixels).convert("RGB")
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in range(copies):
            w, h = image.size
            area, aspect = rng.uniform(0.6, 1.0) * w * h, rng.uniform(0.75, 1.0 / 0.75)
            cw, ch = min(w, round((area * aspect) ** 0.5)), min(h, round((area / aspect) ** 0.5))
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            crop = image.crop((left, top, left + cw, top + ch))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            path = out / name / f"{i:04d}.jpg"
            crop.save(path, quality=90)
            paths.append(path)
    return paths


def write_fashion(out: Path, n: int) -> list[Path]:
    """out/train/<class>/<i>.png through scripts/fashion_mnist.py (the first n training images)."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "fashion_mnist.py"), str(out),
                    "--train", str(n)], check=True, capture_output=True, text=True)
    return sorted((out / "train").glob("*/*.png"))


def preprocess(recipe: str, corpus: Path, out: Path, overrides: list[str]) -> dict[str, Any]:
    """`tp preprocess RECIPE --corpus CORPUS --out OUT --json`, its summary."""
    tp = Path(sys.executable).parent / "tp"
    done = subprocess.run([str(tp), "preprocess", recipe, *overrides, "--corpus", str(corpus),
                           "--out", str(out), "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"tp preprocess failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_recipe(folder: Path, raw: dict[str, Any]) -> Path:
    """A recipe folder holding `raw` as recipe.yaml (JSON is YAML)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(json.dumps(raw, indent=1))
    return folder


# ----------------------------------------------------------------------------- loaders


def open_dataset(recipe_ref: str, data: Path, overrides: list[str]) -> tuple[Any, Any]:
    """(recipe, the processor's training dataset over `data`), as `tp pretrain` opens them."""
    from tpcli.data.loader import make_dataset
    from tpcli.plugins import get_plugins
    from tpcli.recipes import load_recipe

    plugins = get_plugins()
    recipe = load_recipe(recipe_ref, overrides, plugins)
    return recipe, make_dataset(data, recipe, None, recipe.pretrain.seed, plugins)


def tp_batches(dataset: Any, seed: int) -> Callable[[int], dict[str, torch.Tensor]]:
    """`next_batch(size)` of the training loop's Sampler, from the start of epoch 0."""
    from tpcli.train.loop import DataPosition, Sampler

    return Sampler(dataset, seed, DataPosition()).next_batch


def crop_box(w: int, h: int, scale: tuple[float, float], rng: random.Random
             ) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random resized crop (area in `scale`, aspect 3/4-4/3)."""
    area = rng.uniform(*scale) * w * h
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw, ch = min(w, round((area * aspect) ** 0.5)), min(h, round((area / aspect) ** 0.5))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return left, top, left + cw, top + ch


def pillow_image(path: Path, size: int, scale: tuple[float, float], rng: random.Random,
                 draft: bool) -> Image.Image:
    """One file decoded and crop-resized to size x size (bicubic). `draft`: a JPEG is decoded at
    1/2, 1/4 or 1/8 scale in the DCT (Pillow's draft mode) when the crop still has `size` pixels
    a side at that scale, as tuned loaders (e.g. FFCV's, DALI's) do."""
    with Image.open(path) as f:
        w, h = f.size
        box = crop_box(w, h, scale, rng)
        if draft:
            cw, ch = box[2] - box[0], box[3] - box[1]
            f.draft("RGB", (math.ceil(w * size / cw), math.ceil(h * size / ch)))  # PNG: no-op
        image = f.convert("RGB")
    sx, sy = image.size[0] / w, image.size[1] / h  # 1 unless draft mode shrank it
    box_f = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box_f)


def pillow_batch(paths: list[Path], size: int, scale: tuple[float, float], mean: np.ndarray,
                 std: np.ndarray, rng: random.Random, draft: bool = False) -> torch.Tensor:
    """(B, 3, size, size) float32: each file decoded, randomly crop-resized, flipped half the
    time, rescaled and normalised: a plain Pillow loader without a preprocessed store."""
    out = []
    for path in paths:
        image = pillow_image(path, size, scale, rng, draft)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = (np.asarray(image, np.float32) * (1 / 255) - mean) / std  # (size, size, 3)
        out.append(torch.from_numpy(x.transpose(2, 0, 1).copy()))  # (3, size, size)
    return torch.stack(out)


@dataclass
class Times:
    """Seconds of repeated runs: the median, and the min (the least disturbed by other processes
    on a shared machine)."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)


def timed_runs(fn: Callable[[], Any], runs: int, warmup: int = 1) -> Times:
    """Seconds of each of `runs` calls of `fn`, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Times(times)


def breakdown(dataset: Any, n: int, repeats: int = 3) -> dict[str, float]:
    """Microseconds per image of each part of tp's loading over `n` examples (the best of
    `repeats` runs of each part)."""
    from tpcli.data.masking import example_generator

    idx = list(range(min(n, len(dataset))))
    parts: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        best, out = float("inf"), None
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - start)
        parts[name] = best * 1e6 / len(idx)
        return out

    stored = timed("read the stored uint8 example", lambda: [
        np.asarray(dataset.store.example(i)["pixels"]) for i in idx])
    timed("seed a torch.Generator (seed, epoch, index)", lambda: [
        example_generator(dataset.seed, 0, i) for i in idx])
    timed("transform: crop + resize, flip, [RandAugment], float64 rescale, normalise", lambda: [
        dataset.transform(x, example_generator(dataset.seed, 0, i)) for i, x in zip(idx, stored)])
    examples = timed("whole example, `dataset[i]` (with the partner's, when mixing)",
                     lambda: [dataset[i] for i in idx])
    timed("collate (torch.stack)", lambda: dataset.collate(examples))
    return parts


# ----------------------------------------------------------------------------- steps


def trainer(model: torch.nn.Module, precision: str) -> Callable[[dict[str, torch.Tensor]], float]:
    """One training step on a batch: forward, backward, fused AdamW (`throughput.make_step`'s)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    model.train()

    def step(batch: dict[str, torch.Tensor]) -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(batch).loss
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def model_of(recipe: Any) -> torch.nn.Module:
    from tpcli.model import build_model
    from tpcli.plugins import get_plugins

    torch.manual_seed(0)
    return build_model(recipe.model, get_plugins().registry, 0)


def tp_prefetch(dataset: Any, batch: int, seed: int, workers: int
                ) -> Iterator[dict[str, torch.Tensor]]:
    """Batches as `tp pretrain` takes them: `tpcli.train.batches.Batches` over the Sampler, with
    `workers` data worker processes (`pretrain.data_workers`; 0 loads in this process)."""
    from tpcli.train.batches import Batches, DataPosition, Sampler

    batches = Batches(Sampler(dataset, seed, DataPosition()), batch, workers)
    while True:
        yield batches.next()


def thread_prefetch(next_batch: Callable[[], dict[str, torch.Tensor]], depth: int = 4
                    ) -> Iterator[dict[str, torch.Tensor]]:
    """`next_batch()` run ahead by a daemon thread of this process, `depth` batches at most
    (Pillow, numpy's large copies and torch release the GIL)."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    threading.Thread(target=lambda: [ready.put(next_batch()) for _ in iter(int, 1)],
                     daemon=True).start()
    while True:
        yield ready.get()


# ----------------------------------------------------------------------------- report


class Workload:
    """One corpus, preprocessed for one recipe (+ overrides), and its loaders' timings."""

    def __init__(self, label: str, short: str, recipe_ref: str, overrides: list[str],
                 data: Path, files: list[Path], batch: int, summary: dict[str, Any]) -> None:
        self.label, self.short, self.files, self.batch = label, short, files, batch
        self.summary = summary
        self.recipe, self.dataset = open_dataset(recipe_ref, data, overrides)
        c = self.recipe.processor.options
        self.size, self.scale = c.image_size or c.size, tuple(c.scale)
        self.mean, self.std = np.asarray(c.mean, np.float32), np.asarray(c.std, np.float32)
        self.next_batch = tp_batches(self.dataset, self.recipe.pretrain.seed)
        self.tp: Times | None = None  # seconds per batch, filled by `rates`
        self.pillow: dict[bool, Times] = {}  # draft mode -> seconds per batch

    def rates(self, batches: int, pillow: bool = True) -> None:
        self.tp = timed_runs(lambda: self.next_batch(self.batch), batches)
        for draft in (False, True) if pillow else ():
            rng = random.Random(0)
            self.pillow[draft] = timed_runs(lambda: pillow_batch(
                rng.sample(self.files, self.batch), self.size, self.scale, self.mean, self.std,
                rng, draft), batches)


def make_workloads(tmp: Path, args: argparse.Namespace) -> list[Workload]:
    """Fashion-MNIST for vit-tiny (when installed), the photos for ViT-B/16 (plain and DeiT)."""
    out = []
    if FASHION.is_dir():
        files = write_fashion(tmp / "fashion", args.fashion)
        summary = preprocess("vit-tiny", tmp / "fashion" / "train", tmp / "fashion-ds", [])
        out.append(Workload("Fashion-MNIST 28x28 PNG, vit-tiny (crop 0.6-1, flip)",
                            "Fashion-MNIST 28", "vit-tiny", [], tmp / "fashion-ds", files, 64,
                            summary))
    else:
        print(f"(Fashion-MNIST skipped: {FASHION} not found; `apt-get install "
              "dataset-fashion-mnist` provides it)\n", flush=True)
    files = write_photos(tmp / "photos", args.photos)
    recipe = str(write_recipe(tmp / "vit-b16", vit_b16_recipe(args.layers)))
    summary = preprocess(recipe, tmp / "photos", tmp / "photos-ds", [])
    out.append(Workload("photos (JPEG ~230-1400 px) -> 224, ViT-B/16 (crop 0.08-1, flip)",
                        "photos 224", recipe, [], tmp / "photos-ds", files, 8, summary))
    out.append(Workload("same, DeiT aug (RandAugment 2/9, mixup 0.8, CutMix 1.0, smoothing)",
                        "photos 224, DeiT aug", recipe, DEIT_AUG, tmp / "photos-ds", files, 8,
                        summary))
    return out


def rate_table(loads: list[Workload]) -> Iterator[str]:
    yield "| corpus, recipe | files | batch | tp preprocess images/s (once) | tp loader " \
          "images/s (median, best) | Pillow loop images/s (median, best) | Pillow, JPEG " \
          "draft mode | tp / Pillow | tp / Pillow draft |"
    yield "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for w in loads:
        assert w.tp is not None
        cells = [f"{w.batch / t.median:,.0f}, {w.batch / t.min:,.0f}"
                 for t in (w.tp, *w.pillow.values())]
        cells += [f"{t.median / w.tp.median:.2f}x" for t in w.pillow.values()]
        cells += ["-"] * (5 - len(cells))
        yield (f"| {w.label} | {len(w.files)} | {w.batch} | "
               f"{w.summary['examples_per_s']:,.0f} | " + " | ".join(cells) + " |")


def breakdown_table(loads: list[Workload]) -> Iterator[str]:
    parts = {w.short: breakdown(w.dataset, 2 * w.batch) for w in loads}
    yield "| tp loader, us per image (best of 3) | " + " | ".join(parts) + " |"
    yield "|---|" + "---:|" * len(loads)
    for name in next(iter(parts.values())):
        yield f"| {name} | " + " | ".join(f"{p[name]:,.0f}" for p in parts.values()) + " |"


def step_times(w: Workload, precisions: list[str], steps: int) -> dict[str, Times]:
    """A tp training step of `w`'s recipe on one pre-loaded batch, per precision."""
    model, batch = model_of(w.recipe), w.next_batch(w.batch)
    return {p: timed_runs(partial(trainer(model, p), batch), steps) for p in precisions}


def share(load: float, step: float) -> str:
    return f"{100 * load / (load + step):.1f}%"


def wait_table(loads: list[Workload], args: argparse.Namespace) -> Iterator[str]:
    """Loader time per batch against the step's, as the synchronous loop adds them."""
    yield "| model, data | precision | batch | tp loader ms/batch (median, best) | step ms, " \
          "batch pre-loaded (median, best) | waiting = loader / (loader + step) (medians, bests) |"
    yield "|---|---|---:|---:|---:|---:|"
    steps: dict[str, dict[str, Times]] = {}
    for w in loads:
        assert w.tp is not None
        tiny = w.recipe.name == "vit-tiny"
        model = w.recipe.name if tiny else "ViT-B/16" + (
            "" if args.layers is None else f" ({args.layers} layers)")
        if model not in steps:  # the DeiT workload's soft labels do not change the model's cost
            precisions = [w.recipe.pretrain.precision] if tiny else args.precisions.split(",")
            steps[model] = step_times(w, precisions, args.steps if tiny else args.vit_steps)
        for precision, step in steps[model].items():
            yield (f"| {model}, {w.short} | {precision} | {w.batch} | {w.tp.median * 1e3:.1f}, "
                   f"{w.tp.min * 1e3:.1f} | {step.median * 1e3:,.1f}, {step.min * 1e3:,.1f} | "
                   f"{share(w.tp.median, step.median)}, {share(w.tp.min, step.min)} |")


def loop_table(w: Workload, rounds: int, per_round: int = 5) -> Iterator[str]:
    """vit-tiny's loop for real: the step alone, and after tp's batches loaded in the training
    process (`data_workers=0`), by one worker process (the default on two cores), or run ahead
    by a thread. They take turns, `per_round` steps each per round, so that other load on the
    machine hits them alike; the time the loop waits for each batch is measured apart."""
    model = model_of(w.recipe)
    step = trainer(model, w.recipe.pretrain.precision)
    seed = w.recipe.pretrain.seed
    first = w.next_batch(w.batch)
    rows = {"step alone (one pre-loaded batch)": iter(lambda: first, None),
            "tp, `data_workers=0`: each batch loaded before its step":
            tp_prefetch(w.dataset, w.batch, seed, 0),
            "tp, `data_workers=1` (the default): a worker process loads ahead":
            tp_prefetch(w.dataset, w.batch, seed, 1),
            "Sampler run ahead by a thread (queue of 4), then the step":
            thread_prefetch(partial(tp_batches(w.dataset, seed), w.batch))}
    waits: dict[str, list[float]] = {name: [] for name in rows}

    def run(name: str, batches: Iterator[dict[str, torch.Tensor]]) -> None:
        t = time.perf_counter()
        b = next(batches)
        waits[name].append(time.perf_counter() - t)
        step(b)

    runs = {name: partial(run, name, batches) for name, batches in rows.items()}
    times: dict[str, list[float]] = {name: [] for name in rows}
    for name, fn in runs.items():
        timed_runs(fn, 0, warmup=2)  # the worker started, the queues filled
        waits[name].clear()
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name] += timed_runs(fn, per_round, warmup=0).times
    yield f"| {w.recipe.name} loop, batch {w.batch}, {w.recipe.pretrain.precision} | ms/step " \
          "(median, best) | median vs step alone | waiting for data: share of the step time |"
    yield "|---|---:|---:|---:|"
    alone = Times(next(iter(times.values())))
    for name, ts in times.items():
        t = Times(ts)
        waited = 100 * sum(waits[name]) / sum(ts)
        yield (f"| {name} | {t.median * 1e3:.1f}, {t.min * 1e3:.1f} | "
               f"{100 * (t.median / alone.median - 1):+.0f}% | {waited:.1f}% |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: small corpora, few batches, ViT-B/16 with 2 layers")
    p.add_argument("--fashion", type=int, default=None,
                   help="Fashion-MNIST training images (default 2000; 256 with --quick)")
    p.add_argument("--photos", type=int, default=None,
                   help="crops written per sample photo (default 16; 2 with --quick)")
    p.add_argument("--batches", type=int, default=None,
                   help="timed batches per loader (default 20; 3 with --quick)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed vit-tiny steps per variant (default 40; 10 with --quick)")
    p.add_argument("--vit-steps", type=int, default=None,
                   help="timed ViT-B/16 steps per precision (default 2; 1 with --quick)")
    p.add_argument("--layers", type=int, default=None, help="ViT-B/16 layers (default 12)")
    p.add_argument("--precisions", default="fp32,bf16", help="ViT-B/16 step precisions")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--keep", type=Path, default=None,
                   help="write the corpora and datasets here (default: a temporary folder)")
    a = p.parse_args(argv)
    q = a.quick
    a.fashion = a.fashion or (256 if q else 2000)
    a.photos = a.photos or (2 if q else 16)
    a.batches = a.batches or (3 if q else 20)
    a.steps = a.steps or (10 if q else 40)
    a.vit_steps = a.vit_steps or (1 if q else 2)
    a.layers = a.layers or (2 if q else None)
    return a


def report(tmp: Path, args: argparse.Namespace) -> Iterator[str]:
    loads = make_workloads(tmp, args)
    for w in loads:
        w.rates(args.batches, pillow="DeiT" not in w.short)
    yield "## Loading rate (one process, batches as the training loop draws them)"
    yield ""
    yield from rate_table(loads)
    yield ""
    yield "## Where tp's loader spends its time"
    yield ""
    yield from breakdown_table(loads)
    yield ""
    yield "## Waiting for data, if each batch were loaded in the training process before its step"
    yield ""
    yield from wait_table(loads, args)
    tiny = [w for w in loads if w.recipe.name == "vit-tiny"]
    if tiny:
        yield ""
        yield from loop_table(tiny[0], max(1, args.steps // 5))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"# Image loading: tp vs a Pillow loop, and the share of a step spent waiting\n\n"
          f"Machine: {machine(torch.device('cpu'))}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="tp-images-") as tmp:
        folder = args.keep or Path(tmp)
        for line in report(folder, args):
            print(line, flush=True)
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
