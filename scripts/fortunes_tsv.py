"""Write Debian's `fortunes` as a labelled corpus: one `category<TAB>text` line per fortune.

    python scripts/fortunes_tsv.py OUT.tsv [--categories computers,food,law] [--max-chars 400]

A real text-classification set that installs offline (`apt-get install fortunes`): about 16,000
texts in some 40 categories (the file names under /usr/share/games/fortunes). Each fortune's
lines are joined with spaces; fortunes longer than --max-chars are left out (ASCII art, long
poems). Lines come out in a fixed, shuffled order (seed 0), so a head/tail split is a fair
train/dev split. The `cls` processor reads this format (corpus_format "tsv").
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path("/usr/share/games/fortunes")


def fortunes(path: Path) -> list[str]:
    """The texts of one fortune file: entries separated by lines holding only '%'."""
    text = path.read_text(encoding="utf-8", errors="replace")
    entries, current = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            entries.append(" ".join(" ".join(current).split()))
            current = []
        else:
            current.append(line)
    entries.append(" ".join(" ".join(current).split()))
    return [e for e in entries if e]


def categories(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix == "" and
                  (root / f"{p.name}.dat").exists())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--categories", default="", help="comma-separated names (default: all)")
    ap.add_argument("--max-chars", type=int, default=400)
    ap.add_argument("--root", type=Path, default=ROOT)
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} not found; install Debian's fortunes: apt-get install fortunes",
              file=sys.stderr)
        return 1
    wanted = [c for c in args.categories.split(",") if c]
    files = {p.name: p for p in categories(args.root)}
    unknown = [c for c in wanted if c not in files]
    if unknown:
        print(f"error: unknown categories {', '.join(unknown)}; available: {', '.join(files)}",
              file=sys.stderr)
        return 1
    rows = [(name, text) for name in (wanted or list(files))
            for text in fortunes(files[name]) if len(text) <= args.max_chars]
    random.Random(0).shuffle(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for name, text in rows:
            f.write(f"{name}\t{text.replace(chr(9), ' ')}\n")
    tmp.replace(args.out)
    print(f"{len(rows)} fortunes in {len({n for n, _ in rows})} categories -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
