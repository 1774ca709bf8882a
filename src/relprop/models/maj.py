"""Helpers for the thesis models on MAJ sequences: the training loss and the heatmap layout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.maj import from_sequence
from ..errors import ExplanationError

__all__ = ["maj_loss", "maj_heatmap_layout"]


def maj_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Softmax cross-entropy over ``[logits, 0]``: the thesis adds one constant-zero logit (never the target).

    The extra logit bounds how confident the model can be without large logits; it is a training device only,
    the model itself returns the 10 logits.

    >>> maj_loss(torch.zeros(2, 10), torch.tensor([0, 3])).item() == torch.log(torch.tensor(11.0)).item()
    True
    """
    if logits.dim() != 2 or y.shape != logits.shape[:1]:
        raise ValueError(
            f"maj_loss expects logits (batch, classes) and labels (batch,), got "
            f"{tuple(logits.shape)} and {tuple(y.shape)}"
        )
    padded = torch.cat([logits, logits.new_zeros(logits.shape[0], 1)], dim=1)  # (batch, classes + 1)
    return F.cross_entropy(padded, y)


def maj_heatmap_layout(relevance: Tensor, height: int = 28) -> Tensor:
    """Relevance of sequences (N, steps, H*w) as images (N, H, steps*w): 28x84 for MNIST-MAJ.

    Each step's ``H*w`` values are a row-major ``H x w`` strip; strips are placed left to right.

    >>> maj_heatmap_layout(torch.zeros(2, 12, 196)).shape
    torch.Size([2, 28, 84])
    """
    if relevance.dim() != 3 or height <= 0 or relevance.shape[-1] % height:
        raise ExplanationError(
            f"maj_heatmap_layout expects relevance (N, steps, height * width) with height={height}, got "
            f"shape {tuple(relevance.shape)}; pass the strip height (28 for MNIST-MAJ, 8 for digits-maj)"
        )
    return from_sequence(relevance, height)
