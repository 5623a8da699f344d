"""Entity-level scores for sequence labelling (NER, chunking), as conlleval and seqeval count.

A tag is `<prefix><type>` with prefix B, I, E, S or O (`B-PER`, `I-LOC`, `O`); IOB1, IOB2/BIO and
IOBES sequences all decode with the same rules. Ill-formed sequences decode the conlleval way
rather than being rejected, because a model's raw output is often ill-formed and the published
numbers were counted that way: an `I-X` with no `B-X` before it starts an entity, and a change
of type inside a span ends one entity and starts another. An entity counts as correct only when
its type, start and end all match a gold entity.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from tpcli.errors import DataError
from tpcli.metrics._common import check_lengths, f_score, safe_div

Entity = tuple[str, int, int]  # (type, start, end), end inclusive


def _split(tag: str) -> tuple[str, str]:
    """`B-PER` -> ('B', 'PER'); a bare prefix (`O`, `B`) has type '_'."""
    if not tag:
        raise DataError(
            "empty string in a tag sequence",
            hint="every token needs a tag such as 'O', 'B-PER' or 'I-PER'; check the label map.",
        )
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Does the entity open at the previous token stop before this one?"""
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Does an entity open at this token?"""
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True  # an I/E with nothing open: conlleval starts an entity here
    return tag not in ("O", ".") and prev_type != type_


def get_entities(tags: Sequence[str] | Sequence[Sequence[str]]) -> list[Entity]:
    """Entities of one tag sequence as (type, start, end) with `end` inclusive.

    Given a list of sentences, they are joined with an `O` between each, so offsets run across
    the whole corpus (seqeval's convention) and no entity spans two sentences.
    """
    flat: list[str] = []
    if any(not isinstance(t, str) for t in tags):
        for sent in tags:
            flat.extend(sent)
            flat.append("O")
    else:
        flat = list(tags)  # type: ignore[arg-type]
    entities: list[Entity] = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, raw in enumerate(flat + ["O"]):  # the trailing O closes a final open entity
        tag, type_ = _split(raw)
        if _ends(prev_tag, tag, prev_type, type_):
            entities.append((prev_type, begin, i - 1))
        if _starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return entities


def entity_scores(
    pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """Micro precision / recall / F1 over entities, and the same per entity type.

    Returns {"precision", "recall", "f1", "per_type": {type: {"precision", "recall", "f1",
    "support"}}}, with support the number of gold entities of that type. Matches seqeval's
    precision_score / recall_score / f1_score / classification_report in their default mode;
    a zero denominator gives 0.0.
    """
    check_lengths(len(pred_tags), len(gold_tags), "entity_scores (sentences)")
    for i, (p, g) in enumerate(zip(pred_tags, gold_tags)):
        if len(p) != len(g):
            raise DataError(
                f"entity_scores: sentence {i} has {len(p)} predicted tags but {len(g)} gold tags",
                hint="predict one tag per token; when sub-word tokens were merged back to words, "
                "check that every word kept exactly one tag.",
            )
    pred = set(get_entities([list(s) for s in pred_tags]))
    gold = set(get_entities([list(s) for s in gold_tags]))
    hit = pred & gold
    n_hit, n_pred, n_gold = (Counter(e[0] for e in s) for s in (hit, pred, gold))
    per_type: dict[str, dict[str, float]] = {}
    for t in sorted(set(n_pred) | set(n_gold)):
        p, r = safe_div(n_hit[t], n_pred[t]), safe_div(n_hit[t], n_gold[t])
        per_type[t] = {"precision": p, "recall": r, "f1": f_score(p, r), "support": n_gold[t]}
    p, r = safe_div(len(hit), len(pred)), safe_div(len(hit), len(gold))
    return {"precision": p, "recall": r, "f1": f_score(p, r), "per_type": per_type}
