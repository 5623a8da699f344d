"""The transformer encoder: BERT's post-norm stack or GPT-2's pre-norm stack with a final norm,
and the options that make it T5's, ALBERT's or LLaMA's.

    post-norm (BERT):  x = LN(x + drop(attn(x)));      x = LN(x + drop(ffn(x)))
    pre-norm (GPT-2):  x = x + drop(attn(LN(x)));      x = x + drop(ffn(LN(x)));  LN at the end

T5 = rmsnorm + relative position bias + unscaled attention, no biases; LLaMA = rmsnorm + rotary +
gated silu FFN (+ grouped-query attention); ALBERT = BERT with one layer's weights shared by all.
T5 v1.1-small and T5-3B/11B also set `head_size`: their heads * head size is not hidden_size.
The position bias and the rotary tables are computed once per forward and shared by all layers.

ViT = GPT-2's pre-norm stack, fully visible. BEiT = ViT + q and v biases only (qkv_bias: qv) +
layer scale, x = x + g1 * drop(attn(LN(x))), x = x + g2 * drop(ffn(LN(x))), + a 2-D relative
bias over the patch grid (position: relative_2d), one table shared or one per layer; pooling by
mean, BEiT has no final norm (final_norm: false).

A causal stack decodes incrementally when given a `KVCache` (`tpcli.downstream.generate`): x holds only the
new tokens, the mask covers every token so far, and positions continue from `cache.length`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from tpcli.errors import TpError
from tpcli.layers.attention import AttentionCache, KVCache, MultiHeadAttention, QkvBias
from tpcli.layers.dropout import Dropout
from tpcli.layers.ffn import Activation, FeedForward
from tpcli.layers.masks import (attention_mask, block_mask, causal_mask, prefix_mask,
                                with_bias)
from tpcli.layers.norms import make_norm
from tpcli.layers.layer_scale import LayerScale
from tpcli.layers.positions import RelativePositionBias, RelativePositionBias2D, RotaryEmbedding
from tpcli.layers.unpad import Rows, on_rows, real_rows
from tpcli.model.module import BuildContext, ModuleConfig


PositionBias = RelativePositionBias | RelativePositionBias2D  # what a stack adds to its scores


class TransformerOptions(ModuleConfig):
    """Options shared by the transformer encoder and decoder."""

    layers: int = Field(12, ge=1, le=1024, description="number of transformer layers")
    heads: int = Field(
        12, ge=1, description="attention heads (must divide hidden_size unless head_size is set)"
    )
    head_size: int | None = Field(
        None, ge=1, description="channels per attention head (None: hidden_size / heads); "
        "heads * head_size may differ from hidden_size (T5 v1.1-small: 6 x 64 for 512, "
        "TencentPretrain's attention_head_size)"
    )
    ffn_size: int = Field(3072, ge=1, description="inner size of the feed-forward block")
    activation: Activation = Field("gelu", description="feed-forward activation")
    pre_norm: bool = Field(
        False, description="False: BERT post-norm; True: GPT-2 pre-norm plus a final norm"
    )
    attention_dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="dropout on attention weights (None: model dropout)"
    )
    bias: bool = Field(True, description="biases in the attention and feed-forward Linears")
    norm: Literal["layernorm", "rmsnorm"] = Field(
        "layernorm", description="layer norm (BERT, GPT-2) or RMSNorm without bias (T5, LLaMA)"
    )
    position: Literal["none", "relative", "rotary"] = Field(
        "none", description="positions inside attention: none (the embedding has them), "
        "relative (T5 bucketed bias) or rotary (RoPE, LLaMA)"
    )
    relative_buckets: int = Field(
        32, ge=4, description="T5 relative-position buckets (position=relative)"
    )
    relative_max_distance: int = Field(
        128, ge=2, description="distance from which all positions share the last bucket "
        "(position=relative)"
    )
    rotary_base: float = Field(10000.0, gt=1.0, description="RoPE frequency base (position=rotary)")
    ffn_gate: bool = Field(
        False, description="gated feed-forward fc2(act(gate x) * up x): SwiGLU with silu "
        "(LLaMA), GEGLU with gelu_tanh (T5 v1.1)"
    )
    kv_heads: int | None = Field(
        None, ge=1, description="key/value heads for grouped-query attention (None: heads)"
    )
    scale_attention: bool = Field(
        True, description="scale scores by 1/sqrt(head size); False for T5 (folded in weights)"
    )
    share_layers: bool = Field(
        False, description="ALBERT: one layer's weights applied `layers` times"
    )


def head_size(config: TransformerOptions, ctx: BuildContext) -> int:
    """Channels per attention head: `head_size`, or hidden_size / heads when it is None."""
    return ctx.hidden_size // config.heads if config.head_size is None else config.head_size


def check_options(config: TransformerOptions, ctx: BuildContext, kind: str) -> None:
    """User errors in the options, with the recipe path to fix. `kind`: encoder | decoder."""
    path = f"model.{kind}"
    if config.head_size is None and ctx.hidden_size % config.heads != 0:
        raise TpError(
            f"{kind} transformer: hidden_size {ctx.hidden_size} is not divisible by "
            f"heads {config.heads}",
            hint=f"choose {path}.heads among the divisors of model.hidden_size "
            f"(e.g. 12 heads for 768), or set {path}.head_size",
        )
    if config.kv_heads is not None and config.heads % config.kv_heads != 0:
        raise TpError(
            f"{kind} transformer: heads {config.heads} is not divisible by kv_heads "
            f"{config.kv_heads}",
            hint=f"choose {path}.kv_heads among the divisors of {path}.heads",
        )
    if config.position == "rotary" and head_size(config, ctx) % 2 != 0:
        raise TpError(
            f"{kind} transformer: rotary positions need an even head size, got "
            f"{head_size(config, ctx)}",
            hint=f"set an even {path}.head_size" if config.head_size is not None else
            f"change {path}.heads or model.hidden_size so that hidden_size / heads is even",
        )
    exact = config.relative_buckets // 4  # one bucket per distance below this (bidirectional)
    if config.position == "relative" and config.relative_max_distance <= exact:
        raise TpError(
            f"{kind} transformer: relative_max_distance {config.relative_max_distance} must be "
            f"larger than relative_buckets // 4 = {exact}",
            hint=f"T5 uses {path}.relative_buckets=32 and relative_max_distance=128",
        )


def layer_options(config: TransformerOptions, ctx: BuildContext) -> dict[str, Any]:
    """The plain keyword arguments of one layer (layers never see a config)."""
    return dict(
        activation=config.activation, dropout=ctx.dropout,
        attention_dropout=ctx.dropout if config.attention_dropout is None
        else config.attention_dropout,
        bias=config.bias, pre_norm=config.pre_norm, eps=ctx.norm_eps, norm=config.norm,
        kv_heads=config.kv_heads, scale_attention=config.scale_attention,
        ffn_gate=config.ffn_gate, head_dim=config.head_size,
    )


def position_modules(config: TransformerOptions, ctx: BuildContext, bidirectional: bool
                     ) -> tuple[RelativePositionBias | None, RotaryEmbedding | None]:
    """The stack's one relative-bias table (key `relative_bias.embedding.weight`) or rotary."""
    bias = rotary = None
    if config.position == "relative":
        bias = RelativePositionBias(config.heads, config.relative_buckets,
                                    config.relative_max_distance, bidirectional)
    elif config.position == "rotary":
        rotary = RotaryEmbedding(head_size(config, ctx), config.rotary_base)
    return bias, rotary


def no_padding(mask: torch.Tensor) -> bool:
    """True when a (B, T) mask on the CPU marks every token real. A mask on an accelerator counts
    as padded without looking (reading it would wait for the device every step): the training
    loop drops an all-real mask on the host before the batch moves."""
    return mask.device.type == "cpu" and bool(mask.all())


def self_attention_inputs(
    x: torch.Tensor, mask: torch.Tensor | None, causal: bool,
    relative_bias: PositionBias | None, rotary: RotaryEmbedding | None,
    position_ids: torch.Tensor | None,
) -> tuple[torch.Tensor | None, bool, tuple[torch.Tensor, torch.Tensor] | None]:
    """Once per forward: (SDPA mask or None, is_causal fast path, rotary cos/sin or None).

    x (B, T, H); mask (B, T) True = real token, or a ready (B, 1, T, T) bool mask;
    position_ids (B, T) (default 0..T-1).
    """
    t = x.shape[1]
    if mask is not None and mask.dim() == 4:  # already a full (B, 1, T, T) mask (prefix LM)
        attn_mask, is_causal = mask, False
    else:
        if mask is not None and no_padding(mask):
            mask = None  # no padding: let SDPA take its unmasked (or is_causal) fast path
        attn_mask = attention_mask(mask, causal) if mask is not None else None
        is_causal = causal and attn_mask is None
    if relative_bias is not None:
        if is_causal:  # SDPA takes no is_causal with a bias: spell the triangle out
            attn_mask, is_causal = causal_mask(t, t, x.device), False
        attn_mask = with_bias(attn_mask, relative_bias(t, t))  # (B | 1, heads, T, T) float
    cos_sin = None
    if rotary is not None:
        if position_ids is None:
            position_ids = torch.arange(t, device=x.device)[None]  # (1, T)
        cos_sin = rotary(position_ids, x.dtype)
    return attn_mask, is_causal, cos_sin


def cached_attention_inputs(
    x: torch.Tensor, mask: torch.Tensor | None, causal: bool,
    relative_bias: PositionBias | None, rotary: RotaryEmbedding | None,
    position_ids: torch.Tensor | None, past: int,
) -> tuple[torch.Tensor | None, bool, tuple[torch.Tensor, torch.Tensor] | None]:
    """`self_attention_inputs` for T new tokens after `past` cached ones (incremental decoding).

    x (B, T, H); mask (B, past + T) True = real token, or None; position_ids (B, T) of the new
    tokens for rotary (default past..past+T-1). SDPA's is_causal aligns its triangle top-left,
    wrong for T queries over past + T keys, so after the first step the triangle is spelled out
    (aligned at the end) and is_causal is always False.
    """
    if past == 0:  # the first step (the prompt) is an ordinary forward
        return self_attention_inputs(x, mask, causal, relative_bias, rotary, position_ids)
    t = x.shape[1]
    if mask is not None and no_padding(mask):
        mask = None
    if mask is not None:
        attn_mask = attention_mask(mask, causal, t_q=t)  # (B, 1, T | 1, past + T)
    elif causal and t > 1:
        attn_mask = causal_mask(t, past + t, x.device)  # (T, past + T)
    else:
        attn_mask = None  # one new token sees every key: nothing to mask
    if relative_bias is not None:
        attn_mask = with_bias(attn_mask, relative_bias(t, past + t, offset=past))
    cos_sin = None
    if rotary is not None:
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=x.device)[None]  # (1, T)
        cos_sin = rotary(position_ids, x.dtype)
    return attn_mask, False, cos_sin


def patch_grid(config: "TransformerEncoder.Config") -> tuple[int, int] | None:
    """The grid of a 2-D position bias (position=relative_2d), or None; user errors first."""
    if config.position != "relative_2d":
        return None
    if config.grid is None:
        raise TpError(
            "encoder transformer: position relative_2d needs the patch grid",
            hint="set model.encoder.grid to [image height / patch size, image width / patch "
            "size], e.g. [14, 14] for 224x224 images in 16x16 patches")
    if min(config.grid) < 1:
        raise TpError(f"encoder transformer: grid {list(config.grid)} has a side below 1",
                      hint="set model.encoder.grid to [image height / patch size, image width "
                      "/ patch size]")
    if config.mask != "fully_visible":
        raise TpError(
            f"encoder transformer: position relative_2d is for a fully visible encoder (an "
            f"image's patches see each other), not mask={config.mask}",
            hint="set model.encoder.mask=fully_visible, or another model.encoder.position")
    return config.grid


def check_grid_length(config: "TransformerEncoder.Config", length: int) -> None:
    """A sequence must be the grid's patches, after a class token or not."""
    h, w = config.grid or (0, 0)
    if length not in (h * w + 1, h * w):
        raise TpError(
            f"encoder transformer: position relative_2d over a {h}x{w} grid expects "
            f"{h * w + 1} positions (class token + {h * w} patches) or {h * w}, got {length}",
            hint="set model.encoder.grid to the patch embedding's grid: image_size / "
            "patch_size per side")


def query_rows(queries: torch.Tensor, length: int) -> Rows:
    """queries (B, n) positions of sequences of `length` -> their flat rows of (B length, H)."""
    b = queries.shape[0]
    offsets = torch.arange(0, b * length, length, device=queries.device)
    return Rows((queries + offsets[:, None]).reshape(-1), b * length)


class LayerModules(nn.Module):
    """The modules of a transformer layer: self-attention, cross-attention to a memory when the
    class sets `cross_attention` (the decoder's), feed-forward, each with its norm."""

    cross_attention: ClassVar[bool] = False

    def __init__(self, hidden_size: int, heads: int, ffn_size: int, *, activation: str,
                 dropout: float, attention_dropout: float, bias: bool, pre_norm: bool,
                 eps: float, norm: str = "layernorm", kv_heads: int | None = None,
                 scale_attention: bool = True, ffn_gate: bool = False,
                 qkv_bias: QkvBias | None = None, head_dim: int | None = None) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        attn: dict[str, Any] = dict(dropout=attention_dropout, bias=bias, kv_heads=kv_heads,
                                    scale=scale_attention, head_dim=head_dim)
        self.attn = MultiHeadAttention(hidden_size, heads, qkv_bias=qkv_bias, **attn)
        self.attn_norm = make_norm(norm, hidden_size, eps)
        if self.cross_attention:
            self.cross = MultiHeadAttention(hidden_size, heads, cross=True, **attn)
            self.cross_norm = make_norm(norm, hidden_size, eps)
        self.ffn = FeedForward(hidden_size, ffn_size, activation, bias=bias, gate=ffn_gate)
        self.ffn_norm = make_norm(norm, hidden_size, eps)
        self.dropout = Dropout(dropout)


class TransformerLayer(LayerModules):
    """One self-attention + feed-forward block. # (B, T, H) -> (B, T, H)

    `layer_scale` (BEiT, CaiT): each branch is multiplied by a learned per-channel factor
    starting at that value (keys `attn_scale.weight`, `ffn_scale.weight`); `relative_bias`: a
    position bias of this layer's own, added to the scores (BEiT without a shared table)."""

    def __init__(self, hidden_size: int, heads: int, ffn_size: int, *,
                 layer_scale: float | None = None,
                 relative_bias: RelativePositionBias2D | None = None, **options: Any) -> None:
        super().__init__(hidden_size, heads, ffn_size, **options)
        self.relative_bias = relative_bias
        self.attn_scale = LayerScale(hidden_size, layer_scale) if layer_scale is not None else None
        self.ffn_scale = LayerScale(hidden_size, layer_scale) if layer_scale is not None else None

    def _branch(self, y: torch.Tensor, scale: LayerScale | None, rows: Rows | None = None
                ) -> torch.Tensor:
        """A branch's output as the residual stream adds it: dropout, then the layer scale;
        rows: y holds only these rows (`tpcli.layers.unpad`)."""
        y = self.dropout(y, rows)
        return scale(y) if scale is not None else y

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: AttentionCache | None = None,
                queries: torch.Tensor | None = None,
                rows: Rows | None = None) -> torch.Tensor:
        """queries (B, n): only these positions' outputs (B, n, H); every position is still a
        key and a value, and dropout draws the masks of all positions and keeps theirs (the
        random stream of computing every row). rows: the real positions (`real_rows`): the
        feed-forward block runs on those only, padded positions keep their input."""
        if self.relative_bias is not None:  # the stack refuses causal masks with a layer bias
            mask = with_bias(mask, self.relative_bias(x.shape[1], x.shape[1]))
        attend = dict(is_causal=is_causal, rotary=rotary, cache=cache, queries=queries)
        picked = None if queries is None else query_rows(queries, x.shape[1])
        residual = x if queries is None else x.gather(
            1, queries[..., None].expand(-1, -1, x.shape[-1]))  # (B, n, H)
        if self.pre_norm:
            x = residual + self._branch(self.attn(self.attn_norm(x), mask, **attend),
                                        self.attn_scale, picked)
            if picked is not None:
                return x + self._ffn_pre(x, picked)
            return on_rows(x, rows, self._ffn_pre, residual=True)
        x = self.attn_norm(residual + self._branch(self.attn(x, mask, **attend),
                                                   self.attn_scale, picked))
        if picked is not None:
            return self._ffn_post(x, picked)
        return on_rows(x, rows, self._ffn_post, residual=False)

    def _ffn_pre(self, x: torch.Tensor, rows: Rows | None) -> torch.Tensor:
        return self._branch(self.ffn(self.ffn_norm(x)), self.ffn_scale, rows)  # added to x

    def _ffn_post(self, x: torch.Tensor, rows: Rows | None) -> torch.Tensor:
        return self.ffn_norm(x + self._branch(self.ffn(x), self.ffn_scale, rows))  # x's new value


class TransformerEncoder(nn.Module):
    """Transformer encoder (BERT post-norm or GPT-2 pre-norm; fully visible or causal)."""

    class Config(TransformerOptions):
        mask: Literal["fully_visible", "causal", "prefix"] = Field(
            "fully_visible", description="fully_visible (BERT), causal (GPT-2, left-to-right), "
            "or prefix (prefix LM: each row's first `prefix_lengths` tokens see each other, the "
            "rest is causal; the batch must carry prefix_lengths (B,))"
        )
        # the encoder's own: the decoder keeps TransformerOptions' (no grid in generated text)
        position: Literal["none", "relative", "rotary", "relative_2d"] = Field(
            "none", description="positions inside attention: none (the embedding has them), "
            "relative (T5 bucketed bias), rotary (RoPE, LLaMA) or relative_2d (BEiT: a bias "
            "per 2-D offset between patches, over `grid`)"
        )
        grid: tuple[int, int] | None = Field(
            None, description="patch grid [rows, columns] = image size / patch size per side, "
            "e.g. [14, 14] for 224 / 16 (position=relative_2d)"
        )
        share_position_bias: bool = Field(
            False, description="position=relative_2d: one table for all layers, computed once "
            "per forward (BEiT pre-training); false: one table per layer (BEiT fine-tuned)"
        )
        qkv_bias: QkvBias | None = Field(
            None, description="biases of q, k and v: all, qv (BEiT; a k bias changes nothing "
            "under softmax) or none (ViT with qkv_bias=False); None: follow `bias`"
        )
        layer_scale: float | None = Field(
            None, gt=0.0, description="layer scale: each branch times a learned per-channel "
            "factor starting at this value (BEiT: 0.1 base, 1e-5 large); None: no scale"
        )
        final_norm: bool | None = Field(
            None, description="a norm after the last layer; None: iff pre_norm (GPT-2, ViT); "
            "BEiT pooling by mean has none"
        )

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        check_options(config, ctx, "encoder")
        self.config = config
        self.causal = config.mask == "causal"
        self.prefix = config.mask == "prefix"
        grid = patch_grid(config)
        opts = {**layer_options(config, ctx), "qkv_bias": config.qkv_bias,
                "layer_scale": config.layer_scale}
        n = 1 if config.share_layers else config.layers  # shared: ONE layer, key layers.0.*
        per_layer = grid is not None and not config.share_position_bias
        self.layers = nn.ModuleList(
            TransformerLayer(ctx.hidden_size, config.heads, config.ffn_size, **opts,
                             relative_bias=RelativePositionBias2D(config.heads, grid)
                             if per_layer and grid is not None else None)
            for _ in range(n)
        )
        # T5 buckets both directions in an encoder, only the past in a causal stack
        self.relative_bias: PositionBias | None
        self.relative_bias, self.rotary = position_modules(config, ctx, not self.causal)
        if grid is not None and config.share_position_bias:
            self.relative_bias = RelativePositionBias2D(config.heads, grid)
        # pre-norm leaves the residual stream un-normalised; GPT-2 normalises it once at the end
        final = config.pre_norm if config.final_norm is None else config.final_norm
        self.final_norm = make_norm(config.norm, ctx.hidden_size, ctx.norm_eps) if final else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None,
                prefix_lengths: torch.Tensor | None = None,
                cache: KVCache | None = None,
                block_ids: torch.Tensor | None = None,
                queries: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, H), mask (B, T) True = real token, position_ids (B, T) for rotary (default
        0..T-1), prefix_lengths (B,) for mask=prefix -> (B, T, H). With a `cache` (a causal stack
        decoding incrementally) x is the T new tokens and mask covers all cache.length + T.
        block_ids (B, T): several sequences packed in a row attend only within their block.
        queries (B, n): only these positions' outputs are wanted -> (B, n, H); the last layer
        computes no others (its attention output and feed-forward run on n rows, not T)."""
        if cache is not None:
            return self._forward_cached(x, mask, position_ids, cache)
        key_mask = mask  # (B, T) real tokens, before it becomes a prefix or block mask
        if self.prefix:
            if prefix_lengths is None:
                raise TpError(
                    "encoder transformer has mask=prefix, but the batch has no `prefix_lengths`",
                    hint="use a data processor that marks each row's prefix, or set "
                    "model.encoder.mask to causal or fully_visible")
            mask = prefix_mask(prefix_lengths.reshape(-1), x.shape[1], mask)  # (B, 1, T, T)
        elif block_ids is not None:
            mask = block_mask(block_ids, mask, causal=self.causal)  # (B, 1, T, T)
        if self.config.position == "relative_2d":
            check_grid_length(self.config, x.shape[1])
        attn_mask, is_causal, rotary = self_attention_inputs(
            x, mask, self.causal, self.relative_bias, self.rotary, position_ids)
        # the causal fast path has no mask whose rows could follow the queries: select after
        last = self.config.layers - 1 if not is_causal else -1
        rows = real_rows(key_mask)  # feed-forward on the real positions of a padded batch
        for i in range(self.config.layers):
            layer = self.layers[0 if self.config.share_layers else i]
            selected = i == last and queries is not None  # (B, n, H) out: no flat rows
            x = layer(x, attn_mask, is_causal, rotary, queries=queries if i == last else None,
                      rows=None if selected else rows)
        if queries is not None and is_causal:
            x = x.gather(1, queries[..., None].expand(-1, -1, x.shape[-1]))
        return self.final_norm(x) if self.final_norm is not None else x

    def _forward_cached(self, x: torch.Tensor, mask: torch.Tensor | None,
                        position_ids: torch.Tensor | None, cache: KVCache) -> torch.Tensor:
        if not self.causal:
            raise TpError("only a causal encoder (model.encoder.mask=causal) decodes "
                          "incrementally", hint="generate with a GPT-style (causal) model")
        attn_mask, is_causal, rotary = cached_attention_inputs(
            x, mask, True, self.relative_bias, self.rotary, position_ids, cache.length)
        for i in range(self.config.layers):
            layer = self.layers[0 if self.config.share_layers else i]
            x = layer(x, attn_mask, is_causal, rotary, cache.layer(i))
        cache.length += x.shape[1]
        return self.final_norm(x) if self.final_norm is not None else x
