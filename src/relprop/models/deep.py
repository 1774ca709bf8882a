"""The thesis's "deep" RNN (Chormai 2018) and its stationary-dropout variant "deep_sd".

Per step: ``a_t = relu(x_t W_1)`` (features -> input), ``h_t = relu([a_t, r_{t-1}] W_cell)``
(input + recurrent -> hidden), ``r_t = relu(h_t W_rec)`` (hidden -> recurrent); after the last step
``o = relu(h_T W_o1)`` and ``y = o W_o2``. Bias-free, zero initial state. Dropout on ``a_t``, on
``[a_t, r_{t-1}]`` and on ``h_t``
(stationary masks in deep_sd), and ordinary dropout on ``h_T`` before the output layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .blocks import ConvFrontEnd, InputStage, ReluStateCell, SequenceConfig, check_sequence, init_thesis_
from .cells import StationaryDropout
from .recurrent import Recurrent

__all__ = ["DeepConfig", "DeepCell", "Deep"]


@dataclass(frozen=True)
class DeepConfig(SequenceConfig):
    """Sizes of :class:`Deep` (thesis: input 256, hidden 128, recurrent 256, output_hidden 32)."""

    input: int = 256
    hidden: int = 128
    recurrent: int = 256
    output_hidden: int = 32
    stationary: bool = False


class DeepCell(ReluStateCell):
    """One step: a_t (batch, input), state (r_{t-1},) -> h_t (batch, hidden), (r_t,) (batch, recurrent)."""

    def __init__(
        self, input_size: int, hidden_size: int, *, recurrent_size: int, dropout: float = 0.0, stationary: bool = False
    ) -> None:
        super().__init__(recurrent_size)
        self.input_dropout = StationaryDropout(dropout, stationary)
        self.concat_dropout = StationaryDropout(dropout, stationary)
        self.cell = nn.Linear(input_size + recurrent_size, hidden_size, bias=False)
        self.cell_activation = nn.ReLU()
        self.hidden_dropout = StationaryDropout(dropout, stationary)
        self._add_state_map(hidden_size)

    def forward(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        (r,) = state
        ar = self.concat_dropout(torch.cat([self.input_dropout(x), r], dim=-1))  # (batch, input + recurrent)
        h = self.cell_activation(self.cell(ar))
        return h, self._next_state(self.hidden_dropout(h))


class Deep(InputStage):
    """(batch, steps, features) -> logits (batch, classes); ``front`` (conv variants) replaces the raw pixels.

    >>> Deep(DeepConfig(height=8, step_width=2, input=6, hidden=5, recurrent=4, output_hidden=3))(
    ...     torch.zeros(2, 12, 16)).shape
    torch.Size([2, 10])
    """

    def __init__(self, config: DeepConfig = DeepConfig(), front: ConvFrontEnd | None = None) -> None:
        super().__init__()
        self.config = config
        self._add_input_stage(config.features, config.input, front)
        self.recurrent = Recurrent(
            DeepCell,
            config.input,
            config.hidden,
            recurrent_size=config.recurrent,
            dropout=config.dropout,
            stationary=config.stationary,
        )
        self.output_dropout = nn.Dropout(config.dropout)
        self.output_hidden = nn.Linear(config.hidden, config.output_hidden, bias=False)
        self.output_activation = nn.ReLU()
        self.output = nn.Linear(config.output_hidden, config.classes, bias=False)
        init_thesis_(self, config.softplus_bias)

    def forward(self, x: Tensor) -> Tensor:
        check_sequence(x, self.config, type(self).__name__)
        a = self._input_stage(x)  # (batch, steps, input)
        h, _ = self.recurrent(a)  # (batch, steps, hidden)
        o = self.output_activation(self.output_hidden(self.output_dropout(h[:, -1])))
        return self.output(o)  # type: ignore[no-any-return]
