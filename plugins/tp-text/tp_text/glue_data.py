"""The nine GLUE tasks as data, and one reader for both places the data lives.

`tp finetune --task glue/<name>` needs, per task, what the GLUE paper scores (its metrics), the
label set, which columns hold the texts, and where each split's file is. `read_glue` reads either

- a local copy of the original GLUE distribution (the folders CoLA, SST-2, MRPC, QQP, STS-B,
  MNLI, QNLI, RTE, WNLI of `download_glue_data.py`; give the root or one task folder), or
- the Hub dataset `nyu-mll/glue` (`"hub"`, or `"hf://nyu-mll/glue@<revision>"` to pin one): its
  parquet files `<task>/<split>-NNNNN-of-NNNNN.parquet`, fetched once through `huggingface_hub`
  into the HF cache (later calls, and offline runs, read the cache).

Both give the same `Example`s (the `source` field aside): labels are the TSV strings in the order
of the Hub's ClassLabel ints (MNLI `entailment, neutral, contradiction`; SST-2 `"0", "1"`), a
missing label (GLUE test files; `-1` on the Hub) is None, STS-B scores are floats, and `guid` is
`<split>-<n>` with n the data row's index in its file, which is the Hub's `idx` column. Two
exceptions come from how the Hub copy was built, not from this reader: its MRPC train/dev rows
are numbered in Microsoft's original train file (so MRPC guids differ) and its MRPC test split
keeps the public labels that GLUE's test.tsv leaves out.

The TSV files are split on tabs only: MRPC, QQP and MNLI contain unbalanced double quotes that a
CSV reader would join across lines. Every row must have as many fields as the header (CoLA's
train/dev files have no header: source, label, original label mark, sentence); a row that does
not is an error naming file:line. The Hugging Face loader drops such rows silently, and the
BERT-era processors skip short QQP lines (the first QQP release had some); `skip_malformed=True`
skips them too, keeping the row numbering, and logs how many and where.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tpcli.errors import DataError, TpError

log = logging.getLogger(__name__)

HUB_REPO = "nyu-mll/glue"
SPLITS = ("train", "dev", "test")
_GET_IT = ("get the data with GLUE's download_glue_data.py (one folder per task: CoLA, SST-2, "
           "MRPC, QQP, STS-B, MNLI, QNLI, RTE, WNLI), or read it from the Hugging Face Hub with "
           "`--data hub` (source \"hub\")")


def _standard() -> dict[str, tuple[tuple[str, str], ...]]:
    return {s: ((f"{s}.tsv", s),) for s in SPLITS}


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: what it is scored with, its labels, and where its texts are.

    `labels` are the label strings of the TSV files, in the order of the Hub's class ints
    (`label_names` are the Hub's names for them); None for STS-B's regression. `text_a`,
    `text_b`, `label_column` are TSV header names, `hub_columns` the Hub's text columns.
    `splits` maps train/dev/test to (file, split name) pairs: MNLI has two dev and two test sets.
    `no_header` gives the column names of files written without a header line (CoLA).
    """

    name: str
    folder: str
    metrics: tuple[str, ...]
    labels: tuple[str, ...] | None
    label_names: tuple[str, ...] | None
    text_a: str
    text_b: str | None
    label_column: str
    hub_columns: tuple[str, str | None]
    splits: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=_standard)
    no_header: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


_COLA_COLUMNS = ("source", "label", "original_label", "sentence")
_MNLI_SPLITS = {
    "train": (("train.tsv", "train"),),
    "dev": (("dev_matched.tsv", "dev_matched"), ("dev_mismatched.tsv", "dev_mismatched")),
    "test": (("test_matched.tsv", "test_matched"), ("test_mismatched.tsv", "test_mismatched")),
}
_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTask] = {t.name: t for t in (
    GlueTask("cola", "CoLA", ("matthews_corr",), _BINARY, ("unacceptable", "acceptable"),
             "sentence", None, "label", ("sentence", None),
             no_header={"train.tsv": _COLA_COLUMNS, "dev.tsv": _COLA_COLUMNS}),
    GlueTask("sst2", "SST-2", ("accuracy",), _BINARY, ("negative", "positive"),
             "sentence", None, "label", ("sentence", None)),
    GlueTask("mrpc", "MRPC", ("f1", "accuracy"), _BINARY, ("not_equivalent", "equivalent"),
             "#1 String", "#2 String", "Quality", ("sentence1", "sentence2")),
    GlueTask("qqp", "QQP", ("f1", "accuracy"), _BINARY, ("not_duplicate", "duplicate"),
             "question1", "question2", "is_duplicate", ("question1", "question2")),
    GlueTask("stsb", "STS-B", ("pearson", "spearman"), None, None,
             "sentence1", "sentence2", "score", ("sentence1", "sentence2")),
    GlueTask("mnli", "MNLI", ("accuracy",), ("entailment", "neutral", "contradiction"),
             ("entailment", "neutral", "contradiction"), "sentence1", "sentence2", "gold_label",
             ("premise", "hypothesis"), splits=_MNLI_SPLITS),
    GlueTask("qnli", "QNLI", ("accuracy",), _NLI2, _NLI2,
             "question", "sentence", "label", ("question", "sentence")),
    GlueTask("rte", "RTE", ("accuracy",), _NLI2, _NLI2,
             "sentence1", "sentence2", "label", ("sentence1", "sentence2")),
    GlueTask("wnli", "WNLI", ("accuracy",), _BINARY, ("not_entailment", "entailment"),
             "sentence1", "sentence2", "label", ("sentence1", "sentence2")),
)}


@dataclass(frozen=True)
class Example:
    """One GLUE example; `source` (file:line) says where it came from and is not compared."""

    guid: str
    text_a: str
    text_b: str | None
    label: str | float | None
    source: str = field(compare=False)


def get_task(name: str) -> GlueTask:
    """The task called `name` (`cola`, `glue/cola`, `CoLA`, `SST-2`, `sts-b` all work)."""
    key = name.strip().lower().removeprefix("glue/").replace("-", "").replace("_", "")
    if key in GLUE_TASKS:
        return GLUE_TASKS[key]
    close = difflib.get_close_matches(key, list(GLUE_TASKS), n=1, cutoff=0.5)
    guess = f" (did you mean 'glue/{close[0]}'?)" if close else ""
    raise TpError(
        f"unknown GLUE task {name!r}{guess}",
        hint=f"the GLUE tasks are {', '.join(GLUE_TASKS)}; name one as glue/<task>, "
        "e.g. --task glue/sst2.",
    )


def read_glue(task: str, split: str, source: str | Path, *, cache_dir: str | Path | None = None,
              skip_malformed: bool = False) -> dict[str, list[Example]]:
    """The examples of `split` (train/dev/test) of `task`, keyed by split name (MNLI's dev
    gives `dev_matched` and `dev_mismatched`). `source`: a GLUE folder, `"hub"` or
    `"hf://<repo>[@<revision>]"`; `cache_dir` is the HF cache for the Hub (default: HF's)."""
    spec = get_task(task)
    if split not in spec.splits:
        raise TpError(f"unknown GLUE split {split!r} for {spec.name}",
                      hint=f"use one of {', '.join(spec.splits)}.")
    hub = _hub_source(source)
    if hub is not None:
        return read_hub(spec, split, hub[0], hub[1], cache_dir)
    folder = _task_dir(spec, Path(source))
    out = {}
    for file, name in spec.splits[split]:
        path = folder / file
        if not path.is_file():
            raise DataError(
                f"GLUE {spec.name} {split}: {path} not found",
                hint=f"{folder} should hold {_expected(spec)} as in the original GLUE "
                f"distribution; {_GET_IT}.",
            )
        out[name] = read_tsv(spec, path, name, skip_malformed=skip_malformed)
    return out


def _expected(spec: GlueTask) -> str:
    return ", ".join(f for files in spec.splits.values() for f, _ in files)


def _hub_source(source: str | Path) -> tuple[str, str] | None:
    """(repo, revision) when `source` names the Hub, else None (a local folder)."""
    if not isinstance(source, str):
        return None
    if source == "hub":
        return HUB_REPO, "main"
    if not source.startswith("hf://"):
        return None
    repo, _, rev = source[len("hf://"):].removeprefix("datasets/").partition("@")
    if repo.count("/") != 1:
        raise TpError(f"bad GLUE source {source!r}",
                      hint=f"write hf://<org>/<name>[@<revision>], e.g. hf://{HUB_REPO}@main.")
    return repo.strip("/"), rev or "main"


def _task_dir(spec: GlueTask, root: Path) -> Path:
    """The task's folder: `root/<Folder>`, or `root` itself when it is that folder."""
    if (root / spec.folder).is_dir():
        return root / spec.folder
    other = {t.folder.lower(): t.name for t in GLUE_TASKS.values()}.get(root.name.lower())
    if other is not None and other != spec.name:
        raise DataError(f"GLUE {spec.name}: {root} is the folder of {other}, not {spec.name}",
                        hint=f"point the source at the GLUE root or at its {spec.folder} folder.")
    if root.is_dir() and (other == spec.name
                          or any((root / f).is_file() for f, _ in spec.splits["train"])):
        return root
    raise DataError(
        f"GLUE {spec.name}: no folder {root / spec.folder}",
        hint=f"point the source at the GLUE root (with a {spec.folder}/ folder) or at the "
        f"{spec.folder} folder itself, holding {_expected(spec)}; {_GET_IT}.",
    )


def read_tsv(spec: GlueTask, path: Path, split_name: str, *, skip_malformed: bool = False
             ) -> list[Example]:
    """The examples of one GLUE .tsv file (tabs only, no quoting)."""
    columns = spec.no_header.get(path.name)
    examples: list[Example] = []
    skipped: list[int] = []
    n = 0  # data rows so far, malformed ones included (the Hub's idx counts them too)
    for lineno, fields in _lines(path):
        if columns is None:
            columns = tuple(fields)
            _check_header(spec, path, columns)
            continue
        if len(fields) != len(columns):
            if not skip_malformed:
                raise DataError(
                    f"{path}:{lineno}: expected {len(columns)} tab-separated fields, "
                    f"got {len(fields)}",
                    hint="the GLUE files have exactly as many fields on every line as in their "
                    "header; fix or delete this line (a fresh download has none), or read with "
                    "skip_malformed=True to skip such lines as the Hugging Face loader does.",
                )
            skipped.append(lineno)
            n += 1
            continue
        row = dict(zip(columns, fields))
        where = f"{path}:{lineno}"
        label = _label(spec, row[spec.label_column], where) if spec.label_column in row else None
        text_b = row[spec.text_b] if spec.text_b else None
        examples.append(Example(f"{split_name}-{n}", row[spec.text_a], text_b, label, where))
        n += 1
    if skipped:
        log.warning("%s: skipped %d malformed line(s) (first: line %d)", path, len(skipped),
                    skipped[0])
    return examples


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, tab-separated fields) of each non-empty line; splits on \\n only, so a
    stray \\r inside a text stays in it."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start})",
                                hint="the GLUE files are UTF-8; re-download the file.") from None
            text = text.removeprefix("\ufeff") if lineno == 1 else text
            text = text.removesuffix("\n").removesuffix("\r")
            if text:
                yield lineno, text.split("\t")


def _check_header(spec: GlueTask, path: Path, columns: tuple[str, ...]) -> None:
    needed = [c for c in (spec.text_a, spec.text_b) if c]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(
            f"{path}:1: the header {list(columns)} has no column {missing[0]!r}",
            hint=f"GLUE's {spec.folder} files have a header with {needed} (CoLA's train and dev "
            f"have none); is this the {spec.folder} file of the original GLUE distribution?",
        )


def _label(spec: GlueTask, raw: str, where: str) -> str | float:
    """A TSV label, checked against the task's label set (or parsed as a float score)."""
    if spec.labels is None:
        try:
            return float(raw)
        except ValueError:
            raise DataError(f"{where}: score {raw!r} is not a number",
                            hint=f"{spec.folder}'s last column is a similarity score "
                            "between 0 and 5.") from None
    if raw not in spec.labels:
        raise DataError(
            f"{where}: label {raw!r} is not one of the {spec.name} labels {list(spec.labels)}",
            hint="fix the line, or check that the file belongs to this task.",
        )
    return raw


def _hub_split(name: str) -> str:
    """The Hub's name of a split: dev -> validation, dev_matched -> validation_matched."""
    return name.replace("dev", "validation", 1) if name.startswith("dev") else name


def read_hub(spec: GlueTask, split: str, repo: str, revision: str,
             cache_dir: str | Path | None = None) -> dict[str, list[Example]]:
    """`split` of `spec` from the Hub's parquet files, through the HF cache."""
    names = [name for _, name in spec.splits[split]]
    # main: <task>/<split>-00000-of-00001.parquet; refs/convert/parquet: <task>/<split>/0000.parquet
    layouts = [(f"{spec.name}/{_hub_split(n)}-*.parquet", f"{spec.name}/{_hub_split(n)}/*.parquet")
               for n in names]
    folder = _snapshot(repo, revision, [p for pair in layouts for p in pair], cache_dir)
    commit = folder.name  # snapshots/<commit sha>
    out = {}
    for name, (pattern, converted) in zip(names, layouts):
        files = sorted(folder.glob(pattern)) or sorted(folder.glob(converted))
        if not files:
            raise DataError(
                f"GLUE {spec.name} {split}: no {pattern} in hf://{repo}@{revision}",
                hint=f"the Hub dataset {HUB_REPO} keeps one folder of parquet files per task; "
                "check the repository and revision, or read a local GLUE folder instead.",
            )
        rows: list[Example] = []
        for path in files:
            where = f"hf://datasets/{repo}@{commit[:12]}/{path.relative_to(folder).as_posix()}"
            rows += _parquet_examples(spec, path, name, where)
        out[name] = rows
    return out


def _snapshot(repo: str, revision: str, patterns: list[str], cache_dir: str | Path | None
              ) -> Path:
    """The local snapshot folder holding the files matching `patterns` (downloaded if needed)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, repo_type="dataset", revision=revision,
                                      allow_patterns=patterns, cache_dir=cache_dir))
    except (HfHubHTTPError, LocalEntryNotFoundError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"cannot get GLUE files {patterns} from hf://{repo}@{revision}: {first}",
            hint="check the network (or HF_ENDPOINT), the repository name and the revision; "
            "offline, only what an earlier run cached can be read. Or download GLUE and give "
            "its folder.",
        ) from None


def _parquet_examples(spec: GlueTask, path: Path, split_name: str, where: str
                      ) -> list[Example]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TpError("reading GLUE from the Hub needs pyarrow",
                      hint="pip install pyarrow (or tp-text's `hub` extra), or give a local "
                      "GLUE folder.") from None
    a, b = spec.hub_columns
    wanted = [c for c in (a, b, "label", "idx") if c]
    table = pq.read_table(path)
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise DataError(f"{where}: no column {missing[0]!r} (has {table.column_names})",
                        hint=f"this is not the {spec.name} config of {HUB_REPO}; check the "
                        "repository and revision.")
    cols = table.select(wanted).to_pydict()
    out = []
    for row, (idx, raw) in enumerate(zip(cols["idx"], cols["label"])):
        label = _hub_label(spec, raw, f"{where}:{row + 1}")
        text_b = cols[b][row] if b else None
        out.append(Example(f"{split_name}-{idx}", cols[a][row], text_b, label,
                           f"{where}:{row + 1}"))
    return out


def _hub_label(spec: GlueTask, raw: int | float | None, where: str) -> str | float | None:
    """The Hub's label (a ClassLabel int, STS-B's float32; -1 when hidden) as the TSV gives it."""
    if raw is None or raw == -1:
        return None
    if spec.labels is None:
        return float(f"{raw:.7g}")  # float32 -> the decimal written in the TSV (3.8, not 3.7999)
    if not 0 <= int(raw) < len(spec.labels):
        raise DataError(f"{where}: label {raw} is outside 0..{len(spec.labels) - 1}",
                        hint=f"{spec.name} has labels {list(spec.label_names or ())}; check "
                        "the repository and revision.")
    return spec.labels[int(raw)]
