"""Show a trained MLM's top predictions for each [MASK] in a sentence (uses tp's Python API).

    python scripts/fill_mask.py build/demo/run "the [MASK] statement raises an exception."
"""

from __future__ import annotations

import argparse

import torch

from tpcli import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="run folder (its last checkpoint) or a step-* folder")
    ap.add_argument("text", nargs="+", help="sentences with [MASK] tokens")
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args()
    loaded = load_checkpoint(args.checkpoint)
    tok, model = loaded.tokenizer, loaded.model
    sp = tok.special_ids
    print(f"checkpoint {loaded.path} (step {loaded.step})")
    for text in args.text:
        pieces = text.split("[MASK]")
        ids = [sp["cls"]]
        for i, piece in enumerate(pieces):
            ids += tok.encode_batch([piece])[0] if piece.strip() else []
            if i < len(pieces) - 1:
                ids.append(sp["mask"])
        ids.append(sp["sep"])
        batch = {"input_ids": torch.tensor([ids]), "segment_ids": torch.zeros(1, len(ids), dtype=torch.long),
                 "attention_mask": torch.ones(1, len(ids), dtype=torch.bool)}
        logits = model.predict(batch)["mlm"][0]  # (T, V)
        print(f"\n{text}")
        for pos in [i for i, t in enumerate(ids) if t == sp["mask"]]:
            probs = logits[pos].softmax(-1)
            top = probs.topk(args.top)
            guesses = ", ".join(f"{tok.decode([int(i)])!r} {float(p):.2f}"
                                for p, i in zip(top.values, top.indices))
            print(f"  [MASK] at {pos}: {guesses}")


if __name__ == "__main__":
    main()
