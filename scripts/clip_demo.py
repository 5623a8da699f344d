"""The multimodal demo's corpora: real images with captions, all installed offline.

    python scripts/clip_demo.py OUT [--train 6000] [--heldout 1000] [--crops 64] [--seed 0]
    python scripts/clip_demo.py --vocab recipes/_tokenizers/clip-tiny-wordpiece.txt

Fashion-MNIST (Debian's `dataset-fashion-mnist`: 28x28 greyscale clothes in 10 classes) and
scikit-image's sample photographs (`skimage.data`: the ones shipped inside the wheel, no
download) become image-caption pairs for a small CLIP (recipes/clip-tiny):

- OUT/train.tsv (`text<TAB>path`): the first `train` images of Fashion-MNIST's training set, each
  captioned from its class name by one of TEMPLATES ("a photo of a sneaker."), plus `crops`
  random square crops (some flipped) of each photograph with its caption ("a photo of a cat."),
  so that the model sees each photograph often enough to learn it. Shuffled.
- OUT/heldout.tsv (`label<TAB>path`): the first `heldout` images of Fashion-MNIST's official
  test set, for zero-shot classification (`tp infer RUN --task zero_shot`).
- OUT/photos.tsv (`text<TAB>path`): each photograph whole, with its caption, for retrieval
  (`tp infer RUN --task retrieval`).
- OUT/templates.txt and OUT/classes.txt: the caption templates and class names, one a line
  (zero_shot's `templates` and `classes` options).

Everything is a function of `seed`. `--vocab FILE` writes the WordPiece vocabulary of every
caption this script can write (recipes/_tokenizers/clip-tiny-wordpiece.txt is its output).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fashion_mnist import SOURCE, read_idx  # noqa: E402

# Fashion-MNIST's classes in label order, as a caption names them
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle boot")
TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a black and white photo of a {}.",
             "a small photo of a {}.", "a {} on a dark background.")
# skimage.data's photographs that ship inside the wheel (no pooch download), with a caption each
PHOTOS = {
    "astronaut": "a photo of an astronaut.",
    "chelsea": "a photo of a cat.",
    "coffee": "a cup of coffee on a saucer.",
    "rocket": "a rocket on the launch pad.",
    "camera": "a man with a camera on a tripod.",
    "horse": "the silhouette of a horse.",
    "coins": "a collection of old coins.",
    "moon": "the surface of the moon.",
    "hubble_deep_field": "galaxies in deep space.",
    "immunohistochemistry": "stained cells under a microscope.",
    "brick": "a wall of bricks.",
    "page": "a page of printed text.",
    "clock": "a clock on the wall.",
    "colorwheel": "a wheel of colors.",
}
PHOTO_SIDE = 64  # stored side of a photograph's crops: the recipe reads 28 pixels
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def photo(name: str) -> Image.Image:
    """A sample photograph of scikit-image as RGB (greyscale and binary ones too)."""
    import skimage.data

    a = np.asarray(getattr(skimage.data, name)())
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(a[..., :3]), mode="RGB")


def crops(image: Image.Image, n: int, rng: np.random.Generator) -> list[Image.Image]:
    """The centre square and n - 1 random squares of 60-100% of the shorter side, each flipped
    with probability 1/2, resized to PHOTO_SIDE."""
    w, h = image.size
    side = min(w, h)
    out = [image.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))]
    for _ in range(n - 1):
        s = int(side * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        c = image.crop((x, y, x + s, y + s))
        out.append(c.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else c)
    return [c.resize((PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.BICUBIC) for c in out]


def fashion(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28) uint8, labels (n,)) of the first n of an official split."""
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(SOURCE / f"{prefix}-images-idx3-ubyte.gz")[:n]
    labels = read_idx(SOURCE / f"{prefix}-labels-idx1-ubyte.gz")[:n]
    return images, labels


def write_png(a: np.ndarray | Image.Image, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    (a if isinstance(a, Image.Image) else Image.fromarray(a, mode="L")).save(path)
    return path.as_posix()


def write(out: Path, train: int, heldout: int, n_crops: int, seed: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    pairs: list[tuple[str, str]] = []
    images, labels = fashion("train", train)
    for i, (a, y) in enumerate(zip(images, labels)):
        name = CLASSES[int(y)]
        path = write_png(a, out / "train" / name.replace(" ", "-") / f"{i:05d}.png")
        pairs.append((TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(name), path))
    whole = []
    for name, caption in PHOTOS.items():
        picture = photo(name)
        for k, c in enumerate(crops(picture, n_crops, rng)):
            pairs.append((caption, write_png(c, out / "train" / "photos" / f"{name}-{k:02d}.png")))
        w, h = picture.size
        scale = 4 * PHOTO_SIDE / min(w, h)  # small, keeping the aspect
        picture = picture.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
        whole.append((caption, write_png(picture, out / "photos" / f"{name}.png")))
    order = rng.permutation(len(pairs))
    rel = out.as_posix() + "/"
    (out / "train.tsv").write_text("text\tpath\n" + "".join(
        f"{pairs[i][0]}\t{pairs[i][1].removeprefix(rel)}\n" for i in order))
    (out / "photos.tsv").write_text("text\tpath\n" + "".join(
        f"{t}\t{p.removeprefix(rel)}\n" for t, p in whole))
    images, labels = fashion("test", heldout)
    lines = []
    for i, (a, y) in enumerate(zip(images, labels)):
        name = CLASSES[int(y)]
        path = write_png(a, out / "heldout" / name.replace(" ", "-") / f"{i:05d}.png")
        lines.append(f"{name}\t{path.removeprefix(rel)}")
    (out / "heldout.tsv").write_text("label\tpath\n" + "\n".join(lines) + "\n")
    (out / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return {"train": len(pairs), "photos": len(whole), "heldout": len(lines)}


def vocabulary() -> list[str]:
    """A WordPiece vocabulary (BERT's layout: specials first) of every word the captions and
    prompts hold, lower-cased and split at punctuation as BERT's pre-tokenizer splits, then the
    single letters and digits and their '##' continuations, so any other word still spells."""
    texts = [t.format(c) for t in TEMPLATES for c in CLASSES] + list(PHOTOS.values())
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    pieces = [*SPECIALS, *words]
    pieces += [c for c in CHARS if c not in pieces] + [f"##{c}" for c in CHARS]
    return pieces


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, nargs="?")
    p.add_argument("--train", type=int, default=6000, help="Fashion-MNIST training images")
    p.add_argument("--heldout", type=int, default=1000, help="Fashion-MNIST test images")
    p.add_argument("--crops", type=int, default=64, help="training crops of each photograph")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=Path, help="write the captions' WordPiece vocabulary here")
    args = p.parse_args(argv)
    if args.vocab:
        pieces = vocabulary()
        args.vocab.write_text("\n".join(pieces) + "\n")
        print(f"wrote {len(pieces)} pieces to {args.vocab}")
    if args.out is None:
        if not args.vocab:
            p.error("give OUT, --vocab FILE or both")
        return
    if not SOURCE.is_dir():
        raise SystemExit(f"{SOURCE} not found: install it with `apt-get install "
                         "dataset-fashion-mnist` (the README's set-up does)")
    n = write(args.out, args.train, args.heldout, args.crops, args.seed)
    print(f"wrote {n['train']} training pairs ({args.train} Fashion-MNIST images, "
          f"{len(PHOTOS)} photographs x {args.crops} crops), {n['heldout']} held-out images and "
          f"{n['photos']} photographs under {args.out}")


if __name__ == "__main__":
    main()
