"""Image corpora: which files, with which labels.

Four sources, as the image tools people use lay them out:

- a folder with one sub-folder per class (ImageNet's and `imagefolder`'s layout): the class
  names are the sub-folders' names, sorted; files are found recursively by image extension;
- a TSV file of ``label<TAB>path`` lines (TencentPretrain's format; a first line ``label<TAB>path``
  is a header), paths relative to the TSV's folder;
- a CSV or JSONL manifest with a ``path`` (or ``image``) and a ``label`` column;
- a Hugging Face Hub dataset's split, ``hf://datasets/<org>/<name>[@revision]:<split>`` or a
  short name (``cifar10:train``, ``cifar100:test``): parquet files of encoded images, read in
  `tp_vision.hub_images`.

Every problem (an empty class folder, a missing file, a malformed line) is a DataError naming the
folder, file or line and the fix.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tpcli.errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
LAYOUT_HINT = ("give a folder with one sub-folder of images per class, a TSV of `label<TAB>path` "
               "lines, a CSV / JSONL manifest with `path` and `label` columns, or a Hub "
               "dataset split (hf://datasets/uoft-cs/cifar10:train, cifar10:train)")


@dataclass
class ImageList:
    """Image files and their class indexes; `classes[i]` names class i."""

    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    sources: Sequence[str] = field(default_factory=list)  # "file:line" or the path, for errors
    # A Hub dataset (tp_vision.hub_images): the encoded images, streamed from its parquet files
    # (paths stays empty, sources is a lazy sequence of "file:row"); None for files on disk.
    blobs: Iterable[bytes] | None = None


def read_corpus(corpus: str | Path, classes: list[str] | None = None) -> ImageList:
    """The images of `corpus` in one of the three layouts. `classes`: a fixed class list (an
    evaluation set must use the training set's); None: the corpus's own, sorted."""
    from tp_vision.hub_images import is_hub_corpus, read_hub_images

    if is_hub_corpus(corpus):  # hf://datasets/<org>/<name>[@<revision>]:<split>, cifar10:train
        return read_hub_images(str(corpus), classes)
    path = Path(corpus)
    if not path.exists():
        raise DataError(f"image corpus {corpus} does not exist", hint=LAYOUT_HINT)
    if path.is_dir():
        return _folder(path, classes)
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".txt"):
        rows = _tsv_rows(path)
    elif suffix == ".csv":
        rows = _csv_rows(path)
    elif suffix in (".jsonl", ".json"):
        rows = _jsonl_rows(path)
    else:
        raise DataError(f"image corpus {corpus}: cannot tell its layout from the extension "
                        f"{suffix or '(none)'}", hint=LAYOUT_HINT)
    return _labelled(rows, classes, corpus)


def _folder(root: Path, classes: list[str] | None) -> ImageList:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"image folder {root} has no class sub-folders",
                        hint="put each class's images in a sub-folder named after the class "
                        f"({root}/cat/1.jpg, {root}/dog/2.jpg)")
    names = [p.name for p in folders]
    order = _class_order(names, classes, str(root))
    out = ImageList(classes=order)
    for folder in folders:
        files = sorted(p for p in folder.rglob("*")
                       if p.suffix.lower() in EXTENSIONS and p.is_file())
        if not files:
            raise DataError(f"class folder {folder} holds no images ({', '.join(EXTENSIONS[:4])}, "
                            "...)", hint="remove the empty folder or add its images")
        index = order.index(folder.name)
        out.paths += files
        out.labels += [index] * len(files)
        out.sources += [str(f) for f in files]
    return out


def _class_order(found: list[str], classes: list[str] | None, where: str) -> list[str]:
    if classes is None:
        return sorted(set(found))
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{where} has classes the model does not know: {', '.join(unknown[:5])}",
                        hint=f"the model's classes are {', '.join(classes[:10])}"
                        f"{', ...' if len(classes) > 10 else ''}")
    return list(classes)


Row = tuple[str, str, str]  # label, path (as written), source ("file:line")


def _tsv_rows(path: Path) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2 or not all(p.strip() for p in parts):
                raise DataError(f"{path}:{number} is not `label<TAB>path`: {line[:80]!r}",
                                hint="write one image per line: its label, a tab, its path")
            if number == 1 and [p.strip().lower() for p in parts] == ["label", "path"]:
                continue  # a header
            rows.append((parts[0].strip(), parts[1].strip(), f"{path}:{number}"))
    return rows


def _csv_rows(path: Path) -> list[Row]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        column = _path_column(reader.fieldnames or [], path)
        return [(str(r.get("label") or ""), str(r.get(column) or ""), f"{path}:{n}")
                for n, r in enumerate(reader, start=2)]


def _jsonl_rows(path: Path) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number} is not JSON: {e}",
                                hint="write one JSON object per line") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number} is not a JSON object",
                                hint='write {"path": "...", "label": "..."} per line')
            column = _path_column(list(record), path, number)
            rows.append((str(record.get("label", "")), str(record[column]), f"{path}:{number}"))
    return rows


def _path_column(names: list[str], path: Path, line: int | None = None) -> str:
    for column in ("path", "image"):
        if column in names:
            return column
    where = f"{path}:{line}" if line else str(path)
    raise DataError(f"{where} has no `path` (or `image`) column; it has {', '.join(names)}",
                    hint="name the image file's column `path` and its class's `label`")


def _labelled(rows: list[Row], classes: list[str] | None, corpus: str | Path) -> ImageList:
    base = Path(corpus).parent
    for label, file, source in rows:
        if not label:
            raise DataError(f"{source} has no label", hint="give every image its class")
        if not (base / file).is_file():
            raise DataError(f"{source}: image {file} does not exist (looked at {base / file})",
                            hint="paths are relative to the list's folder; fix the path or "
                            "remove the line")
    order = _class_order([r[0] for r in rows], classes, str(corpus))
    index = {c: i for i, c in enumerate(order)}
    return ImageList([base / r[1] for r in rows], [index[r[0]] for r in rows], order,
                     [r[2] for r in rows])
