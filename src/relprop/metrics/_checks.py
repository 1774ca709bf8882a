"""Checks the metrics share."""

from __future__ import annotations

from torch import Tensor

from relprop.errors import ConfigError, ExplanationError
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


def check_draws(samples: object, size: float, size_name: str) -> None:
    """The settings of a metric that draws ``samples`` random perturbations of a given ``size``: an integer >= 1
    and a finite number > 0."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1 or not 0 < size < float("inf"):
        raise ConfigError(f"samples must be an integer >= 1 and {size_name} a finite number > 0, got {samples!r} "
                          f"and {size!r}")
