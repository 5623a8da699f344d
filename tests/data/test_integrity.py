"""A damaged dataset is refused with a clear error, never trained on: random bytes in an index
(caught when the dataset is opened), random bytes in a token shard (caught as it is read, mid-run
included), and datasets written before digests were recorded stay readable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tpcli.data.format import Reader
from tpcli.errors import DataError
from tpcli.verbs import PreprocessRequest, preprocess

TP = Path(sys.executable).parent / "tp"
REBUILD = "re-run `tp preprocess`"


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, recipe_factory, sentences_corpus) -> Path:
    """A good dataset of the pydoc corpus; tests damage copies of it."""
    base = tmp_path_factory.mktemp("integrity")
    recipe = recipe_factory(base / "recipe")
    preprocess(PreprocessRequest(str(recipe), str(sentences_corpus), base / "ds"))
    return base / "ds"


def damaged(clean: Path, tmp_path: Path, file: str, how: str) -> Path:
    """A copy of `clean` with `shard-00000.<file>` damaged `how`; same size, so the size check
    of old passes."""
    ds = tmp_path / "ds"
    shutil.copytree(clean, ds)
    path = ds / f"shard-00000.{file}"
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    if how == "random":
        data[:] = rng.integers(0, 256, len(data), dtype=np.uint8).tobytes()
    else:
        idx = np.frombuffer(bytes(data), np.int64).copy()
        if how == "shifted":  # still in order and in range, but other boundaries
            idx[1:3] += 1
        else:  # "swapped": two offsets out of order
            idx[2], idx[3] = idx[3], idx[2]
        data[:] = idx.tobytes()
    path.write_bytes(bytes(data))
    return ds


@pytest.mark.parametrize("file", ["seqs.idx", "docs.idx"])
def test_random_index_refused_when_opened(clean, tmp_path, file):
    ds = damaged(clean, tmp_path, file, "random")
    with pytest.raises(DataError) as info:
        Reader(ds)
    text = " ".join(str(info.value).split())
    assert f"dataset {ds} is corrupt: shard-00000.{file}" in text
    assert "sha256" in text and REBUILD in text


def test_index_digest_catches_plausible_offsets(clean, tmp_path):
    ds = damaged(clean, tmp_path, "seqs.idx", "shifted")
    with pytest.raises(DataError, match=r"shard-00000.seqs.idx does not match the sha256"):
        Reader(ds)


def without_digests(ds: Path) -> None:
    """What a dataset written before digests were recorded looks like."""
    meta = json.loads((ds / "meta.json").read_text())
    for shard in meta["shards"]:
        del shard["sha256"]
    (ds / "meta.json").write_text(json.dumps(meta))


def test_old_dataset_reads_and_its_offsets_are_checked(clean, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(clean, old)
    without_digests(old)
    reader, fresh = Reader(old), Reader(clean)
    assert reader.n_tokens == fresh.n_tokens
    assert reader.sequence(7).tolist() == fresh.sequence(7).tolist()
    ds = damaged(old, tmp_path / "x", "seqs.idx", "random")
    with pytest.raises(DataError, match=r"shard-00000.seqs.idx (runs from|goes backwards)"):
        Reader(ds)
    ds = damaged(old, tmp_path / "y", "docs.idx", "swapped")
    with pytest.raises(DataError, match="docs.idx goes backwards at entry 3"):
        Reader(ds)


def test_malformed_shard_entry(clean, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(clean, ds)
    meta = json.loads((ds / "meta.json").read_text())
    meta["shards"][0]["tokens"] = "many"
    (ds / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="meta.json's shard 0 is not"):
        Reader(ds)


def test_random_tokens_found_while_reading(clean, tmp_path, tokenizer, recipe_factory):
    from tpcli.data.loader import make_dataset
    from tpcli.plugins import get_plugins
    from tpcli.recipes import load_recipe

    ds = damaged(clean, tmp_path, "tokens.bin", "random")
    reader = Reader(ds)  # sizes and indexes are intact: opening cannot see it
    with pytest.raises(DataError) as info:
        for i in range(reader.n_sequences):
            reader.sequence(i)
    text = " ".join(str(info.value).split())
    assert f"dataset {ds} is corrupt: shard-00000.tokens.bin holds token id" in text
    assert "vocabulary has 30522 ids" in text and REBUILD in text
    recipe = load_recipe(str(recipe_factory(tmp_path / "recipe")), [])
    dataset = make_dataset(ds, recipe, tokenizer, seed=0, plugins=get_plugins())
    with pytest.raises(DataError, match=r"shard-00000.tokens.bin holds token id"):
        for i in range(len(dataset)):
            dataset[i]


@pytest.fixture(scope="module")
def pretrain_runs(clean, tmp_path_factory, recipe_factory) -> dict[str, tuple[int, str, Path]]:
    """`tp pretrain` on a dataset with a random index, and on one with a random token shard,
    run side by side (start-up is the cost)."""
    procs = {}
    for file in ("seqs.idx", "tokens.bin"):
        base = tmp_path_factory.mktemp(file)
        ds = damaged(clean, base, file, "random")
        recipe = recipe_factory(base / "recipe")
        out = base / "run"
        cmd = [str(TP), "pretrain", str(recipe), "--data", str(ds), "--out", str(out),
               "--no-progress", "pretrain.steps=3"]
        procs[file] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True), out)
    results = {}
    for file, (proc, out) in procs.items():
        _, stderr = proc.communicate(timeout=300)
        results[file] = (proc.returncode, stderr, out)
    return results


@pytest.mark.parametrize("file", ["seqs.idx", "tokens.bin"])
def test_pretrain_refuses_damaged_dataset(pretrain_runs, file):
    rc, stderr, out = pretrain_runs[file]
    text = " ".join(stderr.split())
    assert rc == 1, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    assert f"is corrupt: shard-00000.{file}" in text and REBUILD in text
    assert not (out / "last").exists()  # nothing was trained on it
