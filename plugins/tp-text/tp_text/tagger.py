"""Token classification target (sequence labelling: NER, chunking, POS), with an optional CRF.

    hidden (B, T, H) -> dropout -> linear (C, H) -> emissions (B, T, C)
    without crf: cross-entropy per labelled token; predict = argmax per token
    with crf:    a linear-chain CRF (transitions (C, C), start (C,), end (C,)); loss = negative
                 log-likelihood of the gold tag path, averaged over the batch's sentences;
                 predict = the Viterbi best path

Batch keys: `tagger_labels` (B, T), a tag index per position and -100 where a position carries
no tag (padding, [CLS]/[SEP], the second and later word pieces of a word), and optionally
`word_starts` (B, T) bool, True where a tag is to be predicted (the first piece of each word),
so that `predict` knows the positions when no labels are given (`tp infer`).

The CRF's chain runs over the tagged positions only: positions in between (continuation
pieces) are skipped, so transitions link the tags of consecutive *words*, as the tag grammar
(`I-X` follows `B-X` or `I-X`) is stated. The skipping is done with masks inside the forward
algorithm and Viterbi (a step where the mask is off leaves the state unchanged), batched over
rows of different lengths, all in log space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tpcli.errors import DataError, TpError
from tpcli.layers.dropout import Dropout
from tpcli.model.module import BuildContext, Features, TargetConfig, TargetOutput

IGNORE = -100
LABELS_KEY = "tagger_labels"
STARTS_KEY = "word_starts"


def crf_log_partition(emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor,
                      start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """log Z per row (B,): log-sum-exp of the scores of every tag path over the masked
    positions (the forward algorithm). emissions (B, T, C), mask (B, T) bool (any pattern: the
    chain skips positions where it is off), transitions[i, j] scores tag i followed by tag j.
    A row with no masked position has the single empty path: log Z = 0."""
    b, t_len, c = emissions.shape
    alpha = emissions.new_zeros(b, c)  # (B, C) log-scores of paths ending in each tag
    started = torch.zeros(b, dtype=torch.bool, device=emissions.device)  # (B,)
    for t in range(t_len):
        step = torch.logsumexp(alpha.unsqueeze(2) + transitions, dim=1)  # (B, C)
        nxt = torch.where(started.unsqueeze(1), step, start.expand(b, c)) + emissions[:, t]
        on = mask[:, t]
        alpha = torch.where(on.unsqueeze(1), nxt, alpha)
        started = started | on
    z = torch.logsumexp(alpha + end, dim=1)  # (B,)
    return torch.where(started, z, torch.zeros_like(z))


def crf_path_score(emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor,
                   transitions: torch.Tensor, start: torch.Tensor, end: torch.Tensor
                   ) -> torch.Tensor:
    """Score (B,) of the given tag path over the masked positions: start + emissions +
    transitions between consecutive masked positions + end. tags (B, T) (any value where the
    mask is off)."""
    b, t_len, _ = emissions.shape
    tags = tags.clamp(min=0)  # IGNORE where the mask is off: any index will do there
    score = emissions.new_zeros(b)  # (B,)
    prev = torch.zeros(b, dtype=torch.long, device=emissions.device)  # (B,)
    started = torch.zeros(b, dtype=torch.bool, device=emissions.device)
    for t in range(t_len):
        y, on = tags[:, t], mask[:, t]  # (B,), (B,)
        link = torch.where(started, transitions[prev, y], start[y])  # (B,)
        emit = emissions[:, t].gather(1, y.unsqueeze(1)).squeeze(1)  # (B,)
        score = score + torch.where(on, link + emit, torch.zeros_like(emit))
        prev = torch.where(on, y, prev)
        started = started | on
    return score + torch.where(started, end[prev], torch.zeros_like(score))


def crf_nll(emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor,
            transitions: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood (B,) of the gold paths: log Z - score(gold)."""
    return (crf_log_partition(emissions, mask, transitions, start, end)
            - crf_path_score(emissions, tags, mask, transitions, start, end))


def viterbi(emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor,
            start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """The best tag path (B, T) long over the masked positions, -100 elsewhere."""
    b, t_len, c = emissions.shape
    score = emissions.new_zeros(b, c)  # (B, C) best score of a path ending in each tag
    started = torch.zeros(b, dtype=torch.bool, device=emissions.device)
    keep = torch.arange(c, device=emissions.device).expand(b, c)  # (B, C) "no step" pointers
    pointers = []
    for t in range(t_len):
        best, arg = (score.unsqueeze(2) + transitions).max(dim=1)  # (B, C): over previous tag
        on = mask[:, t]
        nxt = torch.where(started.unsqueeze(1), best, start.expand(b, c)) + emissions[:, t]
        # where nothing links back (off, or the first tagged position) the pointer keeps the tag
        pointers.append(torch.where((on & started).unsqueeze(1), arg, keep))
        score = torch.where(on.unsqueeze(1), nxt, score)
        started = started | on
    tag = (score + end).argmax(dim=1)  # (B,)
    path = torch.full((b, t_len), IGNORE, dtype=torch.long, device=emissions.device)
    for t in range(t_len - 1, -1, -1):
        path[:, t] = torch.where(mask[:, t], tag, torch.full_like(tag, IGNORE))
        tag = pointers[t].gather(1, tag.unsqueeze(1)).squeeze(1)
    return path


class TaggerTarget(nn.Module):
    """A tag for each token; metrics `acc` (over labelled tokens) and `count` (of them)."""

    class Config(TargetConfig):
        labels: int = Field(2, ge=2, description="number of tags (the task's tag list)")
        crf: bool = Field(
            False, description="a linear-chain CRF over the tags: learned transition scores, "
            "loss = negative log-likelihood of the gold path, prediction = Viterbi best path "
            "(instead of an independent softmax per token)")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        self._labels_checked = False
        c = config.labels
        self.dropout = Dropout(ctx.dropout)
        self.classifier = nn.Linear(ctx.hidden_size, c)
        if config.crf:  # zero scores: no preference among tag transitions until trained
            self.transitions = nn.Parameter(torch.zeros(c, c))
            self.start_transitions = nn.Parameter(torch.zeros(c))
            self.end_transitions = nn.Parameter(torch.zeros(c))

    def emissions(self, features: Features) -> torch.Tensor:
        """Features -> per-token tag scores (B, T, C), in float32."""
        if features.hidden is None:
            raise TpError("target tagger needs hidden states from the encoder",
                          hint="give the model an encoder (a pooling alone has no tokens)")
        return self.classifier(self.dropout(features.hidden)).float()  # (B, T, C)

    def _crf(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.transitions, self.start_transitions, self.end_transitions

    def _labels(self, batch: dict[str, torch.Tensor], features: Features) -> torch.Tensor:
        labels = batch.get(LABELS_KEY)
        if labels is None or labels.dim() != 2:
            raise TpError(f"target tagger needs `{LABELS_KEY}` (B, T), a tag index per token "
                          "and -100 where there is none, in the batch",
                          hint="use a sequence-labelling task (`--task tagging`)")
        labels = labels.long()
        c = self.config.labels
        # on a GPU only the first batch is read (each read waits for the device), see `cls`
        if labels.device.type == "cpu" or not self._labels_checked:
            self._labels_checked = True
            real = labels[labels != IGNORE]
            if real.numel() and (int(real.min()) < 0 or int(real.max()) >= c):
                bad = int(real.min()) if int(real.min()) < 0 else int(real.max())
                raise DataError(f"target tagger: tag {bad} is outside 0..{c - 1}",
                                hint=f"set model.target.tagger.labels to the number of tags "
                                f"(now {c}), or fix the dataset's tags")
        if features.mask is not None:  # a tag on padding is never scored
            labels = labels.masked_fill(~features.mask, IGNORE)
        return labels  # (B, T)

    def forward(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        labels = self._labels(batch, features)  # (B, T)
        scores = self.emissions(features)  # (B, T, C)
        tagged = labels != IGNORE  # (B, T)
        count = tagged.sum().float()
        if self.config.crf:
            nll = crf_nll(scores, labels, tagged, *self._crf())  # (B,)
            rows = tagged.any(dim=1).sum().float()
            loss = nll.sum() / rows.clamp(min=1.0)  # mean over sentences with a tag
        else:
            loss = F.cross_entropy(scores.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                   reduction="sum") / count.clamp(min=1.0)
        with torch.no_grad():
            pred = self._decode(scores, tagged)
            acc = ((pred == labels) & tagged).sum().float() / count.clamp(min=1.0)
        return TargetOutput(loss, {"acc": acc, "count": count})

    def _decode(self, scores: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """(B, T) tag indices at `where`, -100 elsewhere."""
        if self.config.crf:
            return viterbi(scores, where, *self._crf())
        return scores.argmax(dim=-1).masked_fill(~where, IGNORE)

    def predict(self, features: Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T) long: the predicted tag at each position to tag, -100 elsewhere. Positions:
        `word_starts` when the batch has it, else the labelled ones, else every real token."""
        scores = self.emissions(features)  # (B, T, C)
        where = batch.get(STARTS_KEY)
        if where is None and batch.get(LABELS_KEY) is not None:
            where = batch[LABELS_KEY] != IGNORE
        if where is None:
            where = torch.ones(scores.shape[:2], dtype=torch.bool, device=scores.device)
        where = where.bool()
        if features.mask is not None:
            where = where & features.mask
        return self._decode(scores, where)
