"""The array dataset format: any dtype and shape per example, sharded, memory-mapped, checked."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from tpcli.data.arrays import ArrayReader, ArrayWriter, open_store
from tpcli.data.format import Reader
from tpcli.errors import DataError, PluginError

FIELDS = {"pixels": ("uint8", (4, 5, 3)), "label": ("int64", ()),
          "features": ("float16", (None, 2))}


def examples(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"pixels": rng.integers(0, 256, (4, 5, 3), dtype=np.uint8),
             "label": np.int64(i % 3),
             "features": rng.standard_normal((1 + i % 4, 2)).astype(np.float16)}
            for i in range(n)]


def write(out: Path, exs: list[dict[str, np.ndarray]], shard: int = 3) -> dict:
    with ArrayWriter(out, FIELDS, {"processor": {"name": "test"}}, shard_examples=shard) as w:
        for e in exs:
            w.append(e)
        return w.finish()


def test_round_trip_across_shards(tmp_path: Path) -> None:
    exs = examples(8)
    meta = write(tmp_path / "d", exs)
    assert meta["format_version"] == 2 and len(meta["shards"]) == 3 and meta["examples"] == 8
    store = open_store(tmp_path / "d")
    assert isinstance(store, ArrayReader) and len(store) == 8
    store = pickle.loads(pickle.dumps(store))  # DataLoader workers: maps reopen
    for i, e in enumerate(exs):
        got = store.example(i)
        for f in FIELDS:
            assert got[f].dtype == np.dtype(FIELDS[f][0])
            np.testing.assert_array_equal(got[f], e[f])
    np.testing.assert_array_equal(store.column("label"), [i % 3 for i in range(8)])
    with pytest.raises(IndexError):
        store.example(8)


def test_declaration_is_enforced(tmp_path: Path) -> None:
    bad = examples(1)[0] | {"pixels": np.zeros((4, 4, 3), np.uint8)}
    with pytest.raises(PluginError, match="shape"), \
            ArrayWriter(tmp_path / "d", FIELDS, {}) as w:
        w.append(bad)
    lossy = examples(1)[0] | {"label": np.float64(1.5)}
    with pytest.raises(PluginError, match="cannot"), ArrayWriter(tmp_path / "e", FIELDS, {}) as w:
        w.append(lossy)
    assert not any(tmp_path.iterdir())  # nothing half-written, no temp folder


def test_interrupt_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), ArrayWriter(tmp_path / "d", FIELDS, {}) as w:
        w.append(examples(1)[0])
        raise KeyboardInterrupt
    assert not any(tmp_path.iterdir())


def test_damage_is_caught_on_open(tmp_path: Path) -> None:
    write(tmp_path / "d", examples(5))
    idx = tmp_path / "d" / "shard-00000.features.idx"
    data = bytearray(idx.read_bytes())
    data[8] ^= 1
    idx.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt: shard-00000.features.idx"):
        ArrayReader(tmp_path / "d")
    write(tmp_path / "e", examples(5))
    pix = tmp_path / "e" / "shard-00001.pixels.bin"
    pix.write_bytes(pix.read_bytes()[:-1])
    with pytest.raises(DataError, match="shard-00001.pixels.bin is missing or not"):
        ArrayReader(tmp_path / "e")


def test_layouts_refuse_each_other(tmp_path: Path) -> None:
    write(tmp_path / "d", examples(2))
    with pytest.raises(DataError, match="holds arrays"):
        Reader(tmp_path / "d")
