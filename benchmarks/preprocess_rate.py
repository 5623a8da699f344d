"""`tp preprocess` against the raw `tokenizers` `encode_batch` rate, at 1x and 10x a corpus.

Each measurement runs in a fresh process, so memory and caches start alike: the raw rate is
`Tokenizer.encode_batch_fast` on batches of 8,192 non-empty lines already in memory (the ids
read out of each encoding, nothing written); tp's rate is `tp preprocess bert-base` on the same
lines as a file, the pass over the corpus (read, split into documents, tokenize, write the
dataset) timed by preprocess itself, with its peak RSS above the process's RSS before the pass.
"vs raw, CPU time" compares the CPU seconds of the two (every thread; tp's less those of a run
on a one-line corpus, its set-up): on a machine shared with other work, the share of the cores a
run gets moves the wall-clock rates, far less the CPU time they take.
Raw and tp alternate within each round (raw first on even rounds, tp first on odd ones) so drift
in the machine's speed hits both alike; the table gives medians with the range over rounds, and
the ratio is the median of each round's own ratio. The corpus is the King James Bible when
/usr/bin/bible exists (one chapter a document), else Python's pydoc topics repeated.

    python benchmarks/preprocess_rate.py                       # 3 rounds at 1x and 10x
    python benchmarks/preprocess_rate.py --rounds 5 --profile  # + cProfile of tp's main thread
    python benchmarks/preprocess_rate.py --impl before=/tmp/old-tp   # + an older tp checkout

`--impl NAME=PATH` adds another tp source tree (a folder holding `tpcli/` and
`plugins/tp-text/`, e.g. `git archive HEAD~3 tpcli plugins | tar -x -C /tmp/old-tp`) to the
alternation, run with PATH first on PYTHONPATH. `--profile` adds one untimed run per corpus
size and prints the top functions of tp's main thread by own time (cProfile): the time it waits
for the tokenizer thread shows as `acquire`, the rest is reading, splitting and writing.
`benchmarks/throughput.py` runs this as its preprocessing section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RAW_BATCH = 8192  # lines per encode_batch call in the raw measurement
MIB = 1024 * 1024


def corpus_lines() -> tuple[str, list[str]]:
    """The King James Bible when /usr/bin/bible exists (one chapter a document), else Python's
    pydoc topics repeated to a similar size."""
    if os.path.exists("/usr/bin/bible"):
        out = subprocess.run(["/usr/bin/bible", "-f", "Gen1:1-Rev22:21"], capture_output=True,
                             text=True, timeout=120).stdout
        lines: list[str] = []
        chapter = ""
        for line in out.splitlines():
            ref, _, text = line.partition(" ")
            if not text.strip():
                continue
            here = ref.split(":")[0]
            if chapter and here != chapter:
                lines.append("")  # a document ends with its chapter
            chapter = here
            lines.append(text.strip())
        return "King James Bible (/usr/bin/bible)", lines
    import pydoc_data.topics as topics

    base = [s for t in topics.topics.values() for s in t.splitlines() if s.strip()]
    lines = []
    while len(lines) < 30000:
        lines += base + [""]
    return "pydoc topics, repeated", lines


# The children print one JSON line last: tokens, seconds, peak_rss_delta (bytes), profile (text).
RSS = r"""
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0
"""

RAW_CHILD = RSS + r"""
import json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
tok.no_padding(); tok.no_truncation()
with open(sys.argv[2], encoding="utf-8") as f:
    texts = [s for s in f.read().split("\n") if s]
batch = int(sys.argv[3])
tok.encode_batch_fast(texts[:batch], add_special_tokens=False)  # the thread pool started
before = rss("VmRSS:")
start, cpu, tokens = time.perf_counter(), time.process_time(), 0
for i in range(0, len(texts), batch):
    for enc in tok.encode_batch_fast(texts[i:i + batch], add_special_tokens=False):
        tokens += len(enc.ids)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"tokens": tokens, "seconds": seconds, "cpu": cpu,
                  "peak_rss_delta": rss("VmHWM:") - before}))
"""

TP_CHILD = RSS + r"""
import cProfile, io, json, pstats, sys, time
from pathlib import Path
from tpcli.data import build_tokenizer
from tpcli.plugins import get_plugins
from tpcli.recipes import load_recipe
from tpcli.verbs import PreprocessRequest, preprocess
corpus, out, recipe, profile = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
plugins = get_plugins()
build_tokenizer(load_recipe(recipe, [], plugins), plugins)  # imports and vocabulary warm
# The CPU time of a run on a one-line corpus: the set-up (recipe, tokenizer) to take off the
# measured run's CPU time, which counts every thread (the tokenizer's included).
Path(out.parent / "one-line.txt").write_text("In the beginning.\n")
setup_cpu = time.process_time()
preprocess(PreprocessRequest(recipe=recipe, corpus=str(out.parent / "one-line.txt"),
                             out=out.parent / (out.name + "-one"), plugins=plugins))
setup_cpu = time.process_time() - setup_cpu
before = rss("VmRSS:")
cpu = time.process_time()
prof = cProfile.Profile() if profile else None
if prof:
    prof.enable()
done = preprocess(PreprocessRequest(recipe=recipe, corpus=corpus, out=out, plugins=plugins))
cpu = time.process_time() - cpu - setup_cpu
text = ""
if prof:
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(14)
    text = buf.getvalue()
print(json.dumps({"tokens": done["tokens"], "seconds": done["seconds"], "cpu": cpu,
                  "peak_rss_delta": rss("VmHWM:") - before, "profile": text}))
"""


def child(script: str, args: list[str], src: Path | None) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; `src`, a tp source tree, goes first on the
    path (its `tpcli` and `tp_text` shadow the installed ones)."""
    paths = [str(src), str(src / "plugins" / "tp-text")] if src is not None else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + sys.path)}
    # cwd: `python -c` puts its working directory first on sys.path, before PYTHONPATH
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          env=env, timeout=1800, cwd=tempfile.gettempdir())
    if done.returncode != 0:
        raise SystemExit(f"measurement failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def spread(xs: list[float], fmt: str) -> str:
    """Median (min-max)."""
    return f"{statistics.median(xs):{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}})"


def measure(root: Path, sizes: list[int], rounds: int, impls: dict[str, Path | None],
            profile: bool) -> tuple[list[str], str, str]:
    """Write the corpora under `root`, alternate raw and every implementation `rounds` times per
    size; the markdown table, the profiles and the load averages seen."""
    from tpcli.data import build_tokenizer
    from tpcli.plugins import get_plugins
    from tpcli.recipes import load_recipe

    source, lines = corpus_lines()
    plugins = get_plugins()
    tokenizer = build_tokenizer(load_recipe("bert-base", [], plugins), plugins)
    tokenizer.save_hf(root / "tok")
    text = "\n".join(lines) + "\n\n"
    loads = [load()]
    rows, profiles = [], []
    for size in sizes:
        corpus = root / f"corpus{size}x.txt"
        corpus.write_text(text * size, encoding="utf-8")
        names = ["raw", *impls]
        got: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                if name == "raw":
                    args = [str(root / "tok" / "tokenizer.json"), str(corpus), str(RAW_BATCH)]
                    got[name].append(child(RAW_CHILD, args, None))
                    continue
                out = root / f"ds-{name}-{size}-{r}"
                got[name].append(child(TP_CHILD, [str(corpus), str(out), "bert-base", "0"],
                                       impls[name]))
                subprocess.run(["rm", "-rf", str(out), f"{out}-one"], check=True)
            loads.append(load())
        if profile:  # one more run, not timed: the profiler slows the main thread
            out = root / f"ds-profile-{size}"
            done = child(TP_CHILD, [str(corpus), str(out), "bert-base", "1"], None)
            subprocess.run(["rm", "-rf", str(out), f"{out}-one"], check=True)
            profiles.append(f"cProfile of tp preprocess's main thread, {size}x corpus (an "
                            "extra, untimed run):\n" + done["profile"].rstrip())
        raw = [g["tokens"] / g["seconds"] for g in got["raw"]]
        raw_cpu = [g["cpu"] for g in got["raw"]]
        for name in names:
            rates = [g["tokens"] / g["seconds"] for g in got[name]]
            ratios = [a / b for a, b in zip(rates, raw)]
            cpu = [b / g["cpu"] for g, b in zip(got[name], raw_cpu)]
            peak = max(g["peak_rss_delta"] for g in got[name]) / MIB
            label = "raw `tokenizers` encode_batch_fast" if name == "raw" else \
                f"{name} preprocess (read, tokenize, write)"
            rows.append(f"| {label} | {size}x | {got[name][0]['tokens']:,} | "
                        f"{spread([x / 1e3 for x in rates], ',.0f')} | {spread(ratios, '.2f')} | "
                        f"{spread(cpu, '.2f')} | {peak:.0f} MiB |")
        corpus.unlink()
    mib = len(text.encode()) / MIB
    head = [
        f"Preprocessing: recipe bert-base (WordPiece, bert processor), corpus {source}, "
        f"{len(lines):,} lines, {mib:.1f} MiB at 1x; tokenizers threads = all {os.cpu_count()} "
        f"cores; {rounds} rounds, raw and tp alternating; median (min-max).",
        "",
        "| measurement | corpus | tokens | k tokens/s | vs raw encode_batch | vs raw, CPU time "
        "| peak RSS delta |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    return head + rows, "\n\n".join(profiles), "; ".join(loads)


def preprocessing_section(rounds: int = 3, profile: bool = False,
                          impls: dict[str, Path | None] | None = None,
                          sizes: tuple[int, ...] = (1, 10)) -> list[str]:
    """The report's lines (what `benchmarks/throughput.py` prints as its preprocessing part)."""
    impls = {"tp": None, **(impls or {})}
    with tempfile.TemporaryDirectory(prefix="tp-bench-") as tmp:
        table, profiles, loads = measure(Path(tmp), list(sizes), rounds, impls, profile)
    out = table + ["", f"Machine load during the run ({loads})."]
    if profiles:
        out += ["", "```", profiles, "```"]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per corpus size")
    p.add_argument("--sizes", default="1,10", help="comma list of corpus multiples")
    p.add_argument("--profile", action="store_true",
                   help="cProfile tp's main thread in one more, untimed run per corpus size: "
                   "top functions by own time")
    p.add_argument("--impl", action="append", default=[], metavar="NAME=PATH",
                   help="another tp source tree to alternate with this one")
    args = p.parse_args(argv)
    impls: dict[str, Path | None] = {}
    for spec in args.impl:
        name, _, path = spec.partition("=")
        if not path or name in ("raw", "tp") or not (Path(path) / "tpcli").is_dir():
            raise SystemExit(f"--impl {spec}: give NAME=PATH, PATH a folder holding tpcli/ "
                             "(NAME not raw or tp)")
        impls[name] = Path(path).resolve()
    sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
    for line in preprocessing_section(args.rounds, args.profile, impls, sizes):
        print(line, flush=True)


if __name__ == "__main__":
    main()
