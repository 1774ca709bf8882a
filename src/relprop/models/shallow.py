"""The thesis's "shallow" RNN (Chormai 2018): one hidden layer that sees the pixels and the recurrent state.

``h_t = relu([x_t, r_{t-1}] W_in)`` (features + recurrent -> hidden), ``r_t = relu(dropout(h_t) W_rec)``,
``y = h_T W_out``; bias-free, zero initial state. ``W_in`` is a :class:`~relprop.models.blocks.MixedLinear`:
under the thesis's DTD its pixel part gets zB and its recurrent part z+ with one shared denominator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .blocks import MixedLinear, ReluStateCell, SequenceConfig, check_sequence, init_thesis_
from .cells import StationaryDropout
from .recurrent import Recurrent

__all__ = ["ShallowConfig", "ShallowCell", "Shallow"]


@dataclass(frozen=True)
class ShallowConfig(SequenceConfig):
    """Sizes of :class:`Shallow` (thesis: hidden 256, recurrent 256); dropout on h_t before W_rec."""

    hidden: int = 256
    recurrent: int = 256
    stationary: bool = False


class ShallowCell(ReluStateCell):
    """One step: x_t (batch, features), state (r_{t-1},) -> h_t (batch, hidden), (r_t,) (batch, recurrent)."""

    def __init__(
        self, input_size: int, hidden_size: int, *, recurrent_size: int, dropout: float = 0.0, stationary: bool = False
    ) -> None:
        super().__init__(recurrent_size)
        self.input = MixedLinear(input_size + recurrent_size, hidden_size, mixed_split=input_size)
        self.input_activation = nn.ReLU()
        self.dropout = StationaryDropout(dropout, stationary)
        self._add_state_map(hidden_size)

    def forward(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        (r,) = state
        h = self.input_activation(self.input(torch.cat([x, r], dim=-1)))  # (batch, features + recurrent) -> hidden
        return h, self._next_state(self.dropout(h))


class Shallow(nn.Module):
    """(batch, steps, features) -> logits (batch, classes).

    >>> Shallow(ShallowConfig(height=8, step_width=2, hidden=6, recurrent=5))(torch.zeros(2, 12, 16)).shape
    torch.Size([2, 10])
    """

    def __init__(self, config: ShallowConfig = ShallowConfig()) -> None:
        super().__init__()
        self.config = config
        self.recurrent = Recurrent(
            ShallowCell,
            config.features,
            config.hidden,
            recurrent_size=config.recurrent,
            dropout=config.dropout,
            stationary=config.stationary,
        )
        self.output = nn.Linear(config.hidden, config.classes, bias=False)
        init_thesis_(self, config.softplus_bias)

    def forward(self, x: Tensor) -> Tensor:
        check_sequence(x, self.config, type(self).__name__)
        h, _ = self.recurrent(x)  # (batch, steps, hidden)
        return self.output(h[:, -1])  # type: ignore[no-any-return]
