"""`--check`: the HF model and the tp model on one padded batch; the max abs difference of their
logits (or hidden states for a headless model)."""

from __future__ import annotations

from typing import Any

import torch

from tpcli.convert import Converter
from tpcli.errors import TpError
from tpcli.convert.common import (CHECK_BATCH, CHECK_LENGTH, transformers_module)

# ------------------------------------------------------------------------------ --check


def hf_model_class(arch: str) -> Any:
    transformers = transformers_module()
    transformers.utils.logging.disable_progress_bar()  # tp prints its own summary
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise TpError(f"this transformers ({transformers.__version__}) has no {arch}")
    return cls


def _rows(n_rows: int, length: int, vocab: int, pad: int, seed: int) -> tuple[torch.Tensor,
                                                                              torch.Tensor]:
    """(B, T) ids and (B, T) bool mask: row i has `length - 3 i` real tokens (never the pad id),
    then padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n_rows, length), generator=g)
    ids = torch.where(ids == pad, (ids + 1) % vocab, ids)
    mask = torch.ones(n_rows, length, dtype=torch.bool)
    for row in range(n_rows):
        mask[row, max(2, length - 3 * row):] = False
    return ids.masked_fill(~mask, pad), mask


def check_batch(spec: Any, hf_config: dict[str, Any], vocab: int) -> dict[str, torch.Tensor]:
    """The fixed padded batch `--check` runs through both models (tp batch keys)."""
    pad = hf_config.get("pad_token_id")
    pad = pad if isinstance(pad, int) and 0 <= pad < vocab else 0
    ids, mask = _rows(CHECK_BATCH, CHECK_LENGTH, vocab, pad, seed=1)
    batch = {"input_ids": ids, "attention_mask": mask}
    stack = next(iter(spec.stacks.values()))
    seg = {m.name: m.options for m in stack.embedding}.get("seg")
    if seg is not None and getattr(seg, "types", 1) >= 2:
        half = (torch.arange(CHECK_LENGTH) >= CHECK_LENGTH // 2).long().expand_as(ids)
        batch["segment_ids"] = half * mask
    if spec.decoder is not None:
        tids, tmask = _rows(CHECK_BATCH, CHECK_LENGTH - 4, vocab, pad, seed=2)
        batch["tgt_input_ids"], batch["tgt_attention_mask"] = tids, tmask
    return batch


HF_INPUTS = {"input_ids": "input_ids", "attention_mask": "attention_mask",
             "segment_ids": "token_type_ids", "tgt_input_ids": "decoder_input_ids",
             "tgt_attention_mask": "decoder_attention_mask"}


def max_abs_diff(conv: Converter, hf_model: Any, tp_model: Any, hf_config: dict[str, Any],
                 vocab: int, *, base: bool = False, fields: dict[str, str] | None = None
                 ) -> float:
    """Max abs difference of the two models' logits (hidden states for a headless model) on the
    fixed padded batch of `check_batch`, over real positions. Ids are drawn below `vocab`.
    `fields`: compare only these targets, with these HF output fields (default: every target,
    through `conv.outputs`). A target whose `predict` gives a dict of outputs has each compared
    with the HF output field of the same name."""
    if conv.check_batch is not None:  # a model that reads no token ids (images)
        batch, kwargs = conv.check_batch(tp_model.spec, hf_config)
    else:
        batch = check_batch(tp_model.spec, hf_config, vocab)
        kwargs = {HF_INPUTS[k]: (v.long() if v.dtype == torch.bool else v)
                  for k, v in batch.items()}
    with torch.no_grad():
        ref = hf_model(**kwargs)
        tmask = batch.get("tgt_attention_mask", batch.get("attention_mask"))
        if base:
            pairs = [("hidden", tp_model.features(batch).hidden, ref.last_hidden_state)]
        else:
            ours = tp_model.predict(batch)
            # a target mapped to "" has no head in the HF architecture: nothing to compare
            wanted = fields or {name: field for name in ours
                                if (field := conv.outputs.get(name, "logits"))}
            pairs = []
            for name, field in wanted.items():
                if isinstance(ours[name], dict):  # several outputs (clr): each HF's namesake
                    pairs += [(f"{name}.{k}", v, getattr(ref, k)) for k, v in ours[name].items()]
                else:
                    pairs.append((name, ours[name], getattr(ref, field)))
    worst = 0.0
    for name, mine, theirs in pairs:
        if tuple(mine.shape) != tuple(theirs.shape):
            raise TpError(f"--check: tp's {name} output is {tuple(mine.shape)}, the Hugging Face "
                          f"model's {tuple(theirs.shape)}")
        diff = (mine.float() - theirs.float()).abs()
        if diff.dim() >= 3 and tmask is not None:  # per token: only the real positions count
            # (of the text, when the sequence goes on past it: ViLT's image patches, which HF
            # puts in a random order)
            diff = diff[:, : tmask.shape[1]][tmask]
        worst = max(worst, float(diff.max()))
    return worst


def compare(conv: Converter, hf_model: Any, tp_model: Any, hf_config: dict[str, Any],
             tokenizer: Any, tolerance: float, *, base: bool,
             fields: dict[str, str] | None = None) -> float:
    """`max_abs_diff` on the tokenizer's ids; a TpError above `tolerance`."""
    vocab = tp_model.ctx.vocab_size
    if tokenizer is not None:
        vocab = min(vocab, tokenizer.vocab_size)
    worst = max_abs_diff(conv, hf_model, tp_model, hf_config, vocab, base=base, fields=fields)
    if not worst <= tolerance:
        raise TpError(f"--check failed: the logits differ by up to {worst:.3g} (tolerance "
                      f"{tolerance:g}); nothing was written",
                      hint="a converter bug or an option it does not translate; --tolerance "
                      "raises the bar")
    return worst
