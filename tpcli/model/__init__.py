"""Assemble the five components (and dual streams) from a validated recipe.

    batch -> [embedding modules, summed -> norm -> dropout] -> encoder -> (pooling)
          -> [tgt_embedding -> decoder(memory = encoder output)]            (seq2seq only)
          -> targets (each a loss + metrics; total = sum of weight * loss)

Nothing here names a model: BERT, T5 and CLIP are only different recipes.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from tpcli.data.batch import BatchKey
from tpcli.recipes.config import ModelSpec, ModuleSpec, StackSpec
from tpcli.errors import TpError
from tpcli.layers.dropout import Dropout
from tpcli.layers.norms import make_norm
from tpcli.model.module import BuildContext, Features, LastPositions
from tpcli.plugins.registry import Registry

Batch = dict[str, torch.Tensor]


@dataclass
class ModelOutput:
    loss: torch.Tensor  # scalar: sum of weight * target loss
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # per target
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # "mlm.acc", "sp.acc", ...


def _build(registry: Registry, spec: ModuleSpec, ctx: BuildContext) -> nn.Module:
    cls = registry.get(spec.kind, spec.name)
    return cls(spec.options, ctx)


def _view(batch: Batch, prefix: str) -> Batch:
    """The inputs one stack sees: keys under `prefix` ("tgt_", "stream_0.") without it."""
    if not prefix:
        return batch
    return {k[len(prefix):]: v for k, v in batch.items() if k.startswith(prefix)}


# Optional batch keys a stack's encoder (or the decoder, under the "tgt_" prefix) may take as
# keyword arguments: restarting positions of packed documents, prefix-LM prefix lengths.
ENCODER_KEYS = ("position_ids", "prefix_lengths", "block_ids")


def _accepted(module: nn.Module | None, keys: tuple[str, ...]) -> tuple[str, ...]:
    """The `keys` that `module.forward` takes as keyword arguments (none for None)."""
    if module is None:
        return ()
    params = inspect.signature(module.forward).parameters
    return tuple(k for k in keys if k in params)


class EmbeddingSum(nn.Module):
    """Several embeddings summed, then an optional norm and dropout. # (B, T, H)

    With a factorized embedding (ALBERT) the parts are E wide, and a Linear `project`
    (E -> H) follows the norm and dropout."""

    def __init__(self, modules: dict[str, nn.Module], norm: nn.Module, dropout: float,
                 project: nn.Module | None = None) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(modules)
        # parts whose forward takes `sequence`: they are sized by the sum built before them
        self.takes_sequence = {name for name, m in modules.items()
                               if "sequence" in inspect.signature(m.forward).parameters}
        self.norm = norm
        self.dropout = Dropout(dropout)
        self.project = project

    def word_weight(self) -> torch.Tensor | None:
        for m in self.parts.values():
            w = getattr(m, "word_weight", None)
            if w is not None:
                return w
        return None

    def inputs(self) -> tuple[BatchKey, ...]:
        """The batch keys the parts read (each part's declared `inputs`)."""
        return tuple(k for m in self.parts.values() for k in getattr(m, "inputs", ()))

    def mask(self, inputs: Batch) -> torch.Tensor | None:
        """(B, T) True = real position of the sequence the parts build: the batch's
        `attention_mask`, unless a part makes a sequence of its own length and says which of its
        positions are real (`output_mask(inputs)`: the speech subsampler, T = frames / 4)."""
        for m in self.parts.values():
            output_mask = getattr(m, "output_mask", None)
            if output_mask is not None:
                return output_mask(inputs)
        return inputs.get("attention_mask")

    def forward(self, inputs: Batch) -> torch.Tensor:
        x: torch.Tensor | None = None
        for name, m in self.parts.items():
            # a position embedding after `patch` sizes itself by the sequence so far, whose
            # length (a class token before the patches) no single input gives
            y = m(inputs, sequence=x) if name in self.takes_sequence else m(inputs)
            x = y if x is None else x + y
        assert x is not None  # validation guarantees at least one embedding
        x = self.dropout(self.norm(x))  # (B, T, E)
        return self.project(x) if self.project is not None else x  # (B, T, H)


class Stack(nn.Module):
    """One stream: embeddings -> encoder -> optional pooling."""

    def __init__(self, emb: EmbeddingSum, encoder: nn.Module | None, pool: nn.Module | None):
        super().__init__()
        self.embedding = emb
        self.encoder = encoder
        self.pooling = pool
        # batch keys passed on to the encoder when present and its forward takes them
        self.encoder_keys = _accepted(encoder, ENCODER_KEYS)
        # the encoder can compute chosen positions' outputs only (`queries`, (B, n))
        self.selects_queries = pool is None and bool(_accepted(encoder, ("queries",)))
        # ... and the pooling reads one position per row (first, last): a consumer of the
        # pooled vector alone needs the last layer there only
        self.pools_one = (pool is not None and callable(getattr(pool, "read_position", None))
                          and bool(_accepted(encoder, ("queries",))))

    def forward(self, inputs: Batch, first_only: bool = False,
                after_embedding: nn.Module | None = None,
                positions: list[torch.Tensor | LastPositions] | None = None,
                pooled_only: bool = False) -> Features:
        """first_only (when `selects_queries`): hidden (B, 1, H) = each row's first real token
        only, the rest of the last layer not computed; the mask is then None.
        after_embedding: a norm for this use of the stack (a tied stream's own), then dropout.
        positions (when `selects_queries`): (B, T') bool masks, T' <= T, of the positions the
        targets read (`read_positions`: of the first T', or of the last as `LastPositions`); the
        last layer computes those (`wanted_queries`) and hidden is zero at the others.
        pooled_only (when `pools_one`): the same for the one position per row that the pooling
        reads."""
        mask = self.embedding.mask(inputs)
        mask = mask.bool() if mask is not None else None
        h = self.embedding(inputs)  # (B, T, H)
        if after_embedding is not None:
            h = self.embedding.dropout(after_embedding(h))
        if self.encoder is not None:
            extra = {k: inputs[k] for k in self.encoder_keys if k in inputs}
            if first_only and self.selects_queries:
                first = (mask.int().argmax(dim=1) if mask is not None  # first True, no sync
                         else torch.zeros(h.shape[0], dtype=torch.long, device=h.device))
                return Features(self.encoder(h, mask, queries=first[:, None], **extra), None,
                                None)
            queries = (wanted_queries(positions, h.shape[0], h.shape[1], h.device)
                       if positions is not None and self.selects_queries else None)
            if pooled_only and self.pools_one and self.pooling is not None:
                read = self.pooling.read_position(mask, h.shape[0], h.shape[1])  # (B,)
                queries = read.to(h.device)[:, None]
            if queries is not None:
                out = self.encoder(h, mask, queries=queries, **extra)  # (B, n, H)
                # the computed rows in place, zeros at the positions nothing reads
                h = out.new_zeros(h.shape[0], h.shape[1], out.shape[-1]).scatter(
                    1, queries[..., None].expand(-1, -1, out.shape[-1]), out)
            else:
                h = self.encoder(h, mask, **extra)
        pooled = self.pooling(h, mask) if self.pooling is not None else None
        return Features(h, mask, pooled)


def wanted_queries(positions: list[torch.Tensor | LastPositions], b: int, t: int,
                   device: torch.device) -> torch.Tensor | None:
    """The targets' positions (each (B, T') bool, T' <= T, of the first T' positions, or of the
    last as `LastPositions`) -> queries (B, n): each row's wanted positions first, then its
    first unwanted ones up to the longest row's count n (the extra rows are computed and not
    read; distinct positions, so the scatter back is a permutation).
    None (compute every position) under torch.compile, for a mask of another shape, or when
    fewer than 1/8 of the positions would be skipped."""
    if torch.compiler.is_compiling():
        return None
    wanted = torch.zeros(b, t, dtype=torch.bool, device=device)
    for p in positions:
        m = p.mask if isinstance(p, LastPositions) else p
        if m.dim() != 2 or m.shape[0] != b or m.shape[1] > t:
            return None
        start = t - m.shape[1] if isinstance(p, LastPositions) else 0
        wanted[:, start:start + m.shape[1]] |= m.to(device=device, dtype=torch.bool)
    n = max(int(wanted.sum(1).max()), 1)  # reads the count (the MLM target's nonzero does too)
    if 8 * n > 7 * t:
        return None
    order = torch.argsort((~wanted).to(torch.uint8), dim=1, stable=True)  # wanted first
    return order[:, :n]


class TpModel(nn.Module):
    """A model built from a recipe's model section. `forward(batch)` returns the training loss."""

    def __init__(self, spec: ModelSpec, registry: Registry, ctx: BuildContext) -> None:
        super().__init__()
        self.spec = spec
        self.ctx = ctx
        opts = spec.options

        def embedding_sum(mods: list[ModuleSpec], c: BuildContext,
                          own: dict[str, Any] | None = None,
                          reader: nn.Module | None = None) -> EmbeddingSum:
            built = {m.name: _build(registry, m, c) for m in mods}
            e = c.embed_dim
            # an encoder that reads the embedding width itself (an RNN) needs no projection
            wide = getattr(reader, "reads_embedding_width", False)
            project = nn.Linear(e, c.hidden_size) if e != c.hidden_size and not wide else None
            norm = (own or {}).get("embedding_norm", opts.embedding_norm)
            return EmbeddingSum(built, make_norm(norm, e, c.norm_eps), c.dropout, project)

        def stack(s: StackSpec, stream: str) -> Stack:
            # a stream's own hidden_size / norm_eps / dropout replace the model-wide ones
            own = {k: v for k, v in s.options.items() if k != "embedding_norm"}
            c = BuildContext(**{**ctx.__dict__, "stream": stream, **own})
            enc = _build(registry, s.encoder, c) if s.encoder else None
            pool = _build(registry, s.pooling, c) if s.pooling else None
            return Stack(embedding_sum(s.embedding, c, s.options, enc), enc, pool)

        if spec.dual:
            ctx.stream_sizes = {name: int(s.options.get("hidden_size", ctx.hidden_size))
                                for name, s in spec.stacks.items()}
            self.stream_0 = stack(spec.stacks["stream_0"], "stream_0")
            # tied streams (SBERT) run stream_0 twice; registering it twice would duplicate keys
            self.stream_1 = None if opts.tie_streams else stack(spec.stacks["stream_1"], "stream_1")
            if opts.stream_norms:  # apart even when the streams are tied
                e = ctx.embed_dim
                self.stream_norms = nn.ModuleDict(
                    {n: make_norm("layernorm", int(s.options.get("hidden_size", e)),
                                  float(s.options.get("norm_eps", ctx.norm_eps)))
                     for n, s in spec.stacks.items()})
        else:
            self.stack = stack(spec.stacks[""], "")
        self.tgt_embedding: EmbeddingSum | None = None
        self.decoder: nn.Module | None = None
        if spec.decoder is not None:
            tctx = BuildContext(**{**ctx.__dict__, "stream": "tgt"})
            self.tgt_embedding = embedding_sum(spec.tgt_embedding, tctx)
            self.decoder = _build(registry, spec.decoder, tctx)
            if opts.share_embeddings:
                self._share_word_embedding()
        self.decoder_keys = _accepted(self.decoder, ENCODER_KEYS)
        self.targets = nn.ModuleDict({t.name: _build(registry, t, ctx) for t in spec.targets})
        self.weights = {t.name: float(t.options.weight) for t in spec.targets}
        self.apply(self._init_weights)
        for m in self.modules():  # modules with their own scheme (e.g. scaled init) go last
            if m is not self and hasattr(m, "reset_parameters_tp"):
                m.reset_parameters_tp()
        if opts.tie_weights:
            self._tie()
        # every target reads only the first token's hidden state (a classifier over [CLS]):
        # training and prediction skip the rest of the last layer (the hidden states of
        # `features` stay whole)
        self.first_only = (not spec.dual and self.decoder is None and self.stack.selects_queries
                           and all(getattr(t, "reads_first_token", False)
                                   for t in self.targets.values()))
        # dual streams whose targets read each stream's pooled vector alone (CLIP's clr): each
        # stream's last layer computes the position its pooling reads only (training)
        self.pooled_only = (spec.dual and all(getattr(t, "reads_pooled_only", False)
                                              for t in self.targets.values()))
        # every target names the positions its loss reads (`read_positions(batch)`: MLM its
        # masked ~15%, NSP/SOP/ITM the first): training computes the last layer at those only
        self.reads_positions = (not spec.dual and self.decoder is None
                                and self.stack.selects_queries
                                and all(callable(getattr(t, "read_positions", None))
                                        for t in self.targets.values()))

    # -- construction helpers

    def _init_weights(self, m: nn.Module) -> None:
        std = self.ctx.init_std
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, (nn.LayerNorm,)) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _tie(self) -> None:
        source = self.tgt_embedding if self.tgt_embedding is not None else self._first_stack().embedding
        get_weight: Callable[[], torch.Tensor | None] = source.word_weight
        if get_weight() is None:
            return
        for t in self.targets.values():
            tie = getattr(t, "tie_weights", None)
            if tie is not None:
                tie(get_weight)

    def _share_word_embedding(self) -> None:
        """T5/BART: the target side reads the source side's word table (one key, one tensor)."""
        assert self.tgt_embedding is not None
        word_src = self._first_stack().embedding.parts["word"] if "word" in self._first_stack().embedding.parts else None
        word_dst = self.tgt_embedding.parts["word"] if "word" in self.tgt_embedding.parts else None
        share = getattr(word_dst, "share_from", None)
        if word_src is None or share is None or type(word_src) is not type(word_dst):
            raise TpError(
                "model.share_embeddings needs a `word` embedding on both sides (embedding and "
                "tgt_embedding)",
                hint="add word to both lists, or set model.share_embeddings=false")
        share(word_src)

    def _first_stack(self) -> Stack:
        return self.stream_0 if self.spec.dual else self.stack

    def inputs(self) -> tuple[BatchKey, ...]:
        """Every batch key the embeddings read, named as the batch holds them (`tgt_` for the
        target side, `stream_0.` / `stream_1.` for dual streams)."""
        def renamed(keys: tuple[BatchKey, ...], prefix: str) -> list[BatchKey]:
            return [dataclasses.replace(k, name=prefix + k.name,
                                        mask=prefix + k.mask if k.mask else None) for k in keys]

        if self.spec.dual:
            out = renamed(self.stream_0.embedding.inputs(), "stream_0.")
            out += renamed((self.stream_1 or self.stream_0).embedding.inputs(), "stream_1.")
        else:
            out = list(self.stack.embedding.inputs())
        if self.tgt_embedding is not None:
            out += renamed(self.tgt_embedding.inputs(), "tgt_")
        return tuple(out)

    # -- running

    def features(self, batch: Batch, first_only: bool = False,
                 positions: list[torch.Tensor] | None = None,
                 pooled_only: bool = False) -> Features:
        """Hidden states for the targets: the encoder's, or the decoder's for seq2seq;
        `first_only`: only each sequence's first real token's (when `self.first_only` allows);
        `positions`: only these (B, T') positions' (when `self.reads_positions` allows), the
        others zero; `pooled_only`: dual streams compute each last layer at the position their
        pooling reads only (when `self.pooled_only` allows; training: `predict` and conversion
        checks compute every position, as HF does)."""
        if self.spec.dual:
            norms = getattr(self, "stream_norms", None)
            one = pooled_only and self.pooled_only
            f0 = self.stream_0(_view(batch, "stream_0."),
                               after_embedding=norms["stream_0"] if norms else None,
                               pooled_only=one)
            f1 = (self.stream_1 or self.stream_0)(
                _view(batch, "stream_1."), after_embedding=norms["stream_1"] if norms else None,
                pooled_only=one)
            return Features(None, None, None, (f0, f1))
        enc = self.stack(batch, first_only and self.first_only,
                         positions=positions if self.reads_positions else None)
        if self.decoder is None or self.tgt_embedding is None:
            return enc
        tgt = _view(batch, "tgt_")
        tmask = tgt.get("attention_mask")
        tmask = tmask.bool() if tmask is not None else None
        y = self.tgt_embedding(tgt)  # (B, T', H)
        extra = {k: tgt[k] for k in self.decoder_keys if k in tgt}
        y = self.decoder(y, tmask, enc.hidden, enc.mask, **extra)
        return Features(y, tmask, None, memory=enc.hidden, memory_mask=enc.mask)

    def read_positions(self, batch: Batch) -> list[torch.Tensor | LastPositions] | None:
        """Each target's (B, T') positions, or None when one of them reads them all."""
        if not self.reads_positions or self.first_only:
            return None
        out = [t.read_positions(batch) for t in self.targets.values()]
        return None if any(m is None for m in out) else out

    def forward(self, batch: Batch) -> ModelOutput:
        feats = self.features(batch, first_only=True, positions=self.read_positions(batch),
                              pooled_only=True)
        total: torch.Tensor | None = None
        losses: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        for name, target in self.targets.items():
            out = target(feats, batch)
            losses[name] = out.loss
            for k, v in out.metrics.items():
                metrics[f"{name}.{k}"] = v
            term = self.weights[name] * out.loss
            total = term if total is None else total + term
        assert total is not None  # validation guarantees at least one target
        return ModelOutput(total, losses, metrics)

    @torch.no_grad()
    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Each target's logits (e.g. `mlm` (B, T, V), `sp` (B, 2))."""
        feats = self.features(batch, first_only=True)
        return {name: t.predict(feats, batch) for name, t in self.targets.items()}


def build_model(spec: ModelSpec, registry: Registry, vocab_size: int,
                special_ids: dict[str, int] | None = None) -> TpModel:
    o = spec.options
    ctx = BuildContext(
        hidden_size=o.hidden_size,
        vocab_size=o.vocab_size or vocab_size,
        dropout=o.dropout,
        norm_eps=o.norm_eps,
        init_std=o.init_std,
        special_ids=dict(special_ids or {}),
        embedding_size=o.embedding_size,
    )
    return TpModel(spec, registry, ctx)


def vocabulary(tokenizer: Any) -> tuple[int, dict[str, int]]:
    """(vocab_size, special_ids) a model is built with: the tokenizer's, or (0, {}) for a model
    without one (images, audio features; an image tokenizer's codes count as its vocabulary)."""
    if tokenizer is None:
        return 0, {}
    return int(tokenizer.vocab_size), dict(tokenizer.special_ids)


def count_params(model: nn.Module) -> int:
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def describe(model: TpModel) -> dict[str, Any]:
    return {"params": count_params(model), "targets": list(model.targets)}
