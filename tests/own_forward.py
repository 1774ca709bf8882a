"""Layer subclasses whose own forward computes their map in another way than the stock class, as libraries write
them, for the tests against twins, zennit and the loop over targets: a convolution that pads per call (its one
F.conv2d call takes the padded input) and a pruned Linear (its one F.linear call takes the input as it is and a
masked weight). relprop explains them through that call (:class:`relprop.core.OwnForward`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SamePerCallConv", "MaskedLinear", "same_pads"]


def same_pads(spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
              dilation: Sequence[int]) -> list[tuple[int, int]]:
    """TensorFlow's "same" padding per spatial dimension, (before, after): the output has ``ceil(size / stride)``
    positions, and where the total padding is odd the extra row or column goes after."""
    pads = []
    for size, k, s, d in zip(spatial, kernel, stride, dilation):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads.append((total // 2, total - total // 2))
    return pads


class SamePerCallConv(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding, computed per call from the input's size (timm's
    ``Conv2dSame``, in the ``tf_`` EfficientNets and MobileNets): asymmetric where the total is odd, which
    ``nn.Conv2d``'s own padding cannot express. Build it with ``padding=0``."""

    def forward(self, x: Tensor) -> Tensor:
        pads = same_pads(x.shape[2:], self.kernel_size, self.stride, self.dilation)
        flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants the last dimension first
        return self._conv_forward(F.pad(x, flat), self.weight, self.bias)


class MaskedLinear(nn.Linear):
    """A pruned linear layer: its forward multiplies the weight by a fixed 0/1 mask (a buffer)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        every_third = torch.arange(out_features * in_features).reshape(out_features, in_features) % 3 == 0
        self.register_buffer("mask", (~every_third).float())  # every third weight pruned

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)
