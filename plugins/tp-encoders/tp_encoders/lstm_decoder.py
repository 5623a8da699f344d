"""The `lstm` decoder (CoVe's MT-LSTM decoder, Luong et al. 2015 global attention).

    y (B, T', H) target embeddings -> stacked LSTM (state from zeros, or from the memory)
      -> h (B, T', H)
    attention "dot":     score(h_t, m_s) = h_t . m_s
              "general": score(h_t, m_s) = h_t . (W_a m_s)
      alpha = softmax over the real memory positions; c_t = sum_s alpha_ts m_s
      -> out_t = tanh(W_c [c_t; h_t])                                    # (B, T', H)
    attention "none": out_t = h_t (a plain seq2seq LSTM decoder)

No input feeding (Luong's feeding of out_{t-1} into step t): without it the LSTM runs over all
T' positions at once (cuDNN) instead of one step at a time. The output at t depends only on
y_1..y_t and the memory, so teacher-forced training is causal by construction.

Padding: target rows are right-padded (checked); padding is at the end, so the LSTM's real
positions never see it, and outputs at padded target positions are zero. Padded memory
positions get exactly zero attention weight; a memory row with no real position gives c_t = 0.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from tpcli.layers.dropout import Dropout
from tpcli.layers.pooling import last_pool
from tpcli.model.module import BuildContext

from tp_encoders.rnn_common import RnnConfig, lengths_of, make_rnn, zero_padding


class LstmDecoder(nn.Module):
    """Stacked LSTM over the target with Luong attention over the encoder's memory."""

    class Config(RnnConfig):
        """Options of the `lstm` decoder."""

        attention: Literal["dot", "general", "none"] = Field(
            "general", description="Luong score over the memory: dot (h . m), general "
            "(h . W m), or none (no attention: the LSTM's output is the decoder's)")
        init_state: Literal["zeros", "memory"] = Field(
            "zeros", description="the LSTM's initial state: zeros, or every layer's hidden state "
            "set to the memory's last real position (cell state zero)")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        h = ctx.hidden_size
        self.rnn = make_rnn("lstm", h, h, config, ctx)
        drop = ctx.dropout if config.dropout is None else config.dropout
        # W_a of the "general" score; applied to the memory once, not to every query
        self.attn_in = nn.Linear(h, h, bias=False) if config.attention == "general" else None
        # W_c of the attentional output tanh(W_c [c; h]); Luong's W_c has no bias
        self.combine = nn.Linear(2 * h, h, bias=False) if config.attention != "none" else None
        self.dropout = Dropout(drop)

    def _initial_state(self, memory: torch.Tensor, memory_mask: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.config.init_state == "zeros":
            return None  # torch's default: zeros
        last = last_pool(memory, memory_mask)  # (B, H), zeros for an all-padding row
        h0 = last.unsqueeze(0).expand(self.config.layers, -1, -1).contiguous()  # (L, B, H)
        return h0, torch.zeros_like(h0)

    def attend(self, h: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, T', H), memory (B, T, H) -> (context (B, T', H), weights (B, T', T))."""
        keys = self.attn_in(memory) if self.attn_in is not None else memory  # (B, T, H)
        scores = torch.bmm(h, keys.transpose(1, 2)).float()  # (B, T', T)
        if memory_mask is not None:
            keep = memory_mask.bool()[:, None, :]  # (B, 1, T)
            # a finite floor: exp underflows to exactly 0 next to any real score, and a row
            # without real positions stays finite (its weights are zeroed just below)
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=-1) * keep.to(scores.dtype)
        else:
            weights = torch.softmax(scores, dim=-1)
        weights = weights.to(memory.dtype)  # (B, T', T)
        return torch.bmm(weights, memory), weights  # (B, T', H), (B, T', T)

    def forward(self, y: torch.Tensor, tmask: torch.Tensor | None, memory: torch.Tensor,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """y (B, T', H), tmask (B, T') True = real, memory (B, T, H), memory_mask (B, T)
        -> (B, T', H), zero at padded target positions."""
        lengths_of(tmask, "lstm decoder")  # refuses a target that is not right-padded
        h, _ = self.rnn(y, self._initial_state(memory, memory_mask))  # (B, T', H)
        if self.combine is not None:
            context, _ = self.attend(h, memory, memory_mask)  # (B, T', H)
            h = torch.tanh(self.combine(torch.cat([context, h], dim=-1)))  # (B, T', H)
        return zero_padding(self.dropout(h), tmask)
