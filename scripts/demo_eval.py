"""What `make demo`'s model learned: masked tokens of held-out sentences, against a unigram guess.

Every token of every held-out sentence (`scripts/pydoc_corpus.py --heldout`: sentences that appear
nowhere in the training corpus) is masked in turn, one [MASK] per copy of the sentence, and the
model's top-1 guess is scored: over all tokens, and over whole words (a token of letters, not a
'##' piece nor followed by one). The baseline always guesses the training corpus's most frequent
token (word): a unigram model's best single guess. Then the first held-out sentences whose masked
word it gets right, and the first it gets wrong, in corpus order.

    python scripts/demo_eval.py build/demo/run build/demo/heldout.txt build/demo/corpus.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tpcli import load_checkpoint


@dataclass(frozen=True)
class Item:
    """One masked token: the sentence's ids ([CLS] ... [SEP]) and the position masked."""

    sentence: int  # index into the held-out sentences
    ids: tuple[int, ...]
    pos: int
    word: bool  # a whole word of letters (not a '##' piece, not punctuation)

    @property
    def answer(self) -> int:
        return self.ids[self.pos]


def word_flags(ids: list[int], tok: Any) -> list[bool]:
    """For each token: is it a whole word of letters, not a '##' piece and not followed by one?
    (The rest of a split word is easy to guess, punctuation mostly easier still.)"""
    pieces = [tok.id_to_token(i) or "" for i in ids]
    return [piece.isalpha() and (p + 1 == len(pieces) or not pieces[p + 1].startswith("##"))
            for p, piece in enumerate(pieces)]


def make_items(sentences: list[str], tok: Any, max_len: int) -> list[Item]:
    """Every token of every sentence, masked in turn (a sentence longer than the model's
    sequence is cut)."""
    sp = tok.special_ids
    items = []
    for n, ids in enumerate(tok.encode_batch(sentences)):
        ids = ids[: max_len - 2]
        full = (sp["cls"], *ids, sp["sep"])
        items += [Item(n, full, p + 1, w) for p, w in enumerate(word_flags(ids, tok))]
    return items


def most_frequent(corpus: Path, tok: Any) -> tuple[int, int]:
    """(the most frequent token, the most frequent whole word) of the training corpus: the best
    single guesses of a unigram model."""
    lines = [ln for ln in corpus.read_text(encoding="utf-8").splitlines() if ln.strip()]
    tokens: Counter[int] = Counter()
    words: Counter[int] = Counter()
    for ids in tok.encode_batch(lines):
        tokens.update(ids)
        words.update(i for i, w in zip(ids, word_flags(ids, tok)) if w)
    return tokens.most_common(1)[0][0], words.most_common(1)[0][0]


@torch.no_grad()
def top_guesses(model: Any, tok: Any, items: list[Item], k: int, chunk: int = 128) -> torch.Tensor:
    """(N, k) the model's k best ids for each item's [MASK], best first."""
    mask_id, pad_id = tok.special_ids["mask"], tok.special_ids["pad"]
    out = []
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        width = max(len(it.ids) for it in part)
        ids = torch.full((len(part), width), pad_id, dtype=torch.long)
        for row, it in enumerate(part):
            ids[row, :len(it.ids)] = torch.tensor(it.ids)
            ids[row, it.pos] = mask_id
        batch = {"input_ids": ids, "segment_ids": torch.zeros_like(ids), "attention_mask": ids != pad_id}
        feats = model.features(batch)  # hidden (B, T, H)
        rows = feats.hidden[torch.arange(len(part)), torch.tensor([it.pos for it in part])]
        # only the masked rows go through the vocabulary projection: (B, 1, H) -> (B, 1, V)
        logits = model.targets["mlm"].predict(dataclasses.replace(feats, hidden=rows[:, None]),
                                              batch)[:, 0]
        out.append(logits.topk(k, dim=-1).indices)
    return torch.cat(out)


def show(it: Item, guesses: list[int], tok: Any) -> str:
    text = " ".join(s for s in (tok.decode(list(it.ids[1:it.pos])), "[MASK]",
                                tok.decode(list(it.ids[it.pos + 1:-1]))) if s)
    text = re.sub(r" ?_ ?", "_", text).replace("( )", "()")  # "_ _ init _ _ ( )": __init__()
    said = ", ".join(repr(tok.decode([g])) for g in guesses)
    return f"  {text}\n      answer {tok.decode([it.answer])!r}; model: {said}"


def report(what: str, right: torch.Tensor, answers: torch.Tensor, guess: int, tok: Any) -> str:
    return (f"  {what} ({len(answers):,}): model {right.float().mean():.1%}, always "
            f"{tok.decode([guess])!r} {(answers == guess).float().mean():.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="run folder (its last checkpoint) or a step-* folder")
    ap.add_argument("heldout", type=Path, help="held-out sentences, one a line")
    ap.add_argument("corpus", type=Path, help="the training corpus (for the unigram baseline)")
    ap.add_argument("--examples", type=int, default=6, help="sentences to show")
    args = ap.parse_args()
    loaded = load_checkpoint(args.checkpoint)
    tok, model = loaded.tokenizer, loaded.model
    sentences = [s for s in args.heldout.read_text(encoding="utf-8").splitlines() if s.strip()]
    items = make_items(sentences, tok, int(loaded.recipe.processor.options.seq_length))
    top = top_guesses(model, tok, items, k=3)
    answers = torch.tensor([it.answer for it in items])
    right = top[:, 0] == answers
    word = torch.tensor([it.word for it in items])
    top_token, top_word = most_frequent(args.corpus, tok)
    print(f"checkpoint {loaded.path} (step {loaded.step}): {len(sentences)} held-out sentences "
          "(none in the training corpus), each token masked in turn; top-1 accuracy against the "
          "unigram baseline (always the training corpus's most frequent one)")
    print(report("every token", right, answers, top_token, tok))
    print(report("whole words", right[word], answers[word], top_word, tok))
    # one masked word a sentence: its first whole word that the unigram guess would miss
    firsts: dict[int, int] = {}
    for i, it in enumerate(items):
        if it.word and it.answer != top_word:
            firsts.setdefault(it.sentence, i)
    hits = [i for i in firsts.values() if right[i]][: args.examples]
    misses = [i for i in firsts.values() if not right[i]][: max(1, args.examples // 3)]
    print(f"\nHeld-out sentences whose masked word it gets right (the first {len(hits)}; "
          "its top 3 guesses):")
    print("\n".join(show(items[i], top[i].tolist(), tok) for i in hits))
    print(f"... and the first {len(misses)} it gets wrong:")
    print("\n".join(show(items[i], top[i].tolist(), tok) for i in misses))


if __name__ == "__main__":
    main()
