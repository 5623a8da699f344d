"""The `bilstm` encoder (ELMo's biLM body): a forward and a backward stacked LSTM of H/2 each.

Output (B, T, H) = [forward (H/2) | backward (H/2)]. The two stacks are independent (no mixing
between layers), so the forward half at t has read only tokens <= t and the backward half only
tokens >= t: what the `bilm` target needs.
"""

from __future__ import annotations

from tpcli.model.module import BuildContext

from tp_encoders.rnn_common import BiRnnEncoder, RnnConfig


class BilstmEncoder(BiRnnEncoder):
    """Bidirectional LSTM as two independent directional stacks; needs an even hidden_size."""

    name = "bilstm"

    class Config(RnnConfig):
        """Options of the `bilstm` encoder (layers are per direction)."""

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__(config, ctx, "lstm")
