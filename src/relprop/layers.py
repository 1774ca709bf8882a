"""Explicit modules for operations that would otherwise be functional, so that LRP rules can attach by type.

During training they are plain sums and products; while explaining, composites give them their rules
(:class:`~relprop.rules.Proportional` for :class:`Sum`, :class:`~relprop.rules.SignalTakeAll` for
:class:`GatedProduct`).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Sum", "GatedProduct"]


class Sum(nn.Module):
    """Element-wise sum of any number of same-shaped tensors (e.g. a residual connection).

    >>> import torch
    >>> Sum()(torch.ones(2), torch.ones(2))
    tensor([2., 2.])
    """

    def forward(self, *terms: Tensor) -> Tensor:
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total


class GatedProduct(nn.Module):
    """Element-wise product ``gate * signal`` of a gate (e.g. a sigmoid) and the signal it lets through.

    >>> import torch
    >>> GatedProduct()(torch.tensor([0.5]), torch.tensor([4.0]))
    tensor([2.])
    """

    def forward(self, gate: Tensor, signal: Tensor) -> Tensor:
        return gate * signal
