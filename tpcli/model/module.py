"""The contracts between tp and its modules: what a plugin's classes receive and return.

Plugins import from here; tp's core never imports a plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

from tpcli.errors import TpError

if TYPE_CHECKING:
    import torch


class ModuleConfig(BaseModel):
    """Base of every module's options: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class TargetConfig(ModuleConfig):
    """Base of every target's options; `weight` scales its loss in the multi-task sum."""

    weight: float = Field(1.0, ge=0.0, description="weight of this target's loss in the total")


@dataclass
class BuildContext:
    """Model-wide facts a module is built with (from the recipe's model section and tokenizer)."""

    hidden_size: int
    vocab_size: int
    dropout: float = 0.1
    norm_eps: float = 1e-12
    init_std: float = 0.02
    special_ids: dict[str, int] = field(default_factory=dict)
    stream: str = ""  # "", "stream_0", "stream_1", or "tgt" for the target-embedding side
    embedding_size: int | None = None  # ALBERT's factorized embedding width (None: hidden_size)
    # a dual-stream model's width of each stream ({"stream_0": 512, "stream_1": 768}: CLIP's
    # text and image towers), what a target projecting both streams is sized by; {} otherwise
    stream_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def pad_id(self) -> int | None:
        return self.special_ids.get("pad")

    @property
    def embed_dim(self) -> int:
        """Width of the embedding modules' output (and of a tied vocabulary matrix)."""
        return self.embedding_size or self.hidden_size


@dataclass
class Features:
    """What targets see. `hidden` (B, T, H) is the last stack's output (the decoder's for seq2seq),
    `mask` (B, T) is True on real tokens, `pooled` (B, H) is set when the stack has a pooling;
    dual-stream models put one Features per stream in `streams`. A seq2seq model also gives the
    encoder's output as `memory` (B, S, H) with `memory_mask` (B, S) (a CTC target reads it)."""

    hidden: "torch.Tensor | None"
    mask: "torch.Tensor | None" = None
    pooled: "torch.Tensor | None" = None
    streams: tuple["Features", ...] = ()
    memory: "torch.Tensor | None" = None
    memory_mask: "torch.Tensor | None" = None


@dataclass(frozen=True)
class LastPositions:
    """A target's `read_positions` counted from the end of the sequence: `mask` (B, T') bool
    marks which of the LAST T' positions its loss reads (MIM: the masked patches, whatever an
    embedding puts in front of them). A plain (B, T') mask marks the first T'."""

    mask: "torch.Tensor"


@dataclass
class TargetOutput:
    """A target's result: the scalar `loss` and `metrics` (scalar tensors, e.g. `acc`, and the
    `count` of predictions they are averaged over)."""

    loss: "torch.Tensor"
    metrics: dict[str, "torch.Tensor"] = field(default_factory=dict)


class Tokenizer(Protocol):
    """What a registered tokenizer provides (see `tp_register_tokenizers`)."""

    Config: ClassVar[type[ModuleConfig]]

    @property
    def vocab_size(self) -> int: ...

    @property
    def special_ids(self) -> dict[str, int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...

    def fingerprint(self) -> str: ...

    def save(self, directory: str) -> None: ...

    @classmethod
    def from_saved(cls, directory: str) -> "Tokenizer": ...


def sequence_length(inputs: dict[str, "torch.Tensor"], sequence: "torch.Tensor | None",
                    name: str, fallback: str | None = None) -> tuple[int, int]:
    """(B, T) of the sequence the embeddings listed before `name` built (a class token
    included): what a position or segment embedding sizes itself by. Called alone (no
    `sequence`), the (B, T) of input `fallback` when given and present; else a TpError: `name`
    is listed first, with nothing before it to take a length from."""
    if sequence is not None:
        return int(sequence.shape[0]), int(sequence.shape[1])
    if fallback is not None and fallback in inputs:
        return int(inputs[fallback].shape[0]), int(inputs[fallback].shape[1])
    raise TpError(f"embedding {name} takes its length from the embeddings listed before it, "
                  "and it is listed first",
                  hint=f"list {name} after the embedding that reads the inputs, e.g. "
                  f"`embedding: [word, {name}]` or `[patch, {name}]`")


def options_of(cls: Any) -> list[dict[str, Any]]:
    """Each option of a module's Config: name, type, default, description (for `tp modules`)."""
    cfg = getattr(cls, "Config", None)
    if cfg is None:
        return []
    out = []
    for name, f in cfg.model_fields.items():
        ann = f.annotation
        if get_origin(ann) is Literal:  # show the allowed values, not just "Literal"
            type_name = " | ".join(repr(a) for a in get_args(ann))
        else:
            type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        default = ("(required)" if f.is_required()
                   else f.get_default(call_default_factory=True))  # a nested Config's defaults
        out.append(
            {"name": name, "type": type_name, "default": default, "description": f.description or ""}
        )
    return out
