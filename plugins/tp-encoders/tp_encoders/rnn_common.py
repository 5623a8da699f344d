"""Shared machinery of the recurrent encoders (`lstm`, `gru`, `bilstm`, `birnn`).

Padding: batches are right-padded (mask True on a prefix of each row). Each row is packed to its
length (pack_padded_sequence, enforce_sorted=False), so a recurrent cell never steps over padding
and appending padding changes nothing at real positions; outputs at pad positions are zero.

The bidirectional encoders are two independent stacks, one reading left to right and one right
to left (ELMo's biLM), not torch's stacked `bidirectional=True`: there every layer above the first
mixes both directions, so its "forward" half would see the future.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from tpcli.errors import TpError
from tpcli.model.module import BuildContext, ModuleConfig

Cell = Literal["lstm", "gru", "rnn"]
CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class RnnConfig(ModuleConfig):
    """Options every recurrent encoder has."""

    layers: int = Field(2, ge=1, le=64, description="stacked recurrent layers (per direction)")
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="dropout between stacked layers (None: model dropout)"
    )


def make_rnn(cell: str, input_size: int, hidden_size: int, config: RnnConfig,
             ctx: BuildContext) -> nn.RNNBase:
    drop = ctx.dropout if config.dropout is None else config.dropout
    # torch applies `dropout` after every layer but the last; with one layer it would only warn
    return CELLS[cell](input_size, hidden_size, num_layers=config.layers, batch_first=True,
                       dropout=drop if config.layers > 1 else 0.0)


def lengths_of(mask: torch.Tensor | None, name: str) -> torch.Tensor | None:
    """mask (B, T) True = real -> lengths (B,), or None when there is no padding."""
    if mask is None or bool(mask.all()):
        return None
    mask = mask.bool()
    lengths = mask.sum(dim=1)  # (B,)
    prefix = torch.arange(mask.shape[1], device=mask.device) < lengths[:, None]  # (B, T)
    if not torch.equal(prefix, mask):
        raise TpError(f"encoder {name}: the attention mask is not right-padded",
                      hint="recurrent encoders need the real tokens first in each row, then padding")
    return lengths


def run_rnn(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """x (B, T, Hin) -> (B, T, Hout), stepping only over each row's first `lengths` tokens."""
    if lengths is None:
        return rnn(x)[0]
    # a row without any real token still needs one step to pack; its output is zeroed by the caller
    packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True,
                                  enforce_sorted=False)
    out, _ = rnn(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each row's real prefix, leave the padding where it is. # (B, T, H); an involution."""
    if lengths is None:
        return x.flip(1)
    t = torch.arange(x.shape[1], device=x.device)  # (T,)
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, T)
    return x.gather(1, idx.unsqueeze(-1).expand_as(x))


def zero_padding(y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return y if mask is None else y * mask.unsqueeze(-1).to(y.dtype)


class UniRnnEncoder(nn.Module):
    """One left-to-right stack of `cell` with hidden size H. # (B, T, E) -> (B, T, H)"""

    cell: str = "lstm"
    name: str = "lstm"
    # reads the embeddings at their own width (a factorized embedding_size feeds the first
    # layer directly, as TencentPretrain's RNNs read emb_size; the model adds no projection)
    reads_embedding_width = True

    def __init__(self, config: RnnConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.rnn = make_rnn(self.cell, ctx.embed_dim, ctx.hidden_size, config, ctx)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, H), mask (B, T) True = real token -> (B, T, H), zero at padding."""
        lengths = lengths_of(mask, self.name)
        return zero_padding(run_rnn(self.rnn, x, lengths), mask)


class BiRnnEncoder(nn.Module):
    """Independent forward and backward stacks of H/2 each; output [fwd | bwd].
    # (B, T, E) -> (B, T, H)"""

    name: str = "birnn"
    reads_embedding_width = True  # as UniRnnEncoder

    def __init__(self, config: RnnConfig, ctx: BuildContext, cell: str) -> None:
        super().__init__()
        if ctx.hidden_size % 2 != 0:
            raise TpError(
                f"encoder {self.name}: hidden_size {ctx.hidden_size} is odd; each direction gets "
                "half of it",
                hint="choose an even model.hidden_size (e.g. 512)",
            )
        self.config = config
        half = ctx.hidden_size // 2
        self.fwd = make_rnn(cell, ctx.embed_dim, half, config, ctx)
        self.bwd = make_rnn(cell, ctx.embed_dim, half, config, ctx)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, H), mask (B, T) True = real token -> [fwd (B, T, H/2) | bwd (B, T, H/2)]."""
        lengths = lengths_of(mask, self.name)
        fwd = run_rnn(self.fwd, x, lengths)  # (B, T, H/2): position t has read tokens <= t
        bwd = reverse_padded(run_rnn(self.bwd, reverse_padded(x, lengths), lengths), lengths)
        return zero_padding(torch.cat([fwd, bwd], dim=-1), mask)  # (B, T, H)
