"""Complexity metrics: is the explanation concentrated on few features (easier to read) or spread over all?

Both work on the magnitudes ``a_i = |R_i|`` of one sample's relevance, flattened to ``D`` values.

- Sparseness (Chalasani et al. 2020): the Gini index of ``a``. With ``a_(1) <= ... <= a_(D)`` sorted,
  ``G = sum_i (2 i - D - 1) a_(i) / (D sum_i a_i)``; 0 when all magnitudes are equal, ``1 - 1/D`` when one
  feature holds everything. Higher is better (sparser).
- Entropy / complexity (Bhatt et al. 2020): with ``p_i = a_i / sum_j a_j``, ``H = -sum_i p_i log p_i`` (natural
  log, ``0 log 0 = 0``); 0 for a single feature, ``log D`` for a uniform map. Lower is better.

An all-zero map has no distribution: both scores are 0 for it (never NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from relprop.errors import ExplanationError, boundary
from relprop.metrics._checks import require_finite
from relprop.metrics.batch import Batch

__all__ = ["Entropy", "Sparseness", "entropy", "sparseness"]


def _magnitudes(relevance: Tensor) -> Tensor:
    """``|R|`` per sample as float64 (N, D)."""
    if relevance.ndim < 2 or relevance.shape[0] == 0:
        raise ExplanationError(f"relevance must be (N, ...) with N >= 1, got "
                               f"shape {tuple(relevance.shape)}")
    require_finite(relevance)
    return relevance.detach().reshape(relevance.shape[0], -1).abs().double()  # (N, D)


@boundary("relprop.metrics.sparseness")
def sparseness(relevance: Tensor) -> Tensor:
    """Gini index of ``|R|`` per sample (higher: sparser).

    Example
    -------
    >>> sparseness(torch.tensor([[0.0, 0.0, 0.0, 2.0], [1.0, -1.0, 1.0, 1.0]]))
    tensor([0.7500, 0.0000], dtype=torch.float64)
    """
    a = _magnitudes(relevance).sort(dim=1).values  # (N, D) ascending
    d = a.shape[1]
    weights = 2 * torch.arange(1, d + 1, dtype=a.dtype, device=a.device) - d - 1  # (D,)
    total = a.sum(dim=1)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, (a * weights).sum(dim=1) / (d * safe), torch.zeros_like(total))


@boundary("relprop.metrics.entropy")
def entropy(relevance: Tensor) -> Tensor:
    """Shannon entropy (nats) of ``|R| / sum |R|`` per sample (lower: more concentrated).

    Example
    -------
    >>> entropy(torch.tensor([[0.0, 3.0], [1.0, -1.0]]))
    tensor([0.0000, 0.6931], dtype=torch.float64)
    """
    a = _magnitudes(relevance)
    total = a.sum(dim=1, keepdim=True)
    p = a / torch.where(total > 0, total, torch.ones_like(total))  # (N, D)
    return torch.where(p > 0, -p * p.log(), torch.zeros_like(p)).sum(dim=1)


@dataclass(frozen=True)
class Sparseness:
    """:func:`sparseness` as a dataset metric."""

    higher_is_better: ClassVar[bool] = True

    def score(self, batch: Batch) -> Tensor:
        return sparseness(batch.relevance)


@dataclass(frozen=True)
class Entropy:
    """:func:`entropy` as a dataset metric."""

    higher_is_better: ClassVar[bool] = False

    def score(self, batch: Batch) -> Tensor:
        return entropy(batch.relevance)


sparseness.higher_is_better = True  # type: ignore[attr-defined]
entropy.higher_is_better = False  # type: ignore[attr-defined]
