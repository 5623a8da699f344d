"""Contrastive language-image target `clr` (CLIP): matched text and image embeddings close, every
other pairing of the batch apart.

    stream_0 (text)  pooled (B, Ht) -> text_projection (P, Ht), no bias   -> L2 norm -> t (B, P)
    stream_1 (image) pooled (B, Hv) -> visual_projection (P, Hv), no bias -> L2 norm -> v (B, P)
    logits_per_text = exp(logit_scale) * t v^T   (B, B);  logits_per_image = its transpose
    loss = (CE(logits_per_text, diagonal) + CE(logits_per_image, diagonal)) / 2

Each stream's width comes from the model's `stream_sizes` (CLIP's text tower is narrower than
its image tower); the projections meet at `projection_dim`. `logit_scale` is learned, starting at
ln(1 / 0.07) (CLIP's temperature 0.07), and clamped to at most 4.6052 (ln(100) rounded up, as
OpenAI's training clamps it after each step) when used: the logits never exceed 100 x cosine.

The batch of a contrastive loss is its set of negatives, so under several processes it is the
GLOBAL batch: each process gathers every process's embeddings (`gather_rows`, the gradient of a
gathered row flowing back to the process that made it) and takes the loss of its own rows against
all columns, summed over its rows, as its share of the global mean times the number of
processes (its rows' mean when all hold as many). Data-parallel training averages the
processes' gradients (and the logged loss averages their losses), which gives exactly the loss
and the gradients of one process holding the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tpcli.errors import DataError, TpError
from tpcli.model.module import BuildContext, Features, TargetConfig, TargetOutput

# ln(1 / 0.07): CLIP's initial temperature 0.07. A literal, so `tp modules` reads the default
# from the source without importing torch
CLIP_LOGIT_SCALE = 2.659260036932778
# OpenAI's clamp: ln(100) rounded up, so their released logit_scale (4.6052) is used as stored
CLIP_MAX_LOGIT_SCALE = 4.6052


class ClrConfig(TargetConfig):
    """The options of `clr`."""

    projection_dim: int = Field(512, ge=1, description="width of the shared embedding space both "
                                "streams are projected to (CLIP ViT-B: 512)")
    logit_scale: float = Field(CLIP_LOGIT_SCALE, description="initial value of the learned log "
                               "scale: logits = exp(logit_scale) * cosine (CLIP: ln(1/0.07) = "
                               "2.6593)")
    max_logit_scale: float | None = Field(
        CLIP_MAX_LOGIT_SCALE, description="the learned logit_scale is clamped to at most this "
        "when used (CLIP: 4.6052, ln(100) rounded up as OpenAI's training clamps it: logits at "
        "most 100 x cosine); None: no clamp")
    gather: bool = Field(True, description="under several processes, contrast each example with "
                         "the whole global batch (every process's examples, gathered with their "
                         "gradients); false: with its own process's examples only")


class _GatherRows(torch.autograd.Function):
    """All processes' rows, concatenated in rank order; backward hands each process the summed
    gradient of its own rows (every process's loss reads them)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int],  # type: ignore[override]
                rank: int) -> torch.Tensor:
        import torch.distributed as dist

        most = max(sizes)
        padded = x.new_zeros((most, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.start, ctx.rows = sum(sizes[:rank]), x.shape[0]
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])  # (N, P)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # sum over processes: each one's loss reads every row
        return grad[ctx.start: ctx.start + ctx.rows], None, None


def world() -> tuple[int, int]:
    """(processes, this process's rank); (1, 0) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every process's rows (N, P) with gradients, where this process's rows start). The row
    counts are exchanged first, so processes may hold different numbers of examples."""
    import torch.distributed as dist

    n, rank = world()
    if n == 1:
        return x, 0
    counts = [torch.zeros((), dtype=torch.long, device=x.device) for _ in range(n)]
    dist.all_gather(counts, torch.tensor(x.shape[0], dtype=torch.long, device=x.device))
    sizes = [int(c) for c in counts]
    return _GatherRows.apply(x, sizes, rank), sum(sizes[:rank])


def similarities(rows: torch.Tensor, columns: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """scale * rows @ columns^T in float32 even under autocast: at scale 100 a bf16 logit is
    off by up to 0.4, enough to reorder close captions. The (R, P) rows are scaled, not the
    (R, C) product: at a global batch of thousands that is one N x N matrix less in the forward
    and the backward. # (R, P), (C, P) -> (R, C)"""
    with torch.autocast(rows.device.type, enabled=False):
        return (rows.float() * scale) @ columns.float().t()


class ClrTarget(nn.Module):
    """CLIP's symmetric InfoNCE between stream_0's (text) and stream_1's (image) vectors.

    Metrics `i2t_acc` and `t2i_acc` (the share of this process's images whose best text is
    their own, and of texts whose best image is theirs, among the whole batch) and `count`
    (this process's pairs).

    `predict` gives what zero-shot classification and retrieval read: `text_embeds` (B_t, P) and
    `image_embeds` (B_i, P), L2-normalised, and `logits_per_text` (B_t, B_i) with its transpose
    `logits_per_image` (B_i, B_t), scaled (the names and values of `transformers`' CLIPOutput).
    The two streams may hold different numbers of examples there (class prompts against images);
    `embed_text` / `embed_image` embed one stream alone."""

    # reads each stream's pooled vector only: the model may compute each stream's last layer
    # at the position its pooling reads alone (`TpModel.pooled_only`)
    reads_pooled_only = True

    Config = ClrConfig

    def __init__(self, config: ClrConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.widths = (ctx.stream_sizes.get("stream_0", ctx.hidden_size),
                       ctx.stream_sizes.get("stream_1", ctx.hidden_size))
        self.text_projection = nn.Linear(self.widths[0], config.projection_dim, bias=False)
        self.visual_projection = nn.Linear(self.widths[1], config.projection_dim, bias=False)
        # (1,), not a scalar: FSDP2 shards no 0-d parameter (HF's is 0-d: the converter reshapes)
        self.logit_scale = nn.Parameter(torch.full((1,), float(config.logit_scale)))

    def reset_parameters_tp(self) -> None:
        """CLIP's initialisation: each projection normal with std width^-0.5, the scale at its
        initial value (after the model's generic init, which uses init_std for every Linear)."""
        nn.init.normal_(self.text_projection.weight, std=self.widths[0] ** -0.5)
        nn.init.normal_(self.visual_projection.weight, std=self.widths[1] ** -0.5)
        with torch.no_grad():
            self.logit_scale.fill_(float(self.config.logit_scale))

    # ---------------------------------------------------------------- embeddings

    def _pooled(self, f: Features, stream: int) -> torch.Tensor:
        if f.pooled is None:
            want = "last" if stream == 0 else "first"
            raise TpError(f"target clr reads each stream's pooled vector, and stream_{stream} has "
                          "no pooling", hint=f"set model.stream_{stream}.pooling (CLIP: {want})")
        if f.pooled.shape[-1] != self.widths[stream]:
            raise TpError(f"target clr: stream_{stream} gives {f.pooled.shape[-1]}-wide vectors, "
                          f"its projection takes {self.widths[stream]}",
                          hint=f"set model.stream_{stream}.hidden_size to the stream's width")
        return f.pooled  # (B, H_stream)

    def embed_text(self, f: Features) -> torch.Tensor:
        """stream_0's features -> (B, P) unit vectors."""
        return F.normalize(self.text_projection(self._pooled(f, 0)).float(), dim=-1)

    def embed_image(self, f: Features) -> torch.Tensor:
        """stream_1's features -> (B, P) unit vectors."""
        return F.normalize(self.visual_projection(self._pooled(f, 1)).float(), dim=-1)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), the scale clamped as the config says. # ()"""
        s = self.logit_scale.float()[0]
        if self.config.max_logit_scale is not None:
            s = s.clamp(max=self.config.max_logit_scale)
        return s.exp()

    def _streams(self, features: Features) -> tuple[Features, Features]:
        if len(features.streams) != 2:
            raise TpError("target clr contrasts the two streams of a dual-stream model, and this "
                          "model has one stack",
                          hint="give the model stream_0 (text) and stream_1 (images) sections")
        return features.streams[0], features.streams[1]

    # ---------------------------------------------------------------- training and prediction

    def forward(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        f_text, f_image = self._streams(features)
        text, image = self.embed_text(f_text), self.embed_image(f_image)  # (B, P) each
        if text.shape[0] != image.shape[0]:
            raise DataError(f"target clr pairs texts with images, and the batch holds "
                            f"{text.shape[0]} texts and {image.shape[0]} images",
                            hint="use an image-text pair processor: one caption per image")
        if self.config.gather:  # both streams in one exchange: (N, 2P)
            both, start = gather_rows(torch.cat((text, image), dim=-1))
            all_text, all_image = both.split(text.shape[-1], dim=-1)  # (N, P) each
        else:
            all_text, all_image, start = text, image, 0
        s = self.scale()
        per_text = similarities(text, all_image, s)  # (B, N): this process's texts, all images
        per_image = similarities(image, all_text, s)  # (B, N)
        own = torch.arange(start, start + text.shape[0], device=text.device)  # (B,)
        # this process's share of the global mean, times the processes: averaging the
        # processes' losses and gradients (data parallelism) then gives the global batch's,
        # even when they hold different numbers of pairs
        share = (world()[0] if self.config.gather else 1) / all_text.shape[0]
        loss = (F.cross_entropy(per_text, own, reduction="sum")
                + F.cross_entropy(per_image, own, reduction="sum")) * (share / 2)
        with torch.no_grad():
            count = torch.tensor(float(own.numel()), device=text.device)
            i2t = (per_image.argmax(dim=-1) == own).float().mean()
            t2i = (per_text.argmax(dim=-1) == own).float().mean()
        return TargetOutput(loss, {"i2t_acc": i2t, "t2i_acc": t2i, "count": count})

    def predict(self, features: Features, batch: dict[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
        f_text, f_image = self._streams(features)
        text, image = self.embed_text(f_text), self.embed_image(f_image)  # (Bt, P), (Bi, P)
        per_text = similarities(text, image, self.scale())  # (Bt, Bi)
        return {"text_embeds": text, "image_embeds": image, "logits_per_text": per_text,
                "logits_per_image": per_text.t()}
