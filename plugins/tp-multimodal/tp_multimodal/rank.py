"""Image-text retrieval score (HF ViltForImageAndTextRetrieval): one matching score per pair.

    hidden (B, T, H) -> first position -> pooler: dense (H, H) -> tanh -> rank_output (1, H)
        -> score (B, 1) -> binary cross-entropy against `itm_labels` (B,) (1 = matched, 0 = not)

`itm`'s head with one output instead of two: a two-class softmax is a sigmoid of the difference
of its logits, so this is the same model family with one output fewer, and what HF keeps of
ViLT's ITM head for retrieval (the candidates of a text or an image ranked by the score).
"""

from __future__ import annotations

from tp_multimodal.itm import ItmTarget
from tpcli.model.module import TargetConfig


class RankTarget(ItmTarget):
    """A matching score from the first token; metrics `acc` (score > 0 = matched), `count`."""

    Config = TargetConfig  # spelled out: `tp modules` reads it from this file, not importing
    outputs = 1
    name = "rank"
