"""The transformer encoder: BERT's post-norm stack or GPT-2's pre-norm stack with a final norm.

    post-norm (BERT):  x = LN(x + drop(attn(x)));      x = LN(x + drop(ffn(x)))
    pre-norm (GPT-2):  x = x + drop(attn(LN(x)));      x = x + drop(ffn(LN(x)));  LN at the end
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from tpcli.errors import TpError
from tpcli.layers.attention import MultiHeadAttention
from tpcli.layers.ffn import Activation, FeedForward
from tpcli.layers.masks import attention_mask
from tpcli.module import BuildContext, ModuleConfig


class TransformerLayer(nn.Module):
    """One self-attention + feed-forward block. # (B, T, H) -> (B, T, H)"""

    def __init__(self, hidden_size: int, heads: int, ffn_size: int, *, activation: str,
                 dropout: float, attention_dropout: float, bias: bool, pre_norm: bool,
                 eps: float) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.attn = MultiHeadAttention(hidden_size, heads, dropout=attention_dropout, bias=bias)
        self.attn_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.ffn = FeedForward(hidden_size, ffn_size, activation, bias=bias)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.dropout(self.attn(self.attn_norm(x), mask, is_causal=is_causal))
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.attn_norm(x + self.dropout(self.attn(x, mask, is_causal=is_causal)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class TransformerEncoder(nn.Module):
    """Transformer encoder (BERT post-norm or GPT-2 pre-norm; fully visible or causal)."""

    class Config(ModuleConfig):
        layers: int = Field(12, ge=1, le=1024, description="number of transformer layers")
        heads: int = Field(12, ge=1, description="attention heads (must divide hidden_size)")
        ffn_size: int = Field(3072, ge=1, description="inner size of the feed-forward block")
        activation: Activation = Field("gelu", description="feed-forward activation")
        pre_norm: bool = Field(
            False, description="False: BERT post-norm; True: GPT-2 pre-norm plus a final norm"
        )
        mask: Literal["fully_visible", "causal"] = Field(
            "fully_visible", description="fully_visible (BERT) or causal (GPT-2, left-to-right)"
        )
        attention_dropout: float | None = Field(
            None, ge=0.0, lt=1.0, description="dropout on attention weights (None: model dropout)"
        )
        bias: bool = Field(True, description="biases in the attention and feed-forward Linears")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        if ctx.hidden_size % config.heads != 0:
            raise TpError(
                f"encoder transformer: hidden_size {ctx.hidden_size} is not divisible by "
                f"heads {config.heads}",
                hint="choose model.encoder.heads among the divisors of model.hidden_size "
                "(e.g. 12 heads for 768)",
            )
        self.config = config
        attn_drop = ctx.dropout if config.attention_dropout is None else config.attention_dropout
        self.layers = nn.ModuleList(
            TransformerLayer(
                ctx.hidden_size, config.heads, config.ffn_size, activation=config.activation,
                dropout=ctx.dropout, attention_dropout=attn_drop, bias=config.bias,
                pre_norm=config.pre_norm, eps=ctx.norm_eps,
            )
            for _ in range(config.layers)
        )
        # pre-norm leaves the residual stream un-normalised; GPT-2 normalises it once at the end
        self.final_norm = (
            nn.LayerNorm(ctx.hidden_size, eps=ctx.norm_eps) if config.pre_norm else None
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, H), mask (B, T) True = real token -> (B, T, H)."""
        causal = self.config.mask == "causal"
        if mask is not None and bool(mask.all()):
            mask = None  # no padding: let SDPA take its unmasked (or is_causal) fast path
        attn_mask = attention_mask(mask, causal) if mask is not None else None
        is_causal = causal and attn_mask is None
        for layer in self.layers:
            x = layer(x, attn_mask, is_causal)
        return self.final_norm(x) if self.final_norm is not None else x
