"""Fixed sinusoidal position embedding (Transformer, S2T, fairseq). No parameters.

Layout (tensor2tensor / fairseq / HF `Speech2TextSinusoidalPositionalEmbedding.get_embedding`,
NOT the interleaved sin/cos of the Transformer paper's formula): with D = embedding dim,
h = D // 2 and frequencies w_i = 10000 ** (-i / (h - 1)), i = 0..h-1, row p is

    [sin(p w_0), ..., sin(p w_{h-1}), cos(p w_0), ..., cos(p w_{h-1})]  (+ one 0 when D is odd)

The table is a non-persistent buffer: it is rebuilt from the config, never saved in a state dict,
and grows when a longer sequence comes (nothing is learned, so no length is out of range).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from tpcli.errors import TpError
from tpcli.data.batch import BatchKey
from tpcli.model.module import BuildContext, ModuleConfig, sequence_length


def sinusoid_table(rows: int, dim: int) -> torch.Tensor:
    """(rows, dim) float32: first half sin, second half cos (see the module docstring)."""
    half = dim // 2
    step = math.log(10000.0) / (half - 1)
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -step)  # (h,)
    angle = torch.arange(rows, dtype=torch.float32)[:, None] * freq[None, :]  # (rows, h)
    table = torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)  # (rows, 2h)
    if dim % 2 == 1:
        table = torch.cat([table, torch.zeros(rows, 1)], dim=1)
    return table  # (rows, dim)


class SinusoidalPosEmbedding(nn.Module):
    """Sinusoidal positions: position_ids (or offset + 0..T-1) -> scale * table rows. # (B, T, E)"""

    class Config(ModuleConfig):
        max_length: int = Field(
            1024, ge=1, description="rows computed at build time (longest expected sequence + "
            "offset); a longer sequence extends the table, it is not an error")
        offset: int = Field(
            0, ge=0, description="row of the first position (HF Speech2Text / fairseq: 2, the "
            "padding index + 1)")
        padding_aware: bool = Field(
            False, description="number only real tokens (attention_mask) and give padding a zero "
            "vector (HF Speech2Text / fairseq); false: every slot is numbered 0..T-1")
        scale: float = Field(1.0, description="multiplier of the table (1: the table as is)")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        dim = int(getattr(ctx, "embed_dim", ctx.hidden_size))
        if dim < 4:  # h - 1 divides the log-frequency step: needs at least two sin columns
            raise TpError(f"embedding sinusoidalpos: embedding size {dim} is too small",
                          hint="a sinusoidal table needs an embedding size of at least 4")
        self.dim = dim
        self.inputs = (BatchKey("position_ids", "int64", ("T",), pad=0, optional=True,
                                high=config.max_length),)
        self.register_buffer("table", sinusoid_table(config.max_length, dim), persistent=False)

    def _rows(self, needed: int) -> torch.Tensor:
        """The table with at least `needed` rows, extended (and kept) when it is too short."""
        if needed > self.table.shape[0]:
            self.table = sinusoid_table(needed, self.dim).to(self.table.device, self.table.dtype)
        return self.table  # (rows, E)

    def forward(self, inputs: dict[str, torch.Tensor],
                sequence: torch.Tensor | None = None) -> torch.Tensor:
        s = self.config.scale
        position_ids = inputs.get("position_ids")
        if position_ids is not None:  # explicit rows of the table, used as given
            table = self._rows(int(position_ids.max()) + 1 if position_ids.numel() else 1)
            return s * table[position_ids]  # (B, T, E)
        b, t = sequence_length(inputs, sequence, "sinusoidalpos", fallback="input_ids")
        off = self.config.offset
        past = inputs.get("past_length")
        if past is not None:  # new tokens after `past` earlier ones (incremental decoding)
            off += int(past)
        table = self._rows(off + t)
        mask = inputs.get("attention_mask")
        if self.config.padding_aware and mask is not None:
            real = mask.long()  # (B, T)
            rows = off + (torch.cumsum(real, dim=1) - 1).clamp(min=0)  # (B, T): rank of the token
            return s * table[rows] * real.unsqueeze(-1).to(table.dtype)  # (B, T, E); padding: 0
        return (s * table[off:off + t]).unsqueeze(0).expand(b, t, -1)  # (B, T, E)
