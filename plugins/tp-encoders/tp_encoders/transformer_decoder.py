"""The transformer decoder of a seq2seq model: causal self-attention, cross-attention to the
encoder's output (the memory), feed-forward.

    post-norm (BART):  y = LN(y + attn(y));  y = LN(y + cross(y, mem));  y = LN(y + ffn(y))
    pre-norm (T5):     y = y + attn(LN(y));  y = y + cross(LN(y), mem);  y = y + ffn(LN(y));
                       LN at the end

Position options act on the self-attention only: T5's relative bias is unidirectional here (a
query sees only keys before it) and cross-attention has no position bias.

With a `KVCache` (incremental decoding, `tpcli.downstream.generate`) y is the new target tokens only: the
self-attention appends to its cache and the cross-attention projects the memory on the first
step only.
"""

from __future__ import annotations

import torch
from torch import nn

from tp_encoders.transformer import (
    LayerModules,
    cached_attention_inputs,
    TransformerOptions,
    check_options,
    layer_options,
    no_padding,
    position_modules,
    self_attention_inputs,
)
from tpcli.layers.attention import AttentionCache, KVCache
from tpcli.layers.masks import attention_mask
from tpcli.layers.norms import make_norm
from tpcli.layers.unpad import Rows, on_rows, real_rows
from tpcli.model.module import BuildContext


class TransformerDecoderLayer(LayerModules):
    """Self-attention, cross-attention to the memory, feed-forward. # (B, T', H) -> (B, T', H)"""

    cross_attention = True

    def forward(self, y: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                memory: torch.Tensor, memory_mask: torch.Tensor | None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: tuple[AttentionCache, AttentionCache] | None = None,
                rows: Rows | None = None) -> torch.Tensor:
        """y (B, T', H); mask: the self-attention SDPA mask; memory (B, T, H); memory_mask: the
        cross-attention SDPA mask (B, 1, 1, T) or None; cache: (self, cross) caches or None;
        rows: the real positions, the only ones the feed-forward block computes (`real_rows`)."""
        drop = self.dropout
        own, cross = cache if cache is not None else (None, None)
        if self.pre_norm:
            y = y + drop(self.attn(self.attn_norm(y), mask, is_causal=is_causal, rotary=rotary,
                                   cache=own))
            y = y + drop(self.cross(self.cross_norm(y), memory_mask, memory=memory, cache=cross))
            return on_rows(y, rows, lambda v, r: drop(self.ffn(self.ffn_norm(v)), r),
                           residual=True)
        y = self.attn_norm(y + drop(self.attn(y, mask, is_causal=is_causal, rotary=rotary,
                                              cache=own)))
        y = self.cross_norm(y + drop(self.cross(y, memory_mask, memory=memory, cache=cross)))
        return on_rows(y, rows, lambda v, r: self.ffn_norm(v + drop(self.ffn(v), r)),
                       residual=False)


class TransformerDecoder(nn.Module):
    """Transformer decoder (BART post-norm or T5 pre-norm) reading the encoder's output."""

    class Config(TransformerOptions):
        """The encoder's options minus `mask`: the decoder's self-attention is always causal."""

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        check_options(config, ctx, "decoder")
        self.config = config
        opts = layer_options(config, ctx)
        n = 1 if config.share_layers else config.layers  # shared: ONE layer, key layers.0.*
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(ctx.hidden_size, config.heads, config.ffn_size, **opts)
            for _ in range(n)
        )
        self.relative_bias, self.rotary = position_modules(config, ctx, bidirectional=False)
        self.final_norm = (
            make_norm(config.norm, ctx.hidden_size, ctx.norm_eps) if config.pre_norm else None
        )

    def forward(self, y: torch.Tensor, tmask: torch.Tensor | None, memory: torch.Tensor,
                memory_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """y (B, T', H), tmask (B, T') True = real token, memory (B, T, H), memory_mask (B, T)
        True = real token, position_ids (B, T') for rotary (default 0..T'-1) -> (B, T', H).
        With a `cache`, y is the new tokens and tmask covers all cache.length + T' of them."""
        if cache is None:
            self_mask, is_causal, rotary = self_attention_inputs(
                y, tmask, True, self.relative_bias, self.rotary, position_ids)
        else:
            self_mask, is_causal, rotary = cached_attention_inputs(
                y, tmask, True, self.relative_bias, self.rotary, position_ids, cache.length)
        if memory_mask is not None and no_padding(memory_mask):
            memory_mask = None  # no source padding: unmasked fast path
        cross_mask = attention_mask(memory_mask) if memory_mask is not None else None
        rows = real_rows(tmask) if cache is None else None  # feed-forward on real tokens only
        for i in range(self.config.layers):
            layer = self.layers[0 if self.config.share_layers else i]
            caches = (cache.layer(i), cache.cross(i)) if cache is not None else None
            y = layer(y, self_mask, is_causal, memory, cross_mask, rotary, caches, rows)
        if cache is not None:
            cache.length += y.shape[1]
        return self.final_norm(y) if self.final_norm is not None else y
