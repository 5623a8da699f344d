"""The `lstm` encoder: a left-to-right stacked LSTM with hidden size H. # (B, T, H) -> (B, T, H)"""

from __future__ import annotations

from tpcli.model.module import BuildContext

from tp_encoders.rnn_common import RnnConfig, UniRnnEncoder


class LstmEncoder(UniRnnEncoder):
    """Unidirectional stacked LSTM; padding-aware (packed), zero at pad positions."""

    cell = "lstm"
    name = "lstm"

    class Config(RnnConfig):
        """Options of the `lstm` encoder."""

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
