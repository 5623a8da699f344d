"""The `birnn` encoder: a forward and a backward stack of H/2 each, of a chosen cell.

Output (B, T, H) = [forward (H/2) | backward (H/2)], the stacks independent as in `bilstm`
(which is `birnn` with `cell: lstm`).
"""

from __future__ import annotations

from pydantic import Field

from tpcli.model.module import BuildContext

from tp_encoders.rnn_common import BiRnnEncoder, Cell, RnnConfig


class BirnnEncoder(BiRnnEncoder):
    """Bidirectional recurrent encoder (LSTM, GRU or tanh RNN cells); needs an even hidden_size."""

    name = "birnn"

    class Config(RnnConfig):
        """Options of the `birnn` encoder (layers are per direction)."""

        cell: Cell = Field("gru", description="recurrent cell: lstm, gru or rnn (tanh)")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__(config, ctx, config.cell)
