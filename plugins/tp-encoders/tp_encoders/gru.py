"""The `gru` encoder: a left-to-right stacked GRU with hidden size H. # (B, T, H) -> (B, T, H)"""

from __future__ import annotations

from tpcli.model.module import BuildContext

from tp_encoders.rnn_common import RnnConfig, UniRnnEncoder


class GruEncoder(UniRnnEncoder):
    """Unidirectional stacked GRU; padding-aware (packed), zero at pad positions."""

    cell = "gru"
    name = "gru"

    class Config(RnnConfig):
        """Options of the `gru` encoder."""

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
