"""Speech embedding (S2T): filterbank frames -> a convolutional subsampler -> E-wide vectors,
scaled, plus sinusoidal positions.

    input_features (B, T, F), attention_mask (B, T)
      -> per layer i: Conv1d(kernel k_i, stride 2, padding k_i // 2) over time, GLU over channels
      -> (B, T', E), T' ~ T / 2 ** layers
      -> * scale (sqrt(E) with HF's scale_embedding) + sinusoid rows (B, T', E)

The semantics are HF `Speech2TextEncoder`'s (fairseq's `Conv1dSubsampler`): the intermediate
layers have `conv_channels` outputs, which GLU halves; the last has 2 E, halved to E. Padded
frames are zeroed before the first convolution (a batch padded with 0.0, the declared pad, is
unchanged); the later layers see the previous layer's output at padded positions, as HF and
fairseq do, so a row's result in a padded batch is exactly theirs.

The sequence this embedding makes is shorter than its input, so it says which of its positions
are real (`output_mask`): a row of L frames has, after a layer with kernel k,
(L + 2 (k // 2) - k) // 2 + 1 positions (Conv1d's length formula), exact for padded batches;
the encoder and the decoder's cross-attention use that mask. Positions are counted over the
real positions only, fairseq's layout: row `offset + rank` of the table (offset 2 = HF's
padding index + 1), and padded positions get a zero vector. The positions live here, not in a
separate `sinusoidalpos` entry, because they need the subsampled mask, which only this module
knows.
"""

from __future__ import annotations

import torch
from pydantic import Field, field_validator
from torch import nn
from torch.nn import functional as F

from tp_text.sinusoidalpos import sinusoid_table
from tpcli.data.batch import BatchKey
from tpcli.errors import TpError
from tpcli.model.module import BuildContext, ModuleConfig


class SpeechConfig(ModuleConfig):
    """Options of the `speech` embedding (HF Speech2TextConfig's names in the descriptions)."""

    features: int = Field(80, ge=1, description="filterbank bins per frame, the F of "
                          "input_features (HF input_feat_per_channel * input_channels)")
    kernel_sizes: list[int] = Field(
        [5, 5], min_length=1, description="kernel size of each stride-2 convolution; one per "
        "layer, so the sequence is ~2 ** len shorter (HF conv_kernel_sizes)")
    conv_channels: int = Field(
        1024, ge=2, description="output channels of the inner convolutions before GLU halves "
        "them; even (HF conv_channels)")
    scale: float = Field(1.0, gt=0.0, description="multiplier of the subsampled vectors: "
                         "sqrt(hidden_size) for HF's scale_embedding=true, 1 otherwise")
    positions: bool = Field(True, description="add sinusoidal positions (fairseq layout) over "
                            "the real subsampled positions; padding gets zeros")
    offset: int = Field(2, ge=0, description="table row of the first position (HF / fairseq: "
                        "the padding index + 1 = 2)")
    max_length: int = Field(6000, ge=1, description="table rows built up front (HF "
                            "max_source_positions); a longer input extends the table")

    @field_validator("kernel_sizes")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value):
            raise ValueError(f"kernel sizes must be >= 1, got {value}")
        return value

    @field_validator("conv_channels")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"conv_channels {value} is odd; GLU halves it, so it must be even")
        return value


def subsampled_lengths(lengths: torch.Tensor, kernel_sizes: list[int]) -> torch.Tensor:
    """Frames per row (B,) -> positions per row after the stride-2 convolutions (B,); a row
    without frames has no positions (an even kernel would make one out of padding alone)."""
    for k in kernel_sizes:
        out = torch.div(lengths + 2 * (k // 2) - k, 2, rounding_mode="floor") + 1
        lengths = torch.where(lengths > 0, out, torch.zeros_like(out))
    return lengths


class SpeechEmbedding(nn.Module):
    """input_features (B, T, F) -> (B, T', E): conv subsampler, scale, sinusoidal positions."""

    Config = SpeechConfig

    def __init__(self, config: SpeechConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        e = ctx.embed_dim
        n = len(config.kernel_sizes)
        ins = [config.features] + [config.conv_channels // 2] * (n - 1)
        outs = [config.conv_channels] * (n - 1) + [2 * e]
        self.convs = nn.ModuleList(
            nn.Conv1d(i, o, kernel_size=k, stride=2, padding=k // 2)
            for i, o, k in zip(ins, outs, config.kernel_sizes))
        self.dim = e
        if config.positions and e < 4:
            raise TpError(f"embedding speech: embedding size {e} is too small for sinusoidal "
                          "positions", hint="use hidden_size >= 4, or set "
                          "model.embedding.speech.positions=false")
        table = sinusoid_table(config.max_length, e) if config.positions else torch.zeros(0, e)
        self.register_buffer("table", table, persistent=False)
        self.inputs: tuple[BatchKey, ...] = (BatchKey(
            "input_features", "float32", ("T", config.features), pad=0.0,
            mask="attention_mask", unit="frames",
            description="log-mel filterbank frames (T frames of F bins), normalised"),)

    def output_mask(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T') bool, True = a real position of the subsampled sequence: each row's frames
        (its attention_mask; all T without one) through the convolutions' length formula."""
        self._check(inputs)
        feats = inputs["input_features"]
        b, t = feats.shape[:2]
        mask = inputs.get("attention_mask")
        frames = mask.long().sum(dim=1) if mask is not None else torch.full(
            (b,), t, dtype=torch.long, device=feats.device)  # (B,)
        lengths = subsampled_lengths(frames, self.config.kernel_sizes)  # (B,)
        width = int(subsampled_lengths(torch.tensor([t]), self.config.kernel_sizes))  # T'
        return torch.arange(width, device=feats.device)[None, :] < lengths[:, None]  # (B, T')

    def _check(self, inputs: dict[str, torch.Tensor]) -> None:
        feats = inputs.get("input_features")
        if feats is None:
            raise TpError("embedding speech reads input_features, but the batch has none (it "
                          f"has {', '.join(sorted(inputs)) or 'nothing'})",
                          hint="use the speech data processor, which produces input_features")
        f = self.config.features
        if feats.dim() != 3 or feats.shape[2] != f:
            raise TpError(f"embedding speech: input_features have shape {tuple(feats.shape)}, "
                          f"expected (batch, frames, {f})",
                          hint=f"compute {f} filterbank bins per frame, or set "
                          f"model.embedding.speech.features to the data's")

    def _positions(self, mask: torch.Tensor) -> torch.Tensor:
        """mask (B, T') -> (B, T', E): row offset + rank for real positions, zeros for padding."""
        rows = self.config.offset + (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T')
        needed = self.config.offset + mask.shape[1]  # rows' bound from the shape: no host sync
        if needed > self.table.shape[0]:  # nothing is learned: a longer input grows the table
            self.table = sinusoid_table(needed, self.dim).to(self.table.device)
        return self.table[rows] * mask.unsqueeze(-1).to(self.table.dtype)  # (B, T', E)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        self._check(inputs)
        weight = self.convs[0].weight
        x = inputs["input_features"].to(weight.dtype)  # (B, T, F)
        mask = inputs.get("attention_mask")
        if mask is not None:  # padding frames contribute zeros, whatever the batch holds there
            x = x.masked_fill(~mask.bool().unsqueeze(-1), 0.0)
        x = x.transpose(1, 2)  # (B, F, T): Conv1d runs over the last axis
        for conv in self.convs:
            x = F.glu(conv(x), dim=1)  # (B, C_out / 2, T_i)
        x = x.transpose(1, 2)  # (B, T', E)
        if self.config.scale != 1.0:
            x = x * self.config.scale
        if not self.config.positions:
            return x
        return x + self._positions(self.output_mask(inputs)).to(x.dtype)  # (B, T', E)

