"""What tp-loggers' tests share: W&B kept offline and quiet, a tiny BERT recipe and its dataset
(Python's own docs), trained in process on a quiet machine, and readers of what the loggers
wrote: TensorBoard's own event reader, and the records of a W&B offline run."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from tpcli.testing.recipes import TINY_BERT

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
                  ) -> None:
    """W&B offline, silent, writing nothing outside the test's folders (no network)."""
    home = tmp_path_factory.mktemp("wandb-home")
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                       "WANDB_DISABLE_CODE": "true", "WANDB_DISABLE_GIT": "true",
                       "WANDB_CONSOLE": "off", "WANDB_CONFIG_DIR": str(home / "config"),
                       "WANDB_CACHE_DIR": str(home / "cache"),
                       "WANDB_DATA_DIR": str(home / "data")}.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny BERT recipe folder, its dataset, and a classification task's train/dev files."""
    from tpcli.testing.runs import quiet_machine
    from tpcli.verbs import PreprocessRequest, preprocess

    d = tmp_path_factory.mktemp("loggers")
    (d / "recipe").mkdir()
    (d / "recipe" / "recipe.yaml").write_text(TINY_BERT)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from pydoc_corpus import sentences
    finally:
        sys.path.pop(0)
    from pydoc_data.topics import topics

    docs = {name: sentences(topics[name]) for name in ("assignment", "for", "with")}
    (d / "corpus.txt").write_text("".join("\n".join(s) + "\n\n" for s in docs.values()))
    rows = [(name, s) for name, sents in docs.items() for s in sents[:12]]
    for part, keep in (("train", 1), ("dev", 0)):
        (d / f"{part}.tsv").write_text("label\ttext_a\n" + "".join(
            f"{label}\t{text}\n" for i, (label, text) in enumerate(rows) if (i % 3 > 0) == keep))
    with quiet_machine():
        preprocess(PreprocessRequest(str(d / "recipe"), str(d / "corpus.txt"), d / "data"))
    return {"dir": d, "recipe": d / "recipe", "data": d / "data", "train": d / "train.tsv",
            "dev": d / "dev.tsv"}


def jsonl_metrics(path: Path) -> dict[str, dict[int, float]]:
    """key -> step -> value of a metrics.jsonl / eval.jsonl; after a resume the later line for
    a step wins (it is the one that counts)."""
    out: dict[str, dict[int, float]] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "event" in rec:  # the resume marker
            continue
        for key, value in rec.items():
            if key != "step":
                out.setdefault(key, {})[rec["step"]] = value
    return out


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard's own reader gives them (purged steps dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def float32(value: float) -> float:
    """`value` as TensorBoard stores it (a 32-bit float)."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def wandb_records(path: Path) -> list[Any]:
    """The records of a W&B offline run file (RUN/wandb/offline-run-*/run-ID.wandb), parsed
    with wandb's own protobuf classes (wandb.proto.wandb_internal_pb2.Record).

    wandb ships no reader of these files any more (wandb.sdk.internal.datastore went with the
    Go core), so the framing is read here: a 7-byte header (":W&B", magic 0xBEE1, version 0),
    then LevelDB-log records in 32 KiB blocks, each a 7-byte header (crc32c, length, type:
    1 full, 2 first, 3 middle, 4 last) before its bytes; a block's tail shorter than a header
    is padding. The CRCs are not checked."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (ident, magic, version)
    block, pos, parts, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero fill: the end of what was written
            break
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def wandb_run(folder: Path) -> dict[str, Any]:
    """One W&B offline run folder read back: its run id, config and history rows."""
    (path,) = folder.glob("run-*.wandb")
    run: dict[str, Any] = {"id": None, "config": {}, "history": []}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["id"] = record.run.run_id
            run["config"] |= {i.key: json.loads(i.value_json) for i in record.run.config.update}
        elif kind == "config":
            run["config"] |= {i.key: json.loads(i.value_json) for i in record.config.update}
        elif kind == "history":
            run["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                                   for i in record.history.item})
    return run
