"""The `kmeans` image tokenizer: each p x p patch becomes the id of its nearest codebook centroid.

BEiT predicts discrete visual tokens of masked patches; its tokens came from DALL-E's dVAE, a
network trained on 250M images that tp cannot retrain on a user's corpus. iGPT showed a simpler
vocabulary works: k-means clusters of (normalised) colours. We cluster whole patches instead of
pixels, so one token per patch lines up with one ViT position, and any corpus can get its own
codebook in minutes:

    python -m tp_vision.kmeans train --images FOLDER_OR_LIST --patch-size 8 --k 512 \\
        --size 32 --out codebook.safetensors [--sample N] [--seed S] [--iterations I]

Pixels are normalised with mean = std = 0.5 (ViT / BEiT's default, values in [-1, 1]) before
clustering, and `encode_images` expects the same normalised `pixel_values` the model sees.
A patch is the vector `tp_vision.masking.patchify` makes: p*p*C values, channels last.

The codebook is one safetensors file (tensor `codebook`, (K, p*p*C) float32): nothing pickled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Iterable

import torch
from pydantic import Field
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tp_vision.masking import patchify
from tpcli.errors import TpError
from tpcli.model.module import ModuleConfig

NAME = "kmeans"
SAVED_FILE = "tp_tokenizer.json"  # the name tp-text's tokenizers use for `from_saved`'s options
CODEBOOK_FILE = "codebook.safetensors"
KEY = "codebook"
MEAN = STD = 0.5  # pixel normalisation of the codebook's space (ViT / BEiT default)
CHUNK = 1 << 24  # distance-matrix entries computed at once (64 MiB of float32)
INIT_PER_CLUSTER = 64  # k-means++ runs on a sample of this many points per centroid
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def how_to_make(path: str | Path, patch_size: int | str = "P") -> str:
    return (f"train one on your images: python -m tp_vision.kmeans train --images FOLDER "
            f"--patch-size {patch_size} --k 512 --out {path}")


class KmeansConfig(ModuleConfig):
    """Options of the `kmeans` image tokenizer."""

    codebook: str = Field(description="the codebook .safetensors file (relative to the recipe "
                                      "folder), written by `python -m tp_vision.kmeans train`")
    patch_size: int = Field(gt=0, description="side of the square patches, in pixels; the "
                                              "codebook must have been trained with it")


class KmeansImageTokenizer:
    """Visual tokens from a k-means codebook: `encode_images` maps (B, C, H, W) normalised
    pixels to (B, N) ids in [0, K), one per patch, row by row."""

    Config = KmeansConfig

    def __init__(self, config: KmeansConfig, base_dir: Path | str = ".") -> None:
        self.config = config
        self.path = Path(base_dir) / config.codebook
        self.codebook = load_codebook(self.path, config.patch_size)  # (K, D)
        self._norms = (self.codebook ** 2).sum(1)  # (K,) ||c||^2, reused by every encode
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._fingerprint: str | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.codebook.shape[0])

    @property
    def special_ids(self) -> dict[str, int]:
        return {}  # every id is a centroid: no padding, mask or class token in this vocabulary

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised pixels -> (B, N) int64 ids, N = (H/p)*(W/p), row-major."""
        x = patchify(pixels.float(), self.patch_size)  # (B, N, D)
        b, n, d = x.shape
        if d != self.codebook.shape[1]:
            raise TpError(f"images with {pixels.shape[1]} channel(s) make patches of {d} values, "
                          f"but the codebook {self.path} holds {self.codebook.shape[1]}-value "
                          "centroids", hint="use a codebook trained on images like these")
        codebook, norms = self._device_copy(x.device)
        return nearest(x.reshape(b * n, d), codebook, norms)[0].reshape(b, n)  # (B, N)

    def _device_copy(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (self.codebook.to(device), self._norms.to(device))
        return self._on_device[device]

    def fingerprint(self) -> str:
        """sha256 of the codebook's shape, values (float32 bytes) and the patch size."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(json.dumps({"tokenizer": NAME, "patch_size": self.patch_size,
                                 "shape": list(self.codebook.shape)}).encode())
            h.update(self.codebook.contiguous().numpy().astype("<f4").tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def describe(self) -> str:
        return f"{NAME} codebook {self.config.codebook}"

    def save(self, directory: str | Path) -> None:
        """Write codebook.safetensors and tp_tokenizer.json (the options) into `directory`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        write_codebook(out / CODEBOOK_FILE, self.codebook, self.patch_size)
        options = {"codebook": CODEBOOK_FILE, "patch_size": self.patch_size}
        info = {"name": NAME, "options": options, "fingerprint": self.fingerprint()}
        (out / SAVED_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_saved(cls, directory: str | Path) -> "KmeansImageTokenizer":
        """Rebuild a tokenizer written by `save`; a codebook changed since is refused."""
        meta = Path(directory) / SAVED_FILE
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            options = info["options"]
        except FileNotFoundError as e:
            raise TpError(f"{directory} holds no saved tokenizer ({SAVED_FILE} is missing)",
                          hint="point at a folder written by the tokenizer's save()") from e
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TpError(f"cannot read saved tokenizer {meta}: {e}") from e
        if info.get("name") != NAME:
            raise TpError(f"{meta} holds tokenizer {info.get('name')!r}, not {NAME!r}")
        tok = cls(KmeansConfig(**options), directory)
        if info.get("fingerprint") not in (None, tok.fingerprint()):
            raise TpError(f"the codebook in {directory} does not match the fingerprint in {meta}",
                          hint="the folder was modified after saving; save the tokenizer again")
        return tok


# ---------------------------------------------------------------------- the codebook file


def load_codebook(path: Path, patch_size: int) -> torch.Tensor:
    """(K, D) float32 centroids from `path`; a missing or malformed file is a TpError."""
    if not path.is_file():
        raise TpError(f"the kmeans codebook {path} does not exist",
                      hint=how_to_make(path, patch_size))
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            codebook = f.get_tensor(KEY) if KEY in f.keys() else None
    except (SafetensorError, OSError, ValueError) as e:
        raise TpError(f"the kmeans codebook {path} is not a readable safetensors file ({e})",
                      hint=how_to_make(path, patch_size)) from e
    if codebook is None or codebook.dim() != 2 or not codebook.is_floating_point() \
            or codebook.shape[0] == 0 or codebook.shape[1] % (patch_size * patch_size):
        shape = None if codebook is None else tuple(codebook.shape)
        raise TpError(f"the kmeans codebook {path} does not hold a float tensor {KEY!r} of shape "
                      f"(K, {patch_size}*{patch_size}*channels) (found {shape})",
                      hint=how_to_make(path, patch_size))
    trained = metadata.get("patch_size")
    if trained is not None and trained != str(patch_size):
        raise TpError(f"the kmeans codebook {path} was trained on {trained}x{trained} patches, "
                      f"not {patch_size}x{patch_size}",
                      hint=f"set the tokenizer's patch_size to {trained}, or {how_to_make(path)}")
    return codebook.float().contiguous()


def write_codebook(path: Path, codebook: torch.Tensor, patch_size: int) -> None:
    """Write `codebook` to `path` atomically: a temporary file in the same folder, renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    metadata = {"format": "tp-kmeans-codebook", "patch_size": str(patch_size),
                "normalize": f"mean={MEAN},std={STD}"}
    try:
        save_file({KEY: codebook.float().contiguous()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------- k-means


def nearest(x: torch.Tensor, codebook: torch.Tensor, norms: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of x (n, D): (its nearest centroid's index (n,), the squared distance (n,)).

    ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2: one matmul per chunk of rows instead of an
    (n, K, D) difference tensor."""
    norms = (codebook ** 2).sum(1) if norms is None else norms  # (K,)
    rows = max(1, CHUNK // codebook.shape[0])
    ids, dists = [], []
    for part in x.split(rows):
        d = torch.addmm(norms[None, :], part, codebook.T, alpha=-2.0)  # (n, K) without ||x||^2
        best, idx = d.min(1)
        ids.append(idx)
        dists.append((best + (part ** 2).sum(1)).clamp_min(0))
    return torch.cat(ids), torch.cat(dists)


def inertia(x: torch.Tensor, codebook: torch.Tensor) -> float:
    """Sum of squared distances of the rows of x to their nearest centroid."""
    return float(nearest(x, codebook)[1].double().sum())


def train_codebook(patches: Iterable[torch.Tensor] | torch.Tensor, k: int, iterations: int,
                   seed: int) -> torch.Tensor:
    """(K, D) centroids of `patches` ((n, D), or an iterable of (n_i, D) chunks): greedy
    k-means++ on a sample, then Lloyd iterations until assignments stop changing. The same
    inputs and seed give the same codebook."""
    x = patches if isinstance(patches, torch.Tensor) else torch.cat(list(patches))
    x = x if x.dtype == torch.float64 else x.float()
    if x.dim() != 2 or x.shape[0] < k or k < 1:
        raise TpError(f"k-means needs at least k={k} patches of equal length; got a tensor of "
                      f"shape {tuple(x.shape)}", hint="use more images, or a smaller --k")
    g = torch.Generator().manual_seed(seed)
    sample = x
    if x.shape[0] > INIT_PER_CLUSTER * k:
        sample = x[torch.randperm(x.shape[0], generator=g)[: INIT_PER_CLUSTER * k]]
    centers = _kmeans_plus_plus(sample, k, g)  # (K, D)
    previous = None
    for _ in range(iterations):
        labels, dists = nearest(x, centers)  # (n,), (n,)
        if previous is not None and torch.equal(labels, previous):
            break  # converged: the centres below would not move
        previous = labels
        centers = _update(x, labels, dists, k)
    return centers


def _kmeans_plus_plus(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (Arthur & Vassilvitskii; sklearn's variant): each new centre is the best
    of 2 + log(k) candidates drawn with probability proportional to D(x)^2."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=g))
    chosen = [first]
    closest = ((x - x[first]) ** 2).sum(1)  # (n,) squared distance to the nearest centre
    for _ in range(1, k):
        weights = closest if closest.sum() > 0 else torch.ones_like(closest)  # all points taken
        cand = torch.multinomial(weights.float(), trials, replacement=True, generator=g)  # (t,)
        c = x[cand]  # (t, D)
        d = ((x ** 2).sum(1)[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None, :]).clamp_min(0)
        d = torch.minimum(d, closest[:, None])  # (n, t): nearest centre if the candidate joined
        best = int(d.sum(0).argmin())
        chosen.append(int(cand[best]))
        closest = d[:, best]
    return x[torch.tensor(chosen)].clone()


def _update(x: torch.Tensor, labels: torch.Tensor, dists: torch.Tensor, k: int) -> torch.Tensor:
    """Lloyd's step: each centre moves to the mean of its points. An empty cluster is re-seeded
    with the point farthest from its centre, so K stays K and the worst-served point gets one."""
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, labels, x)  # (K, D)
    counts = torch.bincount(labels, minlength=k)  # (K,)
    centers = sums / counts.clamp_min(1)[:, None].to(x.dtype)
    empty = (counts == 0).nonzero().squeeze(1)
    if len(empty):
        far = dists.topk(len(empty)).indices  # distinct points, farthest first
        centers[empty] = x[far]
    return centers


# ---------------------------------------------------------------------- training on a corpus


def list_images(source: Path) -> list[Path]:
    """The images of a folder (recursively, sorted) or of a list file (one path per line, or
    `label<TAB>path` lines; relative paths are read from the list's folder)."""
    if source.is_dir():
        found = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif source.is_file():
        lines = source.read_text(encoding="utf-8").splitlines()
        found = [source.parent / line.split("\t")[-1].strip() for line in lines if line.strip()]
    else:
        raise TpError(f"--images {source} is neither a folder nor a list file",
                      hint="give a folder of images or a text file with one image path a line")
    if not found:
        raise TpError(f"no images found in {source}",
                      hint=f"image files end in {', '.join(sorted(IMAGE_SUFFIXES))}")
    return found


def load_pixels(path: Path, size: int) -> torch.Tensor:
    """One image as (3, size, size) pixels normalised to [-1, 1]: read by tp_vision.images
    (RGB, EXIF upright), shorter side resized to `size`, centre cropped, as preprocess does."""
    from tp_vision.images import decode, fit  # Pillow is imported only when a corpus is read

    rgb = torch.from_numpy(fit(decode(path), size))  # (size, size, 3) uint8
    return (rgb.permute(2, 0, 1).float() / 255.0 - MEAN) / STD  # (3, size, size)


def sample_patches(images: list[Path], size: int, patch_size: int, sample: int,
                   g: torch.Generator) -> torch.Tensor:
    """(n, p*p*3) patches: all of them when the corpus has at most `sample`, else `sample`
    drawn uniformly over every patch of every image (only images with a drawn patch are read)."""
    per_image = (size // patch_size) ** 2
    total = len(images) * per_image
    if total <= sample:
        chosen = torch.arange(total)
    elif total <= 50_000_000:
        chosen = torch.randperm(total, generator=g)[:sample].sort().values
    else:  # a permutation of the whole corpus would not fit: draw with replacement instead
        chosen = torch.randint(total, (sample,), generator=g).unique()
    image_ids, patch_ids = chosen // per_image, chosen % per_image  # both sorted by image
    ids, counts = torch.unique_consecutive(image_ids, return_counts=True)
    parts = []
    for image_id, picked in zip(ids.tolist(), patch_ids.split(counts.tolist())):
        patches = patchify(load_pixels(images[image_id], size)[None], patch_size)[0]  # (N, D)
        parts.append(patches[picked])
    return torch.cat(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tp_vision.kmeans",
                                     description="Train a kmeans image tokenizer's codebook.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="cluster the patches of an image corpus")
    train.add_argument("--images", required=True, type=Path,
                       help="a folder of images, or a file listing one image path a line")
    train.add_argument("--patch-size", type=int, required=True, help="patch side in pixels")
    train.add_argument("--k", type=int, default=512, help="number of centroids (visual tokens)")
    train.add_argument("--size", type=int, required=True,
                       help="images are resized (shorter side) and centre-cropped to this")
    train.add_argument("--out", type=Path, required=True, help="the .safetensors to write")
    train.add_argument("--sample", type=int, default=200_000, help="patches to cluster")
    train.add_argument("--iterations", type=int, default=50, help="most Lloyd iterations")
    train.add_argument("--seed", type=int, default=0, help="seed of sampling and init")
    args = parser.parse_args(argv)
    try:
        if args.patch_size <= 0 or args.size % args.patch_size:
            raise TpError(f"--size {args.size} is not a multiple of --patch-size "
                          f"{args.patch_size}", hint="pick a size the patches tile exactly")
        g = torch.Generator().manual_seed(args.seed)
        images = list_images(args.images)
        patches = sample_patches(images, args.size, args.patch_size, args.sample, g)
        codebook = train_codebook(patches, args.k, args.iterations, args.seed)
        write_codebook(args.out, codebook, args.patch_size)
    except TpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    per_patch = inertia(patches, codebook) / len(patches)
    print(f"wrote {args.out}: {args.k} centroids of {codebook.shape[1]} values "
          f"({args.patch_size}x{args.patch_size} RGB patches) from {len(patches):,} patches of "
          f"{len(images):,} images; mean squared distance to the nearest centroid "
          f"{per_patch:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
