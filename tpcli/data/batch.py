"""Batch keys: what a processor's examples hold and what a module reads, declared, not assumed.

A processor's dataset declares the keys of its examples (`BatchKey`: name, dtype, per-example
shape, how the key is padded and counted); an embedding declares the keys it reads the same way.
`collate` pads and stacks examples by those declarations, `count_units` counts what tokens/s
reports (tokens, patches, frames, images), and the module contract test builds a module's inputs
from them. Nothing here knows a modality: `input_ids`, `pixel_values` and `input_features` are
only names.

Shapes are per example, without the batch dimension. An int is a fixed size; a string names a
size that varies from example to example ("T": a sequence's length, "F": frames) and is padded
to the longest of the batch with `pad`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from tpcli.errors import PluginError

IGNORE = -100  # the label of a position that is not predicted (torch's cross-entropy default)


def next_token_labels(input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """input_ids (B, T) -> labels (B, T): position t predicts token t+1 when that one is real
    (`mask` (B, T), nonzero = real; None: all real), else IGNORE; the last position never."""
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, :-1] = input_ids[:, 1:]
    if mask is not None:
        real_next = torch.zeros_like(labels, dtype=torch.bool)
        real_next[:, :-1] = mask[:, 1:].bool()
        labels = labels.masked_fill(~real_next, IGNORE)
    return labels  # (B, T)


@dataclass(frozen=True)
class BatchKey:
    """One key of a batch.

    - ``name``: the key (``input_ids``, ``pixel_values``, ``mlm_labels``, ...).
    - ``dtype``: a torch dtype name (``int64``, ``float32``, ``bool``, ``uint8``, ...).
    - ``shape``: per-example shape; ints are fixed, strings name sizes that vary per example.
    - ``pad``: the fill of padded positions (required when a size varies).
    - ``mask``: the key of the ``(B, T)`` bool mask (True = real) collate adds for the first
      varying size, e.g. ``attention_mask`` for ``input_ids``.
    - ``unit``: what one real position counts as for throughput (``tokens``, ``patches``,
      ``frames``); for a fixed-size key, one example counts ``per_example`` units.
    - ``low`` / ``high``: the valid range of values, ``[low, high)`` (ids below a vocabulary
      size); the contract test draws inputs from it.
    - ``optional``: a module reads the key when present and works without it.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...] = ()
    pad: float | int | bool | None = None
    mask: str | None = None
    unit: str | None = None
    per_example: int = 1
    low: float | int | None = None
    high: float | int | None = None
    optional: bool = False
    description: str = field(default="", compare=False)

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise PluginError(f"batch key {self.name!r} declares dtype {self.dtype!r}, which is "
                              "not a torch dtype name (int64, float32, bool, uint8, ...)")
        return dtype

    @property
    def varying(self) -> tuple[int, ...]:
        """Positions (in the per-example shape) of the sizes that vary per example."""
        return tuple(i for i, d in enumerate(self.shape) if isinstance(d, str))


def declared(keys: Sequence[BatchKey]) -> dict[str, BatchKey]:
    """The keys by name; a name declared twice is a PluginError."""
    out: dict[str, BatchKey] = {}
    for k in keys:
        if k.name in out and out[k.name] != k:
            raise PluginError(f"batch key {k.name!r} is declared twice, differently: "
                              f"{out[k.name]} and {k}")
        out[k.name] = k
    return out


def collate(examples: list[dict[str, torch.Tensor]], keys: Sequence[BatchKey],
            source: str = "the processor") -> dict[str, torch.Tensor]:
    """Stack `examples` into one batch by their declared `keys`: a fixed-shape key is stacked,
    a varying one padded to the longest example with its `pad`, and its `mask` (B, T) added.
    An example key that is not declared is a PluginError naming it and `source`."""
    if not examples:
        raise ValueError("collate needs at least one example")
    by_name = declared(keys)
    batch: dict[str, torch.Tensor] = {}
    for name in examples[0]:
        key = by_name.get(name)
        if key is None:
            raise PluginError(f"{source} produced the batch key {name!r} but does not declare it "
                              f"(it declares {', '.join(sorted(by_name)) or 'nothing'})",
                              hint="add a BatchKey for it to the dataset's batch_keys")
        batch[name] = _stack(key, [e[name] for e in examples], source)
        if key.mask is not None and key.varying:
            axis = key.varying[0]
            lengths = torch.tensor([e[name].shape[axis] for e in examples])  # (B,)
            width = batch[name].shape[axis + 1]
            batch[key.mask] = torch.arange(width)[None, :] < lengths[:, None]  # (B, T)
    return batch


def _stack(key: BatchKey, values: list[torch.Tensor], source: str) -> torch.Tensor:
    first = values[0]
    if first.dim() != len(key.shape):
        raise PluginError(f"{source}: batch key {key.name!r} has {first.dim()} dimension(s) per "
                          f"example, but its declared shape {key.shape} has {len(key.shape)}")
    if not key.varying:
        for v in values[1:]:
            if v.shape != first.shape:
                raise PluginError(f"{source}: batch key {key.name!r} is declared fixed-size "
                                  f"{key.shape} but examples have shapes {tuple(first.shape)} and "
                                  f"{tuple(v.shape)}")
        return torch.stack(values)
    if key.pad is None:
        raise PluginError(f"{source}: batch key {key.name!r} varies in size ({key.shape}) but "
                          "declares no pad value")
    size = [max(v.shape[i] for v in values) for i in range(first.dim())]
    out = torch.full((len(values), *size), key.pad, dtype=first.dtype)
    for row, v in enumerate(values):
        out[(row, *(slice(0, n) for n in v.shape))] = v
    return out


def count_units(batch: dict[str, torch.Tensor], keys: Sequence[BatchKey]) -> tuple[str, int]:
    """(unit, count) of the first declared key with a `unit`: the real positions of a varying
    key (from its mask when collate added one), `per_example` per example of a fixed one.
    ("examples", batch size) when no key declares a unit."""
    for key in keys:
        if key.unit is None:
            continue
        if key.name not in batch:  # no batch: the unit alone
            return key.unit, 0
        value = batch[key.name]
        if key.varying:
            mask = batch.get(key.mask) if key.mask else None
            if mask is not None:
                return key.unit, int(mask.sum())
            axis = key.varying[0] + 1
            return key.unit, int(value.shape[0] * value.shape[axis])
        return key.unit, int(value.shape[0]) * key.per_example
    first = next(iter(batch.values()), None)
    return "examples", int(first.shape[0]) if first is not None and first.dim() else 0


def example_inputs(keys: Sequence[BatchKey], batch: int, sizes: dict[str, int],
                   lengths: Sequence[int] | None, generator: torch.Generator
                   ) -> dict[str, torch.Tensor]:
    """A random batch that follows `keys` (what the contract test feeds a module): named sizes
    from `sizes`, the first varying size of row b cut to `lengths[b]` (the rest padded), values
    in [low, high). Masks are added for keys that name one."""
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        shape = [sizes[d] if isinstance(d, str) else d for d in key.shape]
        dtype = key.torch_dtype
        low = 0 if key.low is None else key.low
        if dtype == torch.bool:
            value = torch.rand((batch, *shape), generator=generator) < 0.5
        elif dtype.is_floating_point:
            high = 1.0 if key.high is None else key.high
            value = (torch.rand((batch, *shape), generator=generator) * (high - low) + low
                     ).to(dtype)
        else:
            high = (low + 10) if key.high is None else key.high
            value = torch.randint(int(low), int(high), (batch, *shape), generator=generator,
                                  dtype=dtype)
        if key.varying and lengths is not None:
            axis = key.varying[0] + 1
            real = torch.arange(value.shape[axis])[None, :] < torch.tensor(lengths)[:, None]
            view = [batch] + [1] * len(shape)
            view[axis] = value.shape[axis]
            if key.pad is not None:
                value = value.masked_fill(~real.reshape(view), key.pad)
            if key.mask is not None:
                out[key.mask] = real
        out[key.name] = value
    return out
