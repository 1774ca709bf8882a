"""The thesis's R-LSTM ("rlstm") and R-LSTM with stationary dropout ("rlstm_sd") (Chormai 2018).

``in_t = relu(x_t W_in)`` (features -> input), then the :class:`~relprop.models.cells.RLSTMCell` on ``in_t``
(``c^ = relu([in_t, h_{t-1}] W_c)``, ``c_t = f c_{t-1} + i c^``, ``h_t = o c_t``), and ``y = h_T W_out``.
rlstm: ordinary dropout on ``in_t``, the three gates, the candidate ``c^`` and ``h_t`` (the thesis's
``rlstm.py``); rlstm_sd: one mask per sequence on ``in_t`` and ``h_t``, none on the gates or the candidate
(``rlstm_persisted_dropout.py``). Recurrent size 72 (75 for Fashion-MNIST in the thesis).
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


class RLSTM(InputStage):
    """(batch, steps, features) -> logits (batch, classes); ``front`` (conv variants) replaces the raw pixels.

    >>> import torch
    >>> RLSTM(RLSTMConfig(height=8, step_width=2, input=6, recurrent=5))(torch.zeros(2, 12, 16)).shape
    torch.Size([2, 10])
    """

    cell_type: ClassVar[type[nn.Module]] = RLSTMCell
    gate_dropout: ClassVar[bool] = True  # ordinary dropout on the gates (none with stationary dropout)
    candidate_dropout: ClassVar[bool] = True  # ordinary dropout on the candidate (none with stationary dropout)

    def __init__(self, config: RLSTMConfig = RLSTMConfig(), front: ConvFrontEnd | None = None) -> None:
        super().__init__()
        self.config = config
        self._add_input_stage(config.features, config.input, front)
        options: dict[str, Any] = {"dropout": config.dropout, "stationary": config.stationary}
        ordinary = 0.0 if config.stationary else config.dropout
        if self.gate_dropout:
            options["gate_dropout"] = ordinary
        if self.candidate_dropout:
            options["candidate_dropout"] = ordinary
        self.recurrent = Recurrent(self.cell_type, config.input, config.recurrent, **options)
        self.output = nn.Linear(config.recurrent, config.classes, bias=False)
        init_thesis_(self, config.softplus_bias)

    def forward(self, x: Tensor) -> Tensor:
        check_sequence(x, self.config, type(self).__name__)
        a = self._input_stage(x)  # (batch, steps, input)
        h, _ = self.recurrent(a)  # (batch, steps, recurrent)
        return self.output(h[:, -1])  # type: ignore[no-any-return]
