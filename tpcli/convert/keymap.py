"""A declarative key map between two state-dict layouts (Hugging Face <-> tp), both directions.

A converter is a list of rules; each rule names keys on both sides, so the same list converts
either way. Patterns are literal keys where `{i}` stands for a layer number::

    Rename("bert.encoder.layer.{i}.output.dense.weight", "stack.encoder.layers.{i}.ffn.fc2.weight")
    Concat(("...query.weight", "...key.weight", "...value.weight"), "...attn.qkv.weight")
    Tied("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight")
    Drop("bert.embeddings.position_ids")
    Transpose("h.{i}.mlp.c_fc.weight", "stack.encoder.layers.{i}.ffn.fc1.weight")  # Conv1D
    PadRows("bert.embeddings.token_type_embeddings.weight", "...seg.embedding.weight", before=1)

Conversion is strict: every source key must be consumed by a rule (or named in `ignore`), every
required rule must find its keys, and when the caller knows the keys the result must have
(`expected`), both the missing and the unexpected ones are reported, by name, in one error.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping, Protocol

import torch

from tpcli.errors import CheckpointError

Direction = Literal["hf_to_tp", "tp_to_hf"]
DIRECTIONS: tuple[str, ...] = ("hf_to_tp", "tp_to_hf")
StateDict = dict[str, torch.Tensor]


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)"))


def _matches(pattern: str, keys: Iterable[str]) -> list[tuple[str, dict[str, str]]]:
    """(key, placeholders) for each key the pattern matches fully, in layer order."""
    rx = _compile(pattern)
    found = [(k, m.groupdict()) for k in keys if (m := rx.fullmatch(k))]
    return sorted(found, key=lambda kv: int(kv[1].get("i", -1)))


@dataclass
class _Run:
    """The state of one conversion: the source, what has been used, what has been made."""

    src: Mapping[str, torch.Tensor]
    direction: Direction
    out: StateDict = field(default_factory=dict)
    consumed: set[str] = field(default_factory=set)
    missing: list[str] = field(default_factory=list)

    def take(self, key: str) -> torch.Tensor:
        if key in self.consumed:
            raise ValueError(f"key {key!r} is matched by two rules of the key map")
        self.consumed.add(key)
        return self.src[key]

    def pairs(self, hf: str, tp: str, optional: bool) -> list[tuple[str, str]]:
        """(source key, destination key) of a one-tensor rule, in this run's direction; a
        required pattern that matches nothing is noted as missing."""
        src, dst = (hf, tp) if self.direction == "hf_to_tp" else (tp, hf)
        found = _matches(src, self.src)
        if not found and not optional:
            self.missing.append(src)
        return [(key, dst.format(**groups)) for key, groups in found]

    def put(self, key: str, value: torch.Tensor) -> None:
        if key in self.out:
            raise ValueError(f"key {key!r} is produced by two rules of the key map")
        self.out[key] = value


class Rule(Protocol):
    def apply(self, run: _Run) -> None: ...


@dataclass(frozen=True)
class Rename:
    """One tensor, renamed. `optional`: the source may lack it (e.g. a pooler)."""

    hf: str
    tp: str
    optional: bool = False

    def apply(self, run: _Run) -> None:
        for key, out in run.pairs(self.hf, self.tp, self.optional):
            run.put(out, run.take(key))


@dataclass(frozen=True)
class Transpose:
    """One 2-D tensor, renamed and transposed: GPT-2's Conv1D stores (in, out), tp's nn.Linear
    (out, in). The result is a contiguous copy (savable); transposing twice is bit-identical."""

    hf: str
    tp: str
    optional: bool = False

    def apply(self, run: _Run) -> None:
        for key, out in run.pairs(self.hf, self.tp, self.optional):
            value = run.take(key)
            if value.dim() != 2:
                raise CheckpointError(f"{key} has shape {tuple(value.shape)}; Transpose needs 2-D",
                                      hint="is the key map for this architecture?")
            run.put(out, value.t().contiguous())


@dataclass(frozen=True)
class Concat:
    """Several HF tensors <-> one tp tensor, concatenated along `dim` (fused q, k, v).

    tp -> HF splits into `len(hf)` equal parts, or into `sizes` along `dim` when the parts differ
    (grouped-query attention: q has more rows than k and v); the parts are copies, so the result
    can be saved without shared storage. `orders` (dim 0 only): each HF part's rows are first
    reordered as in PermuteRows (None: as is), and put back on the way out: TencentPretrain's
    separate q, k, v with interleaved rotary rows <-> tp's fused qkv."""

    hf: tuple[str, ...]
    tp: str
    dim: int = 0
    optional: bool = False
    sizes: tuple[int, ...] | None = None
    orders: tuple[tuple[int, ...] | None, ...] | None = None

    def _order(self, k: int) -> tuple[int, ...] | None:
        return None if self.orders is None else self.orders[k]

    def apply(self, run: _Run) -> None:
        if run.direction == "hf_to_tp":
            found = _matches(self.hf[0], run.src)
            for _, groups in found:
                names = [p.format(**groups) for p in self.hf]
                absent = [n for n in names if n not in run.src]
                if absent:
                    run.missing.extend(absent)
                    continue
                parts = []
                for k, name in enumerate(names):
                    value, order = run.take(name), self._order(k)
                    if order is not None:
                        _check_order(name, value, order)
                        value = value[list(order)]
                    parts.append(value)
                run.put(self.tp.format(**groups), torch.cat(parts, self.dim))
        else:
            found = _matches(self.tp, run.src)
            for key, groups in found:
                value = run.take(key)
                if self.sizes is None:
                    parts = value.chunk(len(self.hf), dim=self.dim)
                elif sum(self.sizes) != value.shape[self.dim]:
                    raise CheckpointError(
                        f"{key} has shape {tuple(value.shape)}: {value.shape[self.dim]} rows along "
                        f"dim {self.dim}, but the config splits it into {list(self.sizes)}",
                        hint="the checkpoint does not match its config (heads, kv_heads?)")
                else:
                    parts = value.split(list(self.sizes), dim=self.dim)
                for k, (pattern, part) in enumerate(zip(self.hf, parts)):
                    order = self._order(k)
                    if order is not None:
                        part = part[_inverse(order)]
                    run.put(pattern.format(**groups), part.clone())
        if not found and not self.optional:
            run.missing.append(self.hf[0] if run.direction == "hf_to_tp" else self.tp)


@dataclass(frozen=True)
class PadRows:
    """One tensor whose tp copy has extra rows along dim 0: `before` rows ahead of HF's and
    `after` rows behind them. TencentPretrain's segment table keeps row 0 for padding before
    segments A and B; a vocabulary padded to a multiple of 64 for fast matmuls has rows HF lacks.

    HF -> tp adds the rows, filled with `fill`; tp -> HF cuts them off (they stand for ids HF
    never uses), so HF -> tp -> HF is bit-identical."""

    hf: str
    tp: str
    before: int = 0
    after: int = 0
    fill: float = 0.0
    optional: bool = False

    def apply(self, run: _Run) -> None:
        forward = run.direction == "hf_to_tp"
        for key, dst in run.pairs(self.hf, self.tp, self.optional):
            value = run.take(key)
            if forward:
                rows = [value.new_full((n, *value.shape[1:]), self.fill)
                        for n in (self.before, self.after)]
                out = torch.cat([rows[0], value, rows[1]], dim=0)
            else:
                if value.shape[0] <= self.before + self.after:
                    raise CheckpointError(
                        f"{key} has {value.shape[0]} rows; the key map cuts {self.before} before "
                        f"and {self.after} after them", hint="is the key map for this model?")
                out = value[self.before:value.shape[0] - self.after].clone()
            run.put(dst, out)


@dataclass(frozen=True)
class Tied:
    """An HF key that holds the same tensor as another HF key (BERT's decoder = word embedding).

    HF -> tp: consumed if present, after checking it really equals `same_as` (tp keeps one copy,
    so an untied checkpoint would silently lose weights). tp -> HF: emitted as `same_as`'s
    tensor; put it after the rule that makes `same_as`."""

    hf: str
    same_as: str

    def apply(self, run: _Run) -> None:
        if run.direction == "hf_to_tp":
            if self.hf in run.src:
                value = run.take(self.hf)
                other = run.src.get(self.same_as)
                if other is not None and not torch.equal(value, other):
                    raise CheckpointError(
                        f"{self.hf} differs from {self.same_as}: the checkpoint's weights are not "
                        "tied, and tp's model shares one tensor for both",
                        hint="set model.tie_weights=false and use a converter that maps both",
                    )
            return
        if self.same_as not in run.out:
            run.missing.append(self.same_as)
            return
        run.put(self.hf, run.out[self.same_as])


@dataclass(frozen=True)
class Reshape:
    """One tensor, renamed and reshaped: BART's `final_logits_bias` is (1, V), tp's lm bias (V,).

    `hf_shape` / `tp_shape` may hold one -1 (as `Tensor.reshape`). The result is a contiguous
    copy; reshaping back is bit-identical."""

    hf: str
    tp: str
    hf_shape: tuple[int, ...]
    tp_shape: tuple[int, ...]
    optional: bool = False

    def apply(self, run: _Run) -> None:
        shape = self.tp_shape if run.direction == "hf_to_tp" else self.hf_shape
        for key, dst in run.pairs(self.hf, self.tp, self.optional):
            value = run.take(key)
            try:
                out = value.reshape(shape).clone()
            except RuntimeError as e:
                raise CheckpointError(f"{key} has shape {tuple(value.shape)}, which cannot be "
                                      f"reshaped to {shape}",
                                      hint="is the key map for this architecture?") from e
            run.put(dst, out)


@dataclass(frozen=True)
class Drop:
    """HF keys tp has no use for (e.g. the `position_ids` buffer of old checkpoints)."""

    hf: str

    def apply(self, run: _Run) -> None:
        if run.direction == "hf_to_tp":
            for key, _ in _matches(self.hf, run.src):
                run.take(key)


def _listing(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def convert(
    state_dict: Mapping[str, torch.Tensor],
    rules: Iterable[Rule],
    direction: Direction,
    *,
    ignore: Iterable[str] = (),
    expected: Iterable[str] | None = None,
) -> StateDict:
    """Apply `rules` to `state_dict` in `direction`; strict (see the module docstring).

    ignore: glob patterns (`pooler.*`) of source keys deliberately left out (not converted).
    expected: the keys the result must have (e.g. a model's `state_dict().keys()`).
    Raises CheckpointError naming every unconsumed, missing and unexpected key."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    patterns = list(ignore)
    kept = {k: v for k, v in state_dict.items()
            if not any(fnmatch.fnmatchcase(k, p) for p in patterns)}
    run = _Run(kept, direction)
    for rule in rules:
        rule.apply(run)
    problems = []
    unconsumed = set(kept) - run.consumed
    if unconsumed:
        problems.append(f"keys no rule converts: {_listing(unconsumed)}")
    if run.missing:
        problems.append(f"keys the source lacks: {_listing(set(run.missing))}")
    if expected is not None:
        want = set(expected)
        if want - set(run.out):
            problems.append(f"keys the result lacks: {_listing(want - set(run.out))}")
        if set(run.out) - want:
            problems.append(f"keys the result should not have: {_listing(set(run.out) - want)}")
    if problems:
        side = "Hugging Face" if direction == "hf_to_tp" else "tp"
        raise CheckpointError(
            f"cannot convert this {side} state dict ({direction}):\n  - " + "\n  - ".join(problems),
            hint="is it the architecture the converter expects (e.g. a headless model: base=True)?",
        )
    return run.out


# ------------------------------------------------------------------------------ row orders, copies
# (TencentPretrain's layout: a segment table with its padding row first, rotary q/k rows in
# interleaved pairs, one relative-position table saved under several names)


def _inverse(order: tuple[int, ...]) -> list[int]:
    back = [0] * len(order)
    for j, i in enumerate(order):
        back[i] = j
    return back


def _check_order(key: str, value: torch.Tensor, order: tuple[int, ...]) -> None:
    if value.shape[0] != len(order):
        raise CheckpointError(f"{key} has {value.shape[0]} rows; the key map reorders "
                              f"{len(order)}", hint="is the key map for this model?")


@dataclass(frozen=True)
class PermuteRows:
    """One tensor whose rows come in another order: tp row j is the other side's row
    `order[j]`. TencentPretrain's segment table is (padding, A, B), tp's (A, B, padding):
    `order=(1, 2, 0)`. A permutation, so both directions are exact."""

    hf: str
    tp: str
    order: tuple[int, ...]
    optional: bool = False

    def apply(self, run: _Run) -> None:
        forward = run.direction == "hf_to_tp"
        index = list(self.order) if forward else _inverse(self.order)
        for key, dst in run.pairs(self.hf, self.tp, self.optional):
            value = run.take(key)
            _check_order(key, value, self.order)
            run.put(dst, value[index].clone())


def interleaved_to_half(heads: int, head_size: int) -> tuple[int, ...]:
    """The row order taking rotary q/k rows from interleaved pairs (x0, y0, x1, y1, ...: Meta's
    LLaMA, TencentPretrain) to the rotate-half layout (x0, x1, ..., y0, y1, ...: HF, tp):
    tp row (head n, half c, pair p) is row (n, p, c) of the interleaved weight."""
    half = head_size // 2
    return tuple(n * head_size + 2 * p + c
                 for n in range(heads) for c in range(2) for p in range(half))


@dataclass(frozen=True)
class Copies:
    """One tp tensor the other side saves under several names, in `groups` of keys (literal, no
    placeholders) that each hold one tensor: TencentPretrain's relative-position table, read by
    every layer (`encoder.transformer.N.relative_pos_emb...`, one shared module) and saved again
    as `encoder.relative_pos_emb...` by its conversion scripts.

    -> tp: the first group present is read (its copies must be equal); the other groups' keys are
    consumed unread. tp ->: the tensor is written under every name (one storage)."""

    groups: tuple[tuple[str, ...], ...]
    tp: str

    def apply(self, run: _Run) -> None:
        if run.direction == "hf_to_tp":
            chosen = next((g for g in self.groups if any(k in run.src for k in g)), None)
            if chosen is None:
                run.missing.append(self.groups[0][0])
                return
            absent = [k for k in chosen if k not in run.src]
            if absent:
                run.missing.extend(absent)
                return
            first = run.take(chosen[0])
            for key in chosen[1:]:
                if not torch.equal(run.take(key), first):
                    raise CheckpointError(f"{key} differs from {chosen[0]}: they are one shared "
                                          "table in the model, and tp keeps one copy",
                                          hint="is the checkpoint from this model?")
            for group in self.groups:
                for key in group:
                    if key in run.src and key not in run.consumed:
                        run.take(key)
            run.put(self.tp, first)
            return
        if self.tp not in run.src:
            run.missing.append(self.tp)
            return
        value = run.take(self.tp)
        for group in self.groups:
            for key in group:
                run.put(key, value)


@dataclass(frozen=True)
class ExtraRows:
    """One tensor whose other-side copy has `before` extra leading rows tp has no use for: a
    two-segment tp table written as TencentPretrain's three rows (padding first). tp -> other:
    the rows are added, filled with `fill`; other -> tp: they are cut off."""

    hf: str
    tp: str
    before: int = 1
    fill: float = 0.0
    optional: bool = False

    def apply(self, run: _Run) -> None:
        for key, dst in run.pairs(self.hf, self.tp, self.optional):
            value = run.take(key)
            if run.direction == "hf_to_tp":
                if value.shape[0] <= self.before:
                    raise CheckpointError(f"{key} has {value.shape[0]} rows; the key map cuts "
                                          f"{self.before}", hint="is the key map for this model?")
                run.put(dst, value[self.before:].clone())
            else:
                pad = value.new_full((self.before, *value.shape[1:]), self.fill)
                run.put(dst, torch.cat([pad, value], dim=0))
