"""What tests of image-text data use (tp-multimodal's and a third party's; never imported at
run time): tiny corpora of scikit-image's sample photographs (shipped with it, no download),
shrunk, each with a caption, written as a TSV, a JSONL manifest and img2dataset-style
WebDataset shards of the same pairs."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CAPTIONS = [
    "an astronaut in a white suit smiles in front of the flag",
    "a cup of coffee on a saucer",
    "a tabby cat looks at the camera",
    "a man with a camera on a tripod",
    "rocket",
    "a cup of coffee seen from above on a table with a spoon and a small plate",
]


def photos() -> list[np.ndarray]:
    """Six small RGB photographs (the fourth is greyscale, stored as L), different sizes."""
    import skimage.data as d

    shrink = [(40, 40), (36, 24), (30, 45), (32, 32), (20, 28), (24, 36)]
    raw = [d.astronaut(), d.coffee(), d.chelsea(), d.camera(), d.rocket(), d.coffee()[::-1]]
    return [np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize(s, Image.BILINEAR))
            for a, s in zip(raw, shrink)]


def write_corpus(root: Path) -> dict[str, Path]:
    """The same six pairs as pairs.tsv, pairs.jsonl and shards/0000{0,1}.tar (3 samples each,
    with img2dataset's .json sidecars); images under img/ (JPEG and PNG)."""
    (root / "img").mkdir(parents=True)
    names = []
    for i, a in enumerate(photos()):
        name = f"img/{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(a).save(root / name)
        names.append(name)
    tsv = root / "pairs.tsv"
    tsv.write_text("text\tpath\n" + "".join(f"{c}\t{n}\n" for c, n in zip(CAPTIONS, names)))
    jsonl = root / "pairs.jsonl"
    keys = [("image", "text"), ("image_path", "caption")]  # both accepted spellings
    jsonl.write_text("".join(json.dumps({keys[i % 2][0]: n, keys[i % 2][1]: c, "id": i}) + "\n"
                             for i, (c, n) in enumerate(zip(CAPTIONS, names))))
    (root / "shards").mkdir()
    for s in range(2):
        samples = []
        for i in range(3 * s, 3 * s + 3):
            ext = names[i].rsplit(".", 1)[1]
            key = f"{s:05d}{i:04d}"
            samples += [(f"{key}.{ext}", (root / names[i]).read_bytes()),
                        (f"{key}.txt", CAPTIONS[i].encode()),
                        (f"{key}.json", json.dumps({"key": key, "status": "success"}).encode())]
        write_tar(root / "shards" / f"{s:05d}.tar", samples)
    return {"tsv": tsv, "jsonl": jsonl, "shards": root / "shards"}


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
