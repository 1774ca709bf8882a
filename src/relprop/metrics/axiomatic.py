"""Axiomatic metrics: properties an explanation should satisfy by construction."""

from __future__ import annotations

import torch
from torch import Tensor

from relprop.errors import ExplanationError

__all__ = ["conservation_error"]


def conservation_error(relevance: Tensor, output_score: Tensor, *, absolute: bool = False) -> Tensor:
    """Gap between the total relevance and the explained output, per sample (lower is better).

    Relative: ``|sum_i R_i - f(x)| / max(|f(x)|, tiny)``; with ``absolute=True``: ``|sum_i R_i - f(x)|``.
    Conservation (Bach et al. 2015) asks for ``sum_i R_i = f(x)``; ``tiny`` is the smallest positive
    normal number of the dtype, so a zero output with non-zero total relevance gives a huge (finite) error.

    Example
    -------
    >>> conservation_error(torch.tensor([[1.0, 2.0]]), torch.tensor([4.0]))
    tensor([0.2500])
    """
    if relevance.ndim < 1 or output_score.shape != relevance.shape[:1]:
        raise ExplanationError(
            "relprop.metrics.axiomatic.conservation_error: output_score must have shape (N,) matching "
            f"relevance (N, ...); got relevance {tuple(relevance.shape)} and output_score "
            f"{tuple(output_score.shape)}"
        )
    dtype = torch.promote_types(relevance.dtype, output_score.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    total = relevance.to(dtype).reshape(relevance.shape[0], -1).sum(dim=1)  # (N,)
    score = output_score.to(device=total.device, dtype=dtype)
    gap = (total - score).abs()
    if absolute:
        return gap
    return gap / score.abs().clamp(min=torch.finfo(dtype).tiny)


conservation_error.higher_is_better = False  # type: ignore[attr-defined]
