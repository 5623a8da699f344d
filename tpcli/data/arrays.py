"""tp's dataset format for examples of arrays: any dtype, any shape (format version 2).

Token datasets (`tpcli.data.format`) keep text's sequence and document structure; a processor
whose examples are arrays (uint8 images, float16 audio features, labels) stores them here. Each
example is a dict of named fields; meta.json declares each field's dtype and per-example shape,
where ``null`` as the first size means it varies per example (a spectrogram's frames). Per shard
``shard-NNNNN`` and field ``f``:

- ``.f.bin``: the field of every example of the shard, back to back (C order);
- ``.f.idx``: int64 row offsets, one more than the examples, for a field of varying length only
  (a fixed-shape field's example ``i`` starts at ``i * prod(shape)``).

The same guarantees as token datasets: written into a temporary folder and renamed into place
when complete (nothing half-written after a failure, Ctrl-C or SIGTERM), the index files' sha256
recorded and checked on open with every file's size, memory-mapped reads, a Reader that pickles
without its maps.
"""

from __future__ import annotations

import datetime as _dt
import math
import shutil
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Iterator

import numpy as np

from tpcli.data.format import FORMAT, META, read_meta, shard_name
from tpcli.data.integrity import corrupt, file_digest, rebuild_hint
from tpcli.data.staging import complete, make_temp, remove_stale, write_error
from tpcli.errors import DataError, PluginError

ARRAYS_VERSION = 2
LAYOUT = "arrays"
Fields = dict[str, tuple[str, tuple[int | None, ...]]]  # name -> (dtype, shape; None = varies)


def _check_fields(fields: Fields) -> None:
    for name, (dtype, shape) in fields.items():
        if not name.isidentifier():
            raise PluginError(f"dataset field {name!r} is not a plain identifier")
        np.dtype(dtype)  # raises TypeError for an unknown dtype: a plugin bug
        if any(d is None for d in shape[1:]):
            raise PluginError(f"dataset field {name!r}: only the first size may vary, got {shape}")


class _Shard:
    """One shard's open files and counts while it is written."""

    def __init__(self, folder: Path, index: int, fields: Fields) -> None:
        self.name = shard_name(index)
        self.examples = 0
        self.files: dict[str, IO[bytes]] = {}
        self.rows: dict[str, list[int]] = {}  # varying fields: row offsets so far
        self.elements = {f: 0 for f in fields}
        try:
            for f, (_, shape) in fields.items():
                self.files[f + ".bin"] = open(folder / f"{self.name}.{f}.bin", "wb")
                if shape and shape[0] is None:
                    self.rows[f] = [0]
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()


class ArrayWriter:
    """Streams examples (dicts of arrays) into a new dataset folder; use as a context manager.

    ``append(example)`` checks each field against the declaration (shape; values are cast to the
    declared dtype only when that loses nothing) and writes it. Leaving the ``with`` block
    normally completes and renames the folder; any exception deletes it."""

    def __init__(self, out: Path, fields: Fields, meta: dict[str, Any],
                 shard_examples: int = 100_000) -> None:
        self.out = Path(out)
        if self.out.exists():
            raise DataError(f"output {self.out} already exists", hint="choose another --out or delete it")
        _check_fields(fields)
        self.fields = dict(fields)
        self.meta = dict(meta)
        self.shard_examples = max(1, int(shard_examples))
        remove_stale(self.out.parent)
        self.tmp = make_temp(self.out)
        self._done: list[dict[str, Any]] = []
        try:
            self._shard = _Shard(self.tmp, 0, self.fields)
        except BaseException as e:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(e, OSError):
                raise write_error(self.out, e, "creating its first shard") from None
            raise

    @property
    def examples(self) -> int:
        return sum(s["examples"] for s in self._done) + self._shard.examples

    def append(self, example: dict[str, Any]) -> None:
        if set(example) != set(self.fields):
            raise PluginError(f"an example has fields {sorted(example)}, the dataset declares "
                              f"{sorted(self.fields)}")
        arrays = {f: self._checked(f, np.asarray(v)) for f, v in example.items()}
        try:
            if self._shard.examples >= self.shard_examples:
                self._done.append(self._close_shard())
                self._shard = _Shard(self.tmp, len(self._done), self.fields)
            s = self._shard
            for f, a in arrays.items():
                s.files[f + ".bin"].write(np.ascontiguousarray(a).tobytes())
                s.elements[f] += a.size
                if f in s.rows:
                    s.rows[f].append(s.rows[f][-1] + a.shape[0])
            s.examples += 1
        except OSError as e:
            raise write_error(self.out, e, "writing a shard") from None

    def _checked(self, field: str, a: np.ndarray) -> np.ndarray:
        dtype, shape = self.fields[field]
        if a.ndim != len(shape) or any(d is not None and d != n for d, n in zip(shape, a.shape)):
            raise PluginError(f"field {field!r} of an example has shape {a.shape}, the dataset "
                              f"declares {tuple(shape)} (None: any size)")
        if a.dtype != np.dtype(dtype):
            if not np.can_cast(a.dtype, dtype, casting="same_kind") or (
                    a.size and not np.array_equal(a.astype(dtype).astype(a.dtype), a)):
                raise PluginError(f"field {field!r} holds {a.dtype} values that {dtype} cannot "
                                  "represent exactly")
            a = a.astype(dtype)
        return a

    def _close_shard(self) -> dict[str, Any]:
        s = self._shard
        s.close()
        digests = {}
        for f, rows in s.rows.items():
            path = self.tmp / f"{s.name}.{f}.idx"
            np.asarray(rows, dtype=np.int64).tofile(path)
            digests[f"{f}.idx"] = file_digest(path)
        return {"name": s.name, "examples": s.examples, "elements": dict(s.elements),
                "sha256": digests}

    def finish(self) -> dict[str, Any]:
        """Complete the dataset, rename it into place and return its meta."""
        from tpcli import __version__

        try:
            self._done.append(self._close_shard())
            meta = {"format": FORMAT, "format_version": ARRAYS_VERSION, "layout": LAYOUT,
                    **self.meta,
                    "fields": {f: {"dtype": d, "shape": list(s)} for f, (d, s) in self.fields.items()},
                    "shards": self._done, "examples": sum(s["examples"] for s in self._done),
                    "tp_version": __version__,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        except OSError as e:
            raise write_error(self.out, e, "completing it") from None
        complete(self.tmp, self.out, meta, META)
        return meta

    def __enter__(self) -> "ArrayWriter":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None:  # Ctrl-C and SIGTERM included: nothing half-written stays
            self._shard.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


class ArrayReader:
    """Memory-maps an array dataset: `example(i)` is a dict of read-only views.

    Opening checks meta.json, every file's size and the index files in full (digest, order,
    range): a damaged dataset is an error before training, not a run on garbage."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.meta = read_meta(self.folder)
        if self.meta.get("layout") != LAYOUT:
            raise DataError(f"dataset {self.folder} holds token sequences, not arrays",
                            hint="use a recipe whose processor reads token datasets, or "
                            "re-run `tp preprocess` with this recipe")
        self.fields: Fields = {}
        for f, spec in (self.meta.get("fields") or {}).items():
            self.fields[f] = (str(spec["dtype"]), tuple(spec["shape"]))
        self._infos: list[dict[str, Any]] = list(self.meta.get("shards") or [])
        if not self._infos or not self.fields:
            raise DataError(f"dataset {self.folder} lists no shards or fields in {META}",
                            hint=rebuild_hint(self.folder))
        counts = [int(s["examples"]) for s in self._infos]
        self._start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # (K+1,)
        self._maps: list[dict[str, np.ndarray]] | None = None
        self._rows = [self._check_shard(k, info) for k, info in enumerate(self._infos)]

    def _check_shard(self, k: int, info: dict[str, Any]) -> dict[str, np.ndarray]:
        """Sizes of shard k's files, and its row offsets (read in full: 8 bytes an example)."""
        name, n = shard_name(k), int(info["examples"])
        if info.get("name") != name:
            raise corrupt(self.folder, META, f"names shard {k} {info.get('name')!r}, not {name}")
        rows: dict[str, np.ndarray] = {}
        for f, (dtype, shape) in self.fields.items():
            elements = int(info["elements"][f])
            if shape and shape[0] is None:
                idx = self.folder / f"{name}.{f}.idx"
                if not idx.is_file() or idx.stat().st_size != 8 * (n + 1):
                    raise corrupt(self.folder, idx.name, f"is missing or not {8 * (n + 1)} bytes")
                if info["sha256"].get(f"{f}.idx") != file_digest(idx):
                    raise corrupt(self.folder, idx.name, "does not match its recorded sha256")
                offsets = np.fromfile(idx, dtype=np.int64)
                per_row = math.prod(shape[1:])
                if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or \
                        offsets[-1] * per_row != elements:
                    raise corrupt(self.folder, idx.name, "holds offsets out of order or range")
                rows[f] = offsets
            elif elements != n * math.prod(shape):
                raise corrupt(self.folder, META, f"counts {elements} elements of {f} in {name}, "
                              f"not {n} x {shape}")
            data = self.folder / f"{name}.{f}.bin"
            size = elements * np.dtype(dtype).itemsize
            if not data.is_file() or data.stat().st_size != size:
                raise corrupt(self.folder, data.name, f"is missing or not {size} bytes")
        return rows

    def __len__(self) -> int:
        return int(self._start[-1])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = None  # maps reopen in the receiving process instead of being copied
        return state

    def _open(self) -> list[dict[str, np.ndarray]]:
        if self._maps is None:
            maps = []
            for k, info in enumerate(self._infos):
                shard = {}
                for f, (dtype, _) in self.fields.items():
                    n = int(info["elements"][f])
                    path = self.folder / f"{shard_name(k)}.{f}.bin"
                    shard[f] = (np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n
                                else np.zeros(0, dtype))
                maps.append(shard)
            self._maps = maps
        return self._maps

    def example(self, i: int) -> dict[str, np.ndarray]:
        """Example `i`'s fields (read-only views into the maps)."""
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} out of range (0..{len(self) - 1})")
        k = int(np.searchsorted(self._start, i, side="right")) - 1
        local = i - int(self._start[k])
        out = {}
        for f, (_, shape) in self.fields.items():
            flat = self._open()[k][f]
            if f in self._rows[k]:
                per_row = math.prod(shape[1:])
                lo, hi = self._rows[k][f][local:local + 2]
                out[f] = flat[lo * per_row:hi * per_row].reshape(-1, *shape[1:])
            else:
                size = math.prod(shape)
                out[f] = flat[local * size:(local + 1) * size].reshape(shape)
        return out

    def column(self, field: str) -> np.ndarray:
        """A fixed-shape field of every example, (n, *shape), e.g. all labels (a copy)."""
        dtype, shape = self.fields[field]
        if shape and shape[0] is None:
            raise ValueError(f"field {field} varies in length; read it per example")
        parts = [m[field].reshape(-1, *shape) for m in self._open()]
        return np.concatenate(parts) if parts else np.zeros((0, *shape), dtype)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return (self.example(i) for i in range(len(self)))


def open_store(folder: Path | str) -> Any:
    """The reader for dataset `folder`: an ArrayReader for array datasets, else a token Reader."""
    from tpcli.data.format import Reader

    meta = read_meta(Path(folder))
    return ArrayReader(folder) if meta.get("layout") == LAYOUT else Reader(folder)
