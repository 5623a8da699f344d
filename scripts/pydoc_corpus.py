"""Write Python's own documentation (pydoc_data.topics, present in every CPython) as a corpus.

Format: one sentence per line, a blank line between documents (one document per help topic),
which is what the `bert` processor reads. `--documents` writes one document per line instead.

    python scripts/pydoc_corpus.py build/demo/corpus.txt
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from pydoc_data.topics import topics

DECOR = re.compile(r"^[*=~^+-]{3,}$")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")


def sentences(text: str) -> list[str]:
    # drop the reST underlines ("*****", "=====") that frame each topic's title
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not DECOR.match(ln.strip())]
    flat = " ".join(lines)
    return [s.strip() for s in SENTENCE_END.split(flat) if len(s.strip()) > 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--documents", action="store_true", help="one document per line")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for name in sorted(topics):
            sents = sentences(topics[name])
            if not sents:
                continue
            if args.documents:
                f.write(" ".join(sents) + "\n")
            else:
                f.write("\n".join(sents) + "\n\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes, {len(topics)} topics)")


if __name__ == "__main__":
    main()
