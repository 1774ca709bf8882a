"""The thesis's ReLU GRU ("rgru", Chormai 2018).

``in_t = relu(x_t W_in)``, then the :class:`~relprop.models.cells.RGRUCell` on ``in_t``: gates
``r, i = sigmoid([in_t, h_{t-1}] W_g + b_g)`` (``i``, the thesis's input gate, is ``1 - z`` of the cell),
candidate ``n = relu([in_t, r * h_{t-1}] W_c)``, ``h_t = i * n + (1 - i) * h_{t-1}``; ``y = h_T W_out``.
Ordinary dropout (a new mask at every step, as the thesis's ``tf.nn.dropout``) on ``in_t``, on both gates, on
the candidate and on ``h_t``; the keep gate is one minus the dropped-out input gate. The stored thesis code
does not give the sizes of its rgru models; the defaults follow the R-LSTM (input 256, recurrent 72).
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
    """Sizes of :class:`RGRU` (input 256, recurrent 72); dropout on the gates and the candidate too, as the
    thesis's ``rgru.py``."""

    cell_dropout: bool = True


class RGRU(RLSTM):
    """(batch, steps, features) -> logits (batch, classes).

    >>> import torch
    >>> RGRU(RGRUConfig(height=8, step_width=2, input=6, recurrent=5))(torch.zeros(2, 12, 16)).shape
    torch.Size([2, 10])
    """

    cell_type: ClassVar[type[nn.Module]] = RGRUCell

    def __init__(self, config: RGRUConfig = RGRUConfig()) -> None:
        super().__init__(config)
