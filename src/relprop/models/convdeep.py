"""The thesis's "convdeep" and "conv+deep" (lateral) RNNs (Chormai 2018): conv front end + deep cell.

Per step: conv 5x5x24 -> ReLU -> sum-pool -> conv 3x3x32 -> ReLU -> sum-pool (28x7 -> 14x4 -> 7x2, 448
features) -> ``relu(. W_1)`` (448 -> 128) -> the deep cell (hidden 128, recurrent 256) -> 32 -> 10.
``lateral=True`` ("conv+deep"): conv1 also sees its own output at t-1 and conv2 its own output at t-1.
"""

from __future__ import annotations

from dataclasses import dataclass

from .blocks import ConvFrontEnd
from .deep import Deep, DeepConfig

__all__ = ["ConvDeepConfig", "ConvDeep"]


@dataclass(frozen=True)
class ConvDeepConfig(DeepConfig):
    """Sizes of :class:`ConvDeep` (thesis: channels (24, 32), input 128, hidden 128, recurrent 256, 32)."""

    input: int = 128
    channels: tuple[int, int] = (24, 32)
    lateral: bool = False
    pool_factor: float = 2.0


class ConvDeep(Deep):
    """(batch, steps, height * step_width) -> logits (batch, classes).

    >>> import torch
    >>> config = ConvDeepConfig(height=8, step_width=2, channels=(3, 4), input=6, hidden=5, recurrent=4,
    ...                         output_hidden=3, lateral=True)
    >>> ConvDeep(config)(torch.zeros(2, 12, 16)).shape
    torch.Size([2, 10])
    """

    def __init__(self, config: ConvDeepConfig = ConvDeepConfig()) -> None:
        front = ConvFrontEnd(
            config.height, config.step_width, config.channels, config.lateral, config.pool_factor
        )
        super().__init__(config, front=front)
