"""Image classification datasets on the Hugging Face Hub (CIFAR-10, CIFAR-100, ...) as corpora.

A Hub corpus names a dataset repository, optionally a revision, and a split (a git ref cannot
hold `:`, so the last `:` starts the split); `tp preprocess RECIPE --corpus cifar10:train` and
`tp finetune --task image_classification --train cifar10:train --dev cifar10:test` take it:

    hf://datasets/uoft-cs/cifar10:train               the `main` branch
    hf://datasets/uoft-cs/cifar10@<commit sha>:test   pinned: the same bytes forever
    cifar10:train, cifar100@<sha>:test                short names (ALIASES)
    cifar100:train?label=coarse_label                 options: label=, image=, config=

The Hub's parquet files come through `huggingface_hub` into its cache (`HF_HUB_CACHE`;
`cache_dir` overrides) as `tp_text.glue_data` gets GLUE: a pinned commit is then read without a
request, `main` costs one revision lookup, and with `HF_HUB_OFFLINE=1` only what an earlier run
cached can be read. A split's files are those the dataset card's `configs` name, else the Hub's
naming (`<config>/<split>-*.parquet`; `<config>/<split>/*.parquet` on refs/convert/parquet).
Class names: the parquet's `huggingface` metadata (ClassLabel), else the card's `dataset_info`,
else the label values.

Memory: only the labels are read up front. The images (`datasets`' Image feature, a struct of
`bytes` and `path`) stream from disk a record batch at a time (`HubBlobs`) and row names are made
on demand (`RowSources`): preprocessing ImageNet holds one batch of JPEGs, not 140 GB of them.
Fine-tuning (`hub_examples`) holds the encoded bytes, as the task holds every decoded image.
"""

from __future__ import annotations

import bisect
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from tp_vision.corpus import ImageList, _class_order
from tpcli.errors import DataError, TpError

ALIASES = {"cifar10": "uoft-cs/cifar10", "cifar100": "uoft-cs/cifar100"}
IMAGE_COLUMNS = ("img", "image")  # datasets' Image feature, by the names CIFAR / ImageNet use
LABEL_COLUMNS = ("label", "fine_label", "labels")  # CIFAR-100: fine by default, coarse by ?label=
OPTIONS = ("config", "label", "image")
BATCH_ROWS = 64  # images per streamed record batch: 7 MB of ImageNet JPEGs; as fast as 256
SPELLING = ("hf://datasets/<org>/<name>[@<revision>]:<split>[?label=<column>&config=<name>], "
            "e.g. hf://datasets/uoft-cs/cifar10:train, or a short name: "
            + ", ".join(f"{a}:train" for a in ALIASES))
_ALIAS = re.compile(rf"({'|'.join(map(re.escape, ALIASES))})([@:?].*)?")


@dataclass(frozen=True)
class HubSource:
    """A parsed Hub corpus: repository, revision, split, and the options."""

    repo: str
    revision: str
    split: str
    config: str | None = None
    label: str | None = None
    image: str | None = None

    @property
    def url(self) -> str:
        return f"hf://datasets/{self.repo}@{self.revision}:{self.split}"


def is_hub_corpus(corpus: str | Path) -> bool:
    """`hf://...` or a short name (`cifar10:train`), unless a local file is called that."""
    if not isinstance(corpus, str) or Path(corpus).exists():
        return False
    return corpus.startswith("hf://") or _ALIAS.fullmatch(corpus) is not None


def parse_source(corpus: str) -> HubSource:
    """The repository, revision, split and options a Hub corpus names (see the module doc)."""
    alias = _ALIAS.fullmatch(corpus)
    text = f"hf://datasets/{ALIASES[alias[1]]}{alias[2] or ''}" if alias else corpus
    if not text.startswith("hf://"):
        raise TpError(f"{corpus!r} is not a Hub corpus", hint=f"write {SPELLING}")
    rest, _, query = text[len("hf://"):].removeprefix("datasets/").partition("?")
    where, colon, split = rest.rpartition(":")
    repo, _, revision = (where if colon else rest).partition("@")
    repo = repo.strip("/")
    if repo.count("/") != 1 or not colon or not split.strip():
        missing = "no split" if repo.count("/") == 1 else "not <org>/<name>"
        raise TpError(f"Hub corpus {corpus!r}: {missing}", hint=f"write {SPELLING}")
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TpError(f"Hub corpus {corpus!r}: unknown option {unknown[0]!r}",
                      hint=f"the options are {', '.join(OPTIONS)} (?label=coarse_label)")
    return HubSource(repo, revision or "main", split.strip(), options.get("config"),
                     options.get("label"), options.get("image"))


# -- fetching ---------------------------------------------------------------------------------
def snapshot(src: HubSource, patterns: list[str], cache_dir: str | Path | None,
             revision: str | None = None) -> Path:
    """The cached snapshot folder (snapshots/<commit>) holding the files of `src` (at
    `revision`, default its own) matching `patterns`, downloaded when missing; a DataError
    saying why when they cannot be had."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        return Path(snapshot_download(src.repo, repo_type="dataset", allow_patterns=patterns,
                                      revision=revision or src.revision, cache_dir=cache_dir))
    except (HfHubHTTPError, LocalEntryNotFoundError) as e:
        if constants.HF_HUB_OFFLINE:
            raise DataError(f"{src.url}: {', '.join(patterns)} is not in the Hugging Face "
                            "cache, and HF_HUB_OFFLINE is set",
                            hint="run once online (HF_HUB_OFFLINE=0) to cache this split, or "
                            "point HF_HUB_CACHE at a cache that holds it.") from None
        why = str(e).strip().split("\n")[0]  # the Hub's own words, for anything else
        if isinstance(e, RevisionNotFoundError):
            why = f"no revision {src.revision!r}"
        elif isinstance(e, RepositoryNotFoundError):  # gated and private repos too
            why = f"no dataset {src.repo} (or it is private or gated: `hf auth login`)"
        raise DataError(f"cannot get {', '.join(patterns)} from {src.url}: {why}",
                        hint="check the network (or HF_ENDPOINT), the repository name and the "
                        "revision; offline, only what an earlier run cached can be read.") from None


def read_card(folder: Path) -> dict[str, Any]:
    """The YAML header of the dataset card (README.md), {} when there is none."""
    import yaml

    path = folder / "README.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    try:
        card = yaml.safe_load(text[3:].split("\n---", 1)[0]) if text.startswith("---") else {}
    except yaml.YAMLError:
        card = {}  # a card the Hub cannot parse either: the file names decide
    return card if isinstance(card, dict) else {}


def choose_config(card: dict[str, Any], src: HubSource) -> dict[str, Any] | None:
    """The card's config entry to read: ?config=, else the default one, else the only one."""
    configs = [c for c in card.get("configs") or [] if isinstance(c, dict)]
    if not configs:
        return None
    names = [str(c.get("config_name", "default")) for c in configs]
    if src.config is not None:
        chosen = [c for c, n in zip(configs, names) if n == src.config]
    else:
        chosen = [c for c in configs if c.get("default")] or (configs if len(configs) == 1
                                                               else [])
    if not chosen:
        why = f"no config {src.config!r}" if src.config else "several configs, none the default"
        raise DataError(f"{src.url}: {why}", hint=f"its configs are {', '.join(names)}; name "
                        f"one: {src.url}?config={names[0]}")
    return chosen[0]


def split_patterns(config: dict[str, Any], src: HubSource) -> list[str]:
    """The file patterns of `src.split` in a card's config (`data_files`)."""
    files = config.get("data_files")
    if isinstance(files, str) or (isinstance(files, list) and all(isinstance(f, str)
                                                                  for f in files)):
        files = [{"split": "train", "path": files}]  # plain paths are the train split
    elif isinstance(files, dict):  # {split: paths}
        files = [{"split": k, "path": v} for k, v in files.items()]
    splits = {str(f.get("split")): f.get("path") for f in files or [] if isinstance(f, dict)}
    if src.split not in splits:
        name = config.get("config_name", "default")
        raise DataError(f"{src.url}: no split {src.split!r} (config {name})",
                        hint=f"its splits are {', '.join(splits) or '(none)'}; write e.g. "
                        f"{src.url.rsplit(':', 1)[0]}:{next(iter(splits), 'train')}")
    paths = splits[src.split]
    return [paths] if isinstance(paths, str) else [str(p) for p in paths]


def split_files(src: HubSource, cache_dir: str | Path | None
                ) -> tuple[Path, list[Path], dict[str, Any]]:
    """(snapshot folder, the split's parquet files in order, the card's dataset_info)."""
    folder = snapshot(src, ["README.md"], cache_dir)
    commit = folder.name  # resolved once: the data files come from this very commit
    card = read_card(folder)
    config = choose_config(card, src)
    # no card: the Hub's naming, data/train-00000-of-00001.parquet (push_to_hub) and
    # plain_text/train/0000.parquet (refs/convert/parquet)
    patterns = split_patterns(config, src) if config else [
        f"{src.split}-*.parquet", f"*/{src.split}-*.parquet", f"*/{src.split}/*.parquet"]
    folder = snapshot(src, patterns, cache_dir, revision=commit)
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()
                    and p.suffix == ".parquet"})
    if config is None and src.config is not None:
        files = [p for p in files if p.relative_to(folder).parts[0] == src.config]
    groups = sorted({p.relative_to(folder).parts[0] for p in files if p.parent != folder})
    if config is None and len(groups) > 1:
        raise DataError(f"{src.url}: split {src.split!r} is in several configs "
                        f"({', '.join(groups)})", hint=f"name one: {src.url}?config={groups[0]}")
    if not files:
        raise DataError(f"{src.url}: no parquet files for split {src.split!r} (looked for "
                        f"{', '.join(patterns)})", hint="check the split's name (train, test, "
                        "validation), the repository and the revision")
    infos = card.get("dataset_info") or [{}]
    infos = [infos] if isinstance(infos, dict) else infos
    name = (config or {}).get("config_name")
    return folder, files, next((i for i in infos if i.get("config_name") == name), infos[0])


# -- reading ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """One parquet file of a split: where it is, its name in messages, its rows."""

    path: Path
    where: str  # hf://datasets/<repo>@<commit[:12]>/<file in the repo>
    rows: int


class RowSources(Sequence[str]):
    """`<file>:<row>` (1-based, as `file:line` elsewhere in tp) of each image, made when asked:
    ImageNet's 1.28M names as a list would take ~180 MB."""

    def __init__(self, parts: list[Part]) -> None:
        self.parts, self.starts = parts, [0, *itertools.accumulate(p.rows for p in parts)]

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> str:  # type: ignore[override]  # no slices
        i = index + len(self) if index < 0 else index
        if not 0 <= i < len(self):
            raise IndexError(index)
        k = bisect.bisect_right(self.starts, i) - 1
        return f"{self.parts[k].where}:{i - self.starts[k] + 1}"


class HubBlobs:
    """The encoded images of a split in order, streamed a record batch (BATCH_ROWS rows) at a
    time from the parquet files: iterating holds one batch, never the split (measured on 330 MB
    of 110 KB images: peak RSS ~200 MB, imports included, after one pass and after four; the table
    read whole, 1.4 GB)."""

    def __init__(self, parts: list[Part], column: str) -> None:
        self.parts, self.column = parts, column

    def __len__(self) -> int:
        return sum(p.rows for p in self.parts)

    def __iter__(self) -> Iterator[bytes]:
        import pyarrow.parquet as pq

        for part in self.parts:
            # pre_buffer=False: the default pre-buffers the whole file (28 MB held for a
            # 25.6 MB file, measured); without it, one row group (3.2 MB however large the file)
            with pq.ParquetFile(part.path, pre_buffer=False) as f:
                row = 0
                for batch in f.iter_batches(batch_size=BATCH_ROWS, columns=[self.column]):
                    yield from _blobs(batch.column(0), part, row)
                    row += batch.num_rows


def _blobs(array: Any, part: Part, first: int) -> Iterator[bytes]:
    """The bytes of an Image column's batch (a struct of bytes and path, or plain binary)."""
    import pyarrow as pa

    data = array.field("bytes") if pa.types.is_struct(array.type) else array
    for i, blob in enumerate(data.to_pylist()):
        if blob is None:
            raise DataError(f"{part.where}:{first + i + 1}: the image has no bytes (stored by "
                            "path only)", hint="read a revision whose parquet files embed the "
                            "images (the Hub's parquet files do), or use a local image folder")
        yield blob


def _columns(schema: Any, features: dict[str, Any], src: HubSource) -> tuple[str, str]:
    """(image column, label column): ?image= / ?label=, else the Image / ClassLabel features,
    else the usual names (img, image; label, fine_label, labels)."""
    import pyarrow as pa

    def typed(kind: str) -> list[str]:
        return [n for n, f in features.items() if isinstance(f, dict) and f.get("_type") == kind]

    names = schema.names
    image = src.image or next((n for n in [*typed("Image"), *IMAGE_COLUMNS] if n in names), None)
    label = src.label or next((n for n in [*LABEL_COLUMNS, *typed("ClassLabel")] if n in names),
                              None)
    for what, column, usual in (("image", image, IMAGE_COLUMNS), ("label", label, LABEL_COLUMNS)):
        if column is None or column not in names:
            raise DataError(f"{src.url}: no {what} column {column or ' or '.join(usual)!r} "
                            f"(columns: {', '.join(names)})", hint=f"name it: ?{what}=<column>")
    t = schema.field(image).type
    if not (pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0)):
        raise DataError(f"{src.url}: column {image!r} holds {t}, not encoded images",
                        hint="name the image column with ?image=<column> (a struct of bytes "
                        "and path, as `datasets` writes its Image feature, or binary)")
    return image, label


def _features(schema: Any) -> dict[str, Any]:
    """The `datasets` features stored in a parquet's schema metadata ({} when absent)."""
    try:
        features = json.loads((schema.metadata or {})[b"huggingface"])["info"]["features"]
    except (ValueError, KeyError, TypeError):
        return {}
    return features if isinstance(features, dict) else {}


def class_names(features: dict[str, Any], info: dict[str, Any], column: str) -> list[str] | None:
    """ClassLabel names of `column`: from the parquet's metadata, else the card's dataset_info
    (`names: {'0': airplane, ...}`), else None."""
    feature = features.get(column)
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and feature.get("names"):
        return [str(n) for n in feature["names"]]
    for entry in info.get("features") or []:
        if not isinstance(entry, dict) or entry.get("name") != column:
            continue
        dtype = entry.get("dtype") if isinstance(entry.get("dtype"), dict) else {}
        names = (entry.get("class_label") or dtype.get("class_label") or {}).get("names")
        if isinstance(names, dict):  # {'0': airplane, ...}, as the Hub writes cards
            names = [names[k] for k in sorted(names, key=int)]
        return [str(n) for n in names] if isinstance(names, list) else None
    return None


def read_hub_images(corpus: str, classes: list[str] | None = None, *, labelled: bool = True,
                    cache_dir: str | Path | None = None) -> ImageList:
    """The images of a Hub corpus (see the module doc): an ImageList whose `blobs` stream the
    encoded images, its classes in the ClassLabel's order (or `classes`, a fixed list, as
    `read_corpus` takes). A row without a label (-1 or null, as in ImageNet's test split) is an
    error unless `labelled` is False, which gives it label -1."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TpError("reading images from the Hugging Face Hub needs pyarrow",
                      hint="pip install pyarrow, or give a local image folder") from None
    src = parse_source(corpus)
    folder, files, info = split_files(src, cache_dir)
    schema = pq.read_schema(files[0])
    features = _features(schema)
    image, label = _columns(schema, features, src)
    parts: list[Part] = []
    values: list[Any] = []
    for path in files:
        name = path.relative_to(folder).as_posix()
        where = f"hf://datasets/{src.repo}@{folder.name[:12]}/{name}"
        if not {image, label} <= set(names := pq.read_schema(path).names):
            raise DataError(f"{where}: no column {image!r} or {label!r} (columns: "
                            f"{', '.join(names)})", hint="the split's files disagree; check the "
                            "revision")
        column = pq.read_table(path, columns=[label]).column(0)  # the labels only: no images
        parts.append(Part(path, where, len(column)))
        values += column.to_pylist()
    names, labels = _indexes(values, class_names(features, info, label), RowSources(parts),
                             labelled)
    if classes is not None:  # an evaluation set in the training set's class order
        order = _class_order(sorted({names[y] for y in labels if y >= 0}), classes, src.url)
        remap = [order.index(n) if n in order else -1 for n in names]
        names, labels = order, [remap[y] if y >= 0 else -1 for y in labels]
    return ImageList([], labels, names, RowSources(parts),  # type: ignore[arg-type]
                     blobs=HubBlobs(parts, image))


def _indexes(values: list[Any], names: list[str] | None, sources: RowSources, labelled: bool
             ) -> tuple[list[str], list[int]]:
    """(class names, each row's class index) from a label column: ClassLabel ints (named by
    `names`, or "0", "1", ... without them) or strings (sorted, as class folders are)."""
    known = [v for v in values if v is not None and v != -1]
    strings = bool(known) and all(isinstance(v, str) for v in known)
    names = names or (sorted(set(known)) if strings
                      else [str(i) for i in range(int(max(known, default=-1)) + 1)])
    index = {n: i for i, n in enumerate(names)}
    labels = []
    for row, v in enumerate(values):
        if v is None or v == -1:
            if labelled:
                raise DataError(f"{sources[row]}: the image has no label ({v})",
                                hint="this split is unlabelled (a test split); fine-tune and "
                                "evaluate on a labelled one, e.g. train or validation")
            labels.append(-1)
            continue
        y = index.get(v, -1) if strings else int(v)
        if not 0 <= y < len(names):
            raise DataError(f"{sources[row]}: label {v!r} is not one of the {len(names)} "
                            "classes", hint="the label column disagrees with its ClassLabel "
                            "names; check the revision, or name another column with ?label=")
        labels.append(y)
    return names, labels


def hub_examples(corpus: str, labelled: bool, cache_dir: str | Path | None = None) -> list[Any]:
    """The images of a Hub corpus as the image_classification task's Examples: `fields` hold
    the encoded image (`image`, bytes) and its row's name (`path`, what predictions show)."""
    from tpcli.downstream.tasks import Example

    images = read_hub_images(corpus, labelled=labelled, cache_dir=cache_dir)
    rows = zip(images.blobs or (), images.labels, images.sources)
    return [Example(str(i), {"path": where, "image": blob},
                    images.classes[y] if y >= 0 else None, where)
            for i, (blob, y, where) in enumerate(rows)]


# -- decoding ---------------------------------------------------------------------------------
Decoded = Iterator[tuple[int, np.ndarray | None, str | None]]


def decode_blobs(blobs: Iterable[bytes], sources: Sequence[str], size: int | None,
                 workers: int, on_error: str = "raise") -> Decoded:
    """`decode_many` over encoded images ("raise" or "skip" a bad one), its errors naming the
    image's row (`sources[i]`) where decode can only say `<bytes>`."""
    from tp_vision.images import ImageError, decode_many

    decoded = decode_many(blobs, size, workers, on_error="skip")  # type: ignore[arg-type]
    for index, pixels, error in decoded:
        if error is None:
            yield index, pixels, None
            continue
        message = error.replace("<bytes>", sources[index], 1)
        if on_error == "raise":
            raise ImageError(message, hint="the stored image cannot be decoded; preprocess with "
                             "the processor's on_error: skip to leave it out, or read another "
                             "revision of the dataset")
        yield index, None, message


def decode_images(images: ImageList, size: int | None, workers: int, on_error: str) -> Decoded:
    """The images of a corpus decoded in order: its files, or the Hub's streamed bytes."""
    from tp_vision.images import decode_many

    if images.blobs is None:
        return decode_many(images.paths, size, workers, on_error)  # type: ignore[arg-type]
    return decode_blobs(images.blobs, images.sources, size, workers, on_error)


def decode_examples(examples: list[Any], size: int | None, workers: int) -> Decoded:
    """A task's images decoded in order, raising on a bad one: Hub rows (bytes in
    `fields["image"]`) or files (`fields["path"]`)."""
    from tp_vision.images import decode_many

    if examples and "image" in examples[0].fields:
        return decode_blobs([e.fields["image"] for e in examples], [e.source for e in examples],
                            size, workers, "raise")
    return decode_many([e.fields["path"] for e in examples], size, workers, on_error="raise")
