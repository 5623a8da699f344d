"""Write Fashion-MNIST (Debian's `dataset-fashion-mnist`) as class-per-folder PNG trees.

    python scripts/fashion_mnist.py OUT [--train N] [--dev N] [--heldout N]

OUT/<split>/<class>/<i>.png for the splits train (the first N of the official training set),
dev and heldout (the first and the next images of the official test set): the class-folder
layout `tp preprocess` and `tp finetune` read, plus OUT/<split>.tsv (`label<TAB>path`) for
`tp infer`. The official splits are already shuffled and balanced.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle-boot")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (big-endian header: magic, then one uint32 per dimension) as uint8."""
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_split(out: Path, images: np.ndarray, labels: np.ndarray, first: int, n: int
                ) -> list[str]:
    lines = []
    for i in range(first, min(first + n, len(images))):
        name = CLASSES[int(labels[i])]
        path = out / name / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], mode="L").save(path)
        lines.append(f"{name}\t{path.relative_to(out.parent)}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=10_000)
    ap.add_argument("--dev", type=int, default=2_000)
    ap.add_argument("--heldout", type=int, default=1_000)
    args = ap.parse_args()
    if not SOURCE.is_dir():
        raise SystemExit(f"{SOURCE} not found: install it with `apt-get install "
                         "dataset-fashion-mnist` (the README's set-up does)")
    splits = (("train", "train", 0, args.train), ("dev", "t10k", 0, args.dev),
              ("heldout", "t10k", args.dev, args.heldout))
    for split, prefix, first, n in splits:
        images = read_idx(SOURCE / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(SOURCE / f"{prefix}-labels-idx1-ubyte.gz")
        lines = write_split(args.out / split, images, labels, first, n)
        (args.out / f"{split}.tsv").write_text("label\tpath\n" + "\n".join(lines) + "\n")
    print(f"wrote {args.train} train, {args.dev} dev and {args.heldout} held-out images under "
          f"{args.out}")


if __name__ == "__main__":
    main()
