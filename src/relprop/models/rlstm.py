"""The thesis's R-LSTM ("rlstm") and R-LSTM with stationary dropout ("rlstm_sd") (Chormai 2018).

``in_t = relu(x_t W_in)`` (features -> input), then the :class:`~relprop.models.cells.RLSTMCell` on ``in_t``
(``c^ = relu([in_t, h_{t-1}] W_c)``, ``c_t = f c_{t-1} + i c^``, ``h_t = o c_t``), and ``y = h_T W_out``.
rlstm: ordinary dropout (a new mask at every step) on ``in_t`` and ``h_t`` (the thesis repository's last
``rlstm.py``, commit 359196c); rlstm_sd: one mask per sequence on the same two (``rlstm_persisted_dropout.py``),
so that the two differ only in whether the dropout is stationary. rlstm_full_dropout: ordinary dropout on
``in_t``, the three gates, the candidate ``c^`` and ``h_t`` (an earlier ``rlstm.py``, commit 7659581). Recurrent
size 72 (the thesis's rlstm: 75 on Fashion-MNIST).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from .blocks import ConvFrontEnd, InputStage, SequenceConfig, check_sequence, init_thesis_
from .cells import RLSTMCell
from .recurrent import Recurrent

__all__ = ["RLSTMConfig", "RLSTM"]


@dataclass(frozen=True)
class RLSTMConfig(SequenceConfig):
    """Sizes of :class:`RLSTM` (thesis: input 256, recurrent 72)."""

    input: int = 256
    recurrent: int = 72
    stationary: bool = False
    cell_dropout: bool = False  # ordinary dropout on the gates and the candidate too (none with stationary dropout)


class RLSTM(InputStage):
    """(batch, steps, features) -> logits (batch, classes); ``front`` (conv variants) replaces the raw pixels.

    >>> import torch
    >>> RLSTM(RLSTMConfig(height=8, step_width=2, input=6, recurrent=5))(torch.zeros(2, 12, 16)).shape
    torch.Size([2, 10])
    """

    cell_type: ClassVar[type[nn.Module]] = RLSTMCell

    def __init__(self, config: RLSTMConfig = RLSTMConfig(), front: ConvFrontEnd | None = None) -> None:
        super().__init__()
        self.config = config
        self._add_input_stage(config.features, config.input, front)
        options: dict[str, Any] = {"dropout": config.dropout, "stationary": config.stationary}
        ordinary = config.dropout if config.cell_dropout and not config.stationary else 0.0
        options["gate_dropout"] = options["candidate_dropout"] = ordinary  # (0: the cells' default, no dropout)
        self.recurrent = Recurrent(self.cell_type, config.input, config.recurrent, **options)
        self.output = nn.Linear(config.recurrent, config.classes, bias=False)
        init_thesis_(self, config.softplus_bias)

    def forward(self, x: Tensor) -> Tensor:
        check_sequence(x, self.config, type(self).__name__)
        a = self._input_stage(x)  # (batch, steps, input)
        h, _ = self.recurrent(a)  # (batch, steps, recurrent)
        return self.output(h[:, -1])  # type: ignore[no-any-return]
