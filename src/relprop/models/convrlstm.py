"""The thesis's conv R-LSTMs (Chormai 2018): "convrlstm_sd" and the lateral "conv+rlstm_sd".

The convdeep front end (conv 5x5x24 -> sum-pool -> conv 3x3x32 -> sum-pool, 448 features), ``relu(. W_in)``
(448 -> 128) and the R-LSTM cell with stationary dropout (recurrent 96). ``lateral=True``: conv1 sees
``[x_t, conv1_{t-1}]`` and conv2 sees ``[pool1_t, conv2_{t-1}]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .blocks import ConvFrontEnd
from .rlstm import RLSTM, RLSTMConfig

__all__ = ["ConvRLSTMConfig", "ConvRLSTM"]


@dataclass(frozen=True)
class ConvRLSTMConfig(RLSTMConfig):
    """Sizes of :class:`ConvRLSTM` (thesis: channels (24, 32), input 128, recurrent 96, stationary)."""

    input: int = 128
    recurrent: int = 96
    stationary: bool = True  # (cell_dropout stays off: convrlstm.py drops out in_t and h_t only, also without)
    channels: tuple[int, int] = (24, 32)
    lateral: bool = False
    pool_factor: float = 2.0


class ConvRLSTM(RLSTM):
    """(batch, steps, height * step_width) -> logits (batch, classes).

    >>> import torch
    >>> config = ConvRLSTMConfig(height=8, step_width=2, channels=(3, 4), input=6, recurrent=5)
    >>> ConvRLSTM(config)(torch.zeros(2, 12, 16)).shape
    torch.Size([2, 10])
    """

    def __init__(self, config: ConvRLSTMConfig = ConvRLSTMConfig()) -> None:
        front = ConvFrontEnd(
            config.height, config.step_width, config.channels, config.lateral, config.pool_factor
        )
        super().__init__(config, front=front)
