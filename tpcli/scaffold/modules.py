'''The module files `tp plugins new` writes for the model kinds: embedding, encoder, target.

Each text is a template: `__PKG__` (the Python package), `__NAME__` (the registry name) and
`__CLASS__` (the class-name stem) are replaced when it is written. Each module is real and
minimal: its pydantic `Config` (every option with a default, bounds and a description), a
docstring saying what it computes, and a forward that passes tp's module contract.
'''

EMBEDDING = '''"""`__NAME__` (embedding): token ids -> vectors, times a constant scale.

"Attention Is All You Need" (section 3.4) multiplies the token embedding by sqrt(width) so the
token signal is not drowned by the positional one. The width is `ctx.embed_dim` (hidden_size,
or `model.embedding_size` when a recipe factorizes the embedding as ALBERT does).

    input_ids (B, T) -> table (V, E) -> * scale -> (B, T, E)
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from tpcli.data.batch import BatchKey
from tpcli.model.module import BuildContext, ModuleConfig


class __CLASS__Embedding(nn.Module):
    """Token embedding times a constant scale (default sqrt(width))."""

    class Config(ModuleConfig):
        scale: float | None = Field(
            None, gt=0.0, description="output multiplier; None: sqrt(embedding width)")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.scale = config.scale if config.scale is not None else math.sqrt(ctx.embed_dim)
        self.embedding = nn.Embedding(ctx.vocab_size, ctx.embed_dim, padding_idx=ctx.pad_id)
        # what it reads from a batch: tp checks that a recipe's data provides it, and the
        # contract test builds this module's test inputs from it
        self.inputs = (BatchKey("input_ids", "int64", ("T",), pad=ctx.pad_id or 0,
                                mask="attention_mask", unit="tokens", high=ctx.vocab_size),)

    @property
    def word_weight(self) -> torch.Tensor:
        """The (V, E) vocabulary matrix, unscaled: what a tied output layer reads."""
        return self.embedding.weight

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.embedding(inputs["input_ids"]) * self.scale  # (B, T, E)
'''

ENCODER = '''\
"""`__NAME__` (encoder): a stack of residual blocks, each a causal depthwise convolution
over time followed by a position-wise MLP (pre-norm, as in ConvNeXt / gMLP-style mixers).

    x (B, T, H) -> [x + conv(norm(x)); x + mlp(norm(x))] * layers -> norm -> (B, T, H)

The convolution sees only the current and the `kernel_size - 1` previous positions, so the
encoder never reads the future: it suits a next-token target (`lm`) as well as a bidirectional
one. Padded positions are zeroed before each convolution so padding never leaks into a row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tpcli.model.module import BuildContext, ModuleConfig


class Block(nn.Module):
    """One residual block: causal depthwise conv, then an MLP, each after a LayerNorm."""

    def __init__(self, hidden: int, ffn: int, kernel: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.kernel = kernel
        self.norm1 = nn.LayerNorm(hidden, eps=eps)
        self.conv = nn.Conv1d(hidden, hidden, kernel, groups=hidden)  # depthwise, no padding
        self.norm2 = nn.LayerNorm(hidden, eps=eps)
        self.up = nn.Linear(hidden, ffn)
        self.down = nn.Linear(ffn, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x) * keep  # (B, T, H), padding zeroed
        h = F.pad(h.transpose(1, 2), (self.kernel - 1, 0))  # (B, H, k - 1 + T): left pad only
        x = x + self.drop(self.conv(h).transpose(1, 2))  # (B, T, H)
        return x + self.drop(self.down(F.gelu(self.up(self.norm2(x)))))


class __CLASS__Encoder(nn.Module):
    """Residual causal-convolution + MLP blocks; `layers`, `ffn_size` and `kernel_size`."""

    class Config(ModuleConfig):
        layers: int = Field(2, ge=1, le=256, description="number of residual blocks")
        ffn_size: int = Field(512, ge=1, description="inner width of each block's MLP")
        kernel_size: int = Field(3, ge=1, le=1024,
                                 description="positions each convolution sees (this one and the "
                                 "kernel_size - 1 before it)")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        h = ctx.hidden_size
        self.blocks = nn.ModuleList(
            Block(h, config.ffn_size, config.kernel_size, ctx.dropout, ctx.norm_eps)
            for _ in range(config.layers))
        self.norm = nn.LayerNorm(h, eps=ctx.norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # x (B, T, H); mask (B, T) bool, True = real token
        keep = torch.ones_like(x[..., :1]) if mask is None else mask[..., None].to(x.dtype)
        for block in self.blocks:
            x = block(x, keep)
        return self.norm(x)  # (B, T, H)
'''

TARGET = '''"""`__NAME__` (target): next-token prediction through a small MLP head.

    hidden (B, T, H) -> dense (H, H) -> gelu -> LayerNorm -> output (V, H) -> cross-entropy

Position t predicts token t + 1 of `input_ids` when that token is real (the batch's
`attention_mask`); the last position and positions followed by padding are not predicted. It
reads nothing but the input ids, so it works with any processor that provides them. Metrics:
`acc` (next-token accuracy) and `count` (predicted positions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

# IGNORE (-100) labels a position that is not predicted
from tpcli.data.batch import IGNORE, next_token_labels
from tpcli.errors import TpError
from tpcli.model.module import BuildContext, Features, TargetConfig, TargetOutput


class __CLASS__Target(nn.Module):
    """Next-token prediction with its own MLP head; metrics `acc` and `count`."""

    class Config(TargetConfig):
        label_smoothing: float = Field(0.0, ge=0.0, lt=1.0,
                                       description="label smoothing of the cross-entropy")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        h = ctx.hidden_size
        self.dense = nn.Linear(h, h)
        self.norm = nn.LayerNorm(h, eps=ctx.norm_eps)
        self.output = nn.Linear(h, ctx.vocab_size)

    def predict(self, features: Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if features.hidden is None:
            raise TpError("target __NAME__ needs hidden states from an encoder",
                          hint="give the model an encoder")
        return self.output(self.norm(F.gelu(self.dense(features.hidden))))  # (B, T, V)

    def forward(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        if "input_ids" not in batch:
            raise TpError("target __NAME__ needs `input_ids` in the batch",
                          hint="use a data processor that provides token ids")
        labels = next_token_labels(batch["input_ids"], batch.get("attention_mask"))  # (B, T)
        logits = self.predict(features, batch)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                               ignore_index=IGNORE, label_smoothing=self.config.label_smoothing)
        with torch.no_grad():
            real = labels != IGNORE
            count = real.sum()
            acc = ((logits.argmax(-1) == labels) & real).sum() / count.clamp(min=1)
        return TargetOutput(loss, {"acc": acc.float(), "count": count.float()})
'''
