"""The training loss of the thesis models on MAJ sequences (the heatmap layout is ``relprop.data.from_sequence``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["maj_loss"]


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
