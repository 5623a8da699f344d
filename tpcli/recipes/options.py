"""The option sections of a recipe that are not modules: model-wide options, `pretrain` and
`finetune`.

Each is a strict pydantic model, like a module's Config: it feeds validation and
`tp modules model` / `tp modules pretrain`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelOptions(_Strict):
    """Model-wide options (the rest of the model section names modules)."""

    hidden_size: int = Field(768, gt=0, description="width of embeddings and hidden states")
    vocab_size: int | None = Field(None, gt=0, description="default: the tokenizer's vocabulary")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout used by every module")
    norm_eps: float = Field(1e-12, gt=0.0, description="epsilon of every normalisation layer")
    init_std: float = Field(0.02, gt=0.0, description="std of the normal weight initialisation")
    embedding_norm: Literal["layernorm", "rmsnorm", "none"] = Field(
        "layernorm", description="normalisation after the embeddings are summed"
    )
    tie_weights: bool = Field(True, description="share the word embedding with output layers")
    tie_streams: bool = Field(False, description="dual stream: stream_1 reuses stream_0's weights")
    stream_norms: bool = Field(
        False, description="dual stream: each stream's embeddings get a LayerNorm of its own "
        "after the embedding norm, kept apart when the streams are tied (TencentPretrain's "
        "dual embedding)")
    embedding_size: int | None = Field(
        None, gt=0, description="width of the embeddings when smaller than hidden_size (ALBERT's "
        "factorized embedding: summed at this width, then projected to hidden_size)")
    share_embeddings: bool = Field(
        False, description="seq2seq: the target side's word embedding is the source side's "
        "(T5, BART)")


class PretrainOptions(_Strict):
    """The `pretrain` section: optimisation, precision, checkpoints, logging."""

    # options that mean something only where written (DeepSpeed's under another strategy are
    # refused): `tp recipes show` leaves them out of a resolved recipe unless they were set
    written_only: ClassVar[tuple[str, ...]] = ("zero_stage", "offload", "deepspeed_config")

    steps: int = Field(1000, gt=0, description="optimizer steps to train for")
    batch_size: int = Field(32, gt=0, description="examples per optimizer step (all micro-batches)")
    grad_accum: int = Field(1, gt=0, description="micro-batches accumulated per optimizer step")
    lr: float = Field(1e-4, gt=0.0, description="peak learning rate")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW decoupled weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    adam_eps: float = Field(1e-6, gt=0.0, description="AdamW epsilon")
    warmup_ratio: float = Field(0.01, ge=0.0, le=1.0, description="warm-up as a share of steps")
    warmup_steps: int | None = Field(None, ge=0, description="warm-up steps (wins over the ratio)")
    schedule: Literal["linear", "cosine", "constant", "inverse_sqrt"] = Field(
        "linear", description="decay after warm-up (inverse_sqrt: fairseq's and S2T's, "
        "lr * sqrt(warmup / step), never below min_lr_ratio)"
    )
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="final lr as a share of lr")
    grad_clip: float = Field(1.0, ge=0.0, description="max global grad norm (0: no clipping)")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast precision")
    seed: int = Field(7, description="seed of initialisation, data order and masking")
    log_every: int = Field(10, gt=0, description="steps between log lines")
    save_every: int = Field(500, gt=0, description="steps between checkpoints")
    keep_last: int = Field(3, gt=0, description="checkpoints kept on disk")
    compile: bool = Field(False, description="wrap the model in torch.compile")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train")
    strategy: Literal["auto", "single", "ddp", "fsdp", "deepspeed"] = Field(
        "auto", description="how training is distributed: auto (ddp under torchrun with more than "
        "one process, else single), single, ddp, fsdp (FSDP2 fully_shard per layer), deepspeed")
    zero_stage: Literal[1, 2, 3] = Field(2, description="deepspeed: ZeRO stage")
    offload: bool = Field(False, description="deepspeed: keep optimizer state on the CPU")
    deepspeed_config: str | None = Field(
        None, description="deepspeed: a DeepSpeed JSON; its batch sizes, lr, clipping and "
        "precision must agree with this section")
    activation_checkpointing: bool = Field(
        False, description="recompute each layer's activations in backward (less memory)")
    batch_units: int | None = Field(
        None, gt=0, description="batch by size (fairseq's max_tokens): each micro-batch holds "
        "at most this many padded units (frames, tokens) of examples of similar length, and at "
        "most batch_size / grad_accum / processes examples; the dataset must give its sizes "
        "(speech). None: batch_size examples per step")
    init: str | None = Field(
        None, description="start from these weights (further pre-training; TencentPretrain's "
        "--pretrained_model_path): a tp run or checkpoint folder, or zoo:NAME; the model's "
        "weights only (steps, optimizer and schedule start afresh); every weight outside the "
        "targets must be there, a target it lacks starts fresh")
    data_workers: int | None = Field(
        None, ge=0, le=64, description="processes that load batches ahead of the step (0: "
        "load them in the training process; default: 1 where there is a second CPU core); any "
        "number trains the same model")
    loggers: list[str] = Field(
        default_factory=list, description="where the run's metrics go besides metrics.jsonl "
        "(`tp modules logger`: tensorboard, wandb); --logger NAME adds one")

    @model_validator(mode="after")
    def _deepspeed_options_need_deepspeed(self) -> PretrainOptions:
        """zero_stage / offload / deepspeed_config do nothing under another strategy: say so
        rather than train without what the user asked for."""
        stray = [f"{f}={getattr(self, f)}" for f in ("zero_stage", "offload", "deepspeed_config")
                 if f in self.model_fields_set and getattr(self, f) not in (None, False)]
        if stray and self.strategy != "deepspeed":
            raise ValueError(f"{', '.join(stray)} only apply to strategy=deepspeed, but "
                             f"strategy is {self.strategy!r}: set pretrain.strategy=deepspeed "
                             "(DS_BUILD_OPS=0 pip install deepspeed), or remove them")
        return self


class FinetuneOptions(PretrainOptions):
    """The `finetune` section: the `pretrain` options with fine-tuning defaults, plus epochs,
    evaluation, best-checkpoint selection, early stopping and layer-wise lr decay."""

    # fine-tuning saves at each evaluation, and refuses a save_every that was written
    written_only: ClassVar[tuple[str, ...]] = PretrainOptions.written_only + ("save_every",)

    steps: int | None = Field(  # type: ignore[assignment]
        None, gt=0, description="optimizer steps (default: epochs over the training set)")
    epochs: float = Field(3.0, gt=0.0, description="passes over the training set (unless steps)")
    batch_size: int = Field(32, gt=0, description="examples per optimizer step")
    lr: float = Field(2e-5, gt=0.0, description="peak learning rate")
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0, description="warm-up as a share of steps")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW decoupled weight decay")
    adam_eps: float = Field(1e-8, gt=0.0, description="AdamW epsilon")
    max_length: int = Field(128, gt=1, description="tokens per example (longer ones are cut)")
    eval_every: int | None = Field(
        None, gt=0, description="steps between evaluations on the dev set (default: each epoch)")
    eval_batch_size: int = Field(64, gt=0, description="examples per evaluation batch")
    metric: str | None = Field(
        None, description="dev metric that selects the best checkpoint (default: the task's)")
    patience: int | None = Field(
        None, gt=0, description="stop after this many evaluations without a better metric")
    layer_decay: float | None = Field(
        None, gt=0.0, le=1.0, description="layer-wise lr decay: layer l of L trains at lr * "
        "decay^(L - l), the embeddings at lr * decay^(L + 1), the task head at lr")
    log_every: int = Field(10, gt=0, description="steps between log lines")
    keep_last: int = Field(1, gt=0, description="checkpoints kept besides the best")
    init: str | None = Field(
        None, description="the pre-trained weights: a tp run or checkpoint folder, or zoo:NAME "
        "(pulled, verified and converted on first use); --init wins")
    task: str | dict[str, Any] | None = Field(
        None, description="the downstream task: a name (`classification`, `glue/sst2`) or "
        "{name: ..., its options} (`tp modules task NAME`); --task wins")
