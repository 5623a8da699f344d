"""CTC target: connectionist temporal classification over the encoder's output, for joint
CTC/attention training (Watanabe et al. 2017, ESPnet's recipe; not in the TencentPretrain paper).

    encoder output (B, S, H) -> Linear (V, H) -> log-softmax (float32) -> (S, B, V)
    -> F.ctc_loss against the transcript's ids (B, L), blank = `blank`

A seq2seq model gives the encoder's output as `Features.memory` / `memory_mask`; an
encoder-only model (a CTC-only recogniser) as `hidden` / `mask`. The mask's row sums are the
input lengths, so the speech embedding's exact subsampled lengths reach the loss.

Labels are the batch's `lm_labels` (the decoder's next-token labels: transcript ids, then eos,
then -100 padding) with every -100 and eos dropped: CTC aligns the transcript alone, and an
utterance's end is where its frames end.

The blank is, by default, the vocabulary's pad id (S2T's <pad> = 1): padding never appears in a
transcript, so its output row is free to mean "no token", and the vocabulary (the tokenizer,
the `lm` head, a converted Hugging Face checkpoint) stays as it is, without a new token.

Loss scale (`reduction`): `tokens` (the default) divides the summed per-utterance losses by the
number of transcript tokens in the batch, fairseq's normalisation (sentence_avg false): the
`lm` target's cross-entropy is a mean over tokens too, so the weights of a multi-task
`[lm, ctc]` read as ESPnet's mtlalpha (lm weight 0.7, ctc weight 0.3), where both losses share
a scale. `batch` divides by the batch size, ESPnet's CTC module (then per utterance, about L
times larger than lm's loss); `mean` is torch's (each utterance's loss over its own length,
averaged). An utterance with fewer frames than its alignment needs has an infinite loss;
`zero_infinity` (default on) makes it 0 with no gradient, and the metric `infeasible` counts
the share of such utterances, so a too aggressive subsampler shows in the logs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tpcli.data.batch import IGNORE
from tpcli.errors import DataError, TpError
from tpcli.model.module import BuildContext, Features, TargetConfig, TargetOutput


class CtcConfig(TargetConfig):
    """Options of the `ctc` target."""

    blank: int | None = Field(
        None, ge=0, description="id of the CTC blank; default the vocabulary's pad id (S2T: 1), "
        "which never appears in a transcript")
    reduction: Literal["tokens", "batch", "mean"] = Field(
        "tokens", description="loss scale: summed over the batch and divided by its transcript "
        "tokens (fairseq; lm's scale), by its utterances (ESPnet), or torch's mean of "
        "per-utterance loss / length")
    zero_infinity: bool = Field(
        True, description="an utterance too short for its transcript counts 0 (no gradient) "
        "instead of inf")
    source: Literal["auto", "memory", "hidden"] = Field(
        "auto", description="which states to align: the encoder's output of a seq2seq model "
        "(memory), the last stack's (hidden), or memory when there is one (auto)")


def ctc_labels(labels: torch.Tensor, drop: tuple[int, ...]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """labels (B, L) -> (the kept ids of all rows concatenated (N,), kept per row (B,)): every
    -100 and every id in `drop` (eos) removed, order kept."""
    keep = labels != IGNORE
    for token in drop:
        keep &= labels != token
    return labels[keep], keep.sum(dim=1)  # row-major: row 0's ids, then row 1's, ...


def ctc_greedy(log_probs: torch.Tensor, lengths: torch.Tensor | None, blank: int
               ) -> list[list[int]]:
    """Best-path decoding: log_probs (B, S, V), lengths (B,) real frames (None: all) -> per
    row, the argmax of each frame with repeats collapsed, then blanks dropped ("a a - a" ->
    "a a": a blank separates two equal tokens)."""
    best = log_probs.argmax(dim=-1)  # (B, S)
    s = best.shape[1]
    if lengths is None:
        lengths = torch.full((best.shape[0],), s, dtype=torch.long)
    out = []
    for row, n in zip(best.tolist(), lengths.tolist()):
        row = row[:int(n)]
        out.append([t for i, t in enumerate(row)
                    if t != blank and (i == 0 or t != row[i - 1])])
    return out


class CtcTarget(nn.Module):
    """CTC over the encoder's output; metrics `count` (transcript tokens), `infeasible` (share
    of utterances with fewer frames than their alignment needs)."""

    Config = CtcConfig

    def __init__(self, config: CtcConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        v = ctx.vocab_size
        blank = config.blank if config.blank is not None else ctx.pad_id
        if blank is None:
            raise TpError("target ctc needs a blank id, and the vocabulary has no pad token to "
                          "use as one", hint="set model.target.ctc.blank to an id that never "
                          "appears in a transcript")
        if not 0 <= blank < v:
            raise TpError(f"target ctc: blank id {blank} is outside the vocabulary (0..{v - 1})",
                          hint="set model.target.ctc.blank to an id below the vocabulary size")
        self.blank = int(blank)
        eos = ctx.special_ids.get("eos")
        if eos == self.blank:
            raise TpError(f"target ctc: the blank id {blank} is the end-of-sentence id",
                          hint="set model.target.ctc.blank to another id (the pad id)")
        self.drop: tuple[int, ...] = () if eos is None else (int(eos),)
        self.proj = nn.Linear(ctx.hidden_size, v)  # ESPnet's ctc_lo

    def _states(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (B, S, H), input lengths (B,)) of the configured source."""
        use_memory = (self.config.source == "memory"
                      or (self.config.source == "auto" and features.memory is not None))
        states, mask = ((features.memory, features.memory_mask) if use_memory
                        else (features.hidden, features.mask))
        if states is None:
            what = "an encoder-decoder model's encoder output" if use_memory else "hidden states"
            raise TpError(f"target ctc needs {what}, and the model gives none",
                          hint="use ctc with an encoder (and a decoder for source=memory), or "
                          "set model.target.ctc.source=auto")
        if mask is None:
            lengths = torch.full((states.shape[0],), states.shape[1], dtype=torch.long,
                                 device=states.device)
        else:
            lengths = mask.long().sum(dim=1)
        return states, lengths

    def log_probs(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probabilities (B, S, V) in float32, input lengths (B,))."""
        states, lengths = self._states(features)
        return self.proj(states).float().log_softmax(dim=-1), lengths

    def forward(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        labels = batch.get("lm_labels")
        if labels is None:
            raise DataError("target ctc reads the transcript from `lm_labels`, and the batch "
                            "has none", hint="use the speech data processor (or any seq2seq "
                            "one), which writes lm_labels")
        targets, target_lengths = ctc_labels(labels, self.drop)
        if bool((targets == self.blank).any()):
            raise DataError(f"target ctc: a transcript holds the blank id {self.blank}",
                            hint="set model.target.ctc.blank to an id no transcript uses")
        log_probs, lengths = self.log_probs(features)  # (B, S, V), (B,)
        per_row = F.ctc_loss(log_probs.transpose(0, 1), targets, lengths, target_lengths,
                             blank=self.blank, reduction="none",
                             zero_infinity=self.config.zero_infinity)  # (B,)
        tokens = target_lengths.sum()
        if self.config.reduction == "tokens":
            loss = per_row.sum() / tokens.clamp(min=1)
        elif self.config.reduction == "batch":
            loss = per_row.sum() / per_row.shape[0]
        else:
            loss = (per_row / target_lengths.clamp(min=1)).mean()
        with torch.no_grad():
            # an alignment needs a frame per token plus a blank between equal neighbours
            repeats = self._repeats(labels)
            infeasible = (lengths < target_lengths + repeats).float().mean()
        return TargetOutput(loss, {"count": tokens.float(), "infeasible": infeasible})

    def _repeats(self, labels: torch.Tensor) -> torch.Tensor:
        """(B,) the number of adjacent equal tokens in each row's CTC labels."""
        keep = labels != IGNORE
        for token in self.drop:
            keep &= labels != token
        # kept ids packed to the left of each row (stable: order kept), -1 after them
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
        packed = labels.gather(1, order).masked_fill(~keep.gather(1, order), -1)
        same = (packed[:, 1:] == packed[:, :-1]) & (packed[:, 1:] != -1)
        return same.sum(dim=1)

    @torch.no_grad()
    def predict(self, features: Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, S, V) log-probabilities over the encoder's frames (padded frames included: the
        mask of the chosen source says which are real); `ctc_greedy` decodes them."""
        return self.log_probs(features)[0]

    @staticmethod
    def contract_labels(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The module contract test's batch with short transcripts (two ids of each row's
        input) as `lm_labels`, so that every row's alignment is feasible."""
        labels = torch.full_like(batch["input_ids"], IGNORE)
        labels[:, :2] = batch["input_ids"][:, :2]
        return {**batch, "lm_labels": labels}
