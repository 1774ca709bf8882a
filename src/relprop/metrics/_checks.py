"""Checks the metrics share."""

from __future__ import annotations

from torch import Tensor

from relprop.errors import ExplanationError
from relprop.validate import non_finite_rows


def require_finite(values: Tensor, name: str = "relevance", where: str | None = None) -> None:
    """Raise an :class:`~relprop.errors.ExplanationError` naming the samples (rows of ``values``) that hold NaN or
    infinite values, which no score means anything for: a comparison with NaN is False, so a score would quietly
    fall to its "no evidence" value (0) or rank NaN first. ``where`` names the metric (inside a
    :func:`~relprop.errors.boundary` the boundary does)."""
    if not values.is_floating_point() or values.ndim == 0:
        return
    bad = non_finite_rows(values)
    if bad:
        listed = f"{bad[:10]}{' ...' if len(bad) > 10 else ''}"
        raise ExplanationError(f"{where + ': ' if where else ''}the {name} of samples {listed} holds NaN or infinite "
                               "values, which have no score; explain them again (see the explanation's details)")
