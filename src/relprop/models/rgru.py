"""The thesis's ReLU GRU ("rgru", Chormai 2018).

``in_t = relu(x_t W_in)``, then the :class:`~relprop.models.cells.RGRUCell`: ``r, z = sigmoid([in_t, h_{t-1}]
W_g + b_g)``, ``n = relu([in_t, r * h_{t-1}] W_c)``, ``h_t = (1 - z) n + z h_{t-1}``; ``y = h_T W_out``.
Dropout on ``in_t`` and ``h_t``. The thesis does not state the sizes of its rgru; the defaults follow the
R-LSTM (input 256, recurrent 72).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .cells import RGRUCell
from .rlstm import RLSTM, RLSTMConfig

__all__ = ["RGRUConfig", "RGRU"]


@dataclass(frozen=True)
class RGRUConfig(RLSTMConfig):
    """Sizes of :class:`RGRU` (input 256, recurrent 72)."""


class RGRU(RLSTM):
    """(batch, steps, features) -> logits (batch, classes).

    >>> import torch
    >>> RGRU(RGRUConfig(height=8, step_width=2, input=6, recurrent=5))(torch.zeros(2, 12, 16)).shape
    torch.Size([2, 10])
    """

    cell_type: ClassVar[type[nn.Module]] = RGRUCell
    gate_dropout: ClassVar[bool] = False

    def __init__(self, config: RGRUConfig = RGRUConfig()) -> None:
        super().__init__(config)
