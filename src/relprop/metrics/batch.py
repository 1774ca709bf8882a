"""What a metric sees of one batch when :func:`relprop.explain_dataset` scores it.

A dataset metric is any object with ``score(batch) -> Tensor | Mapping[str, Tensor]`` (per-sample values, first
axis = batch) and a ``higher_is_better`` attribute, or a plain function ``f(batch)`` passed by name in a mapping.
:class:`Batch` hands it the model, the input, the explained classes, the :class:`~relprop.api.Explanation`, the
optional ground truth of the batch (``mask``), and ``explain``: the same method with the same options, for metrics
that explain again (perturbed inputs, randomised models).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from torch import Tensor, nn

from relprop.errors import ConfigError

if TYPE_CHECKING:
    from relprop.api import Explanation

__all__ = ["Batch", "BatchMetric", "ExplainFn", "Scores"]

ExplainFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``explain(model, x, target) -> relevance`` shaped like ``x``: the explanation a metric asks for again."""

Scores = Tensor | Mapping[str, Tensor]
"""Per-sample values of a metric: one tensor (batch, ...) or several named ones."""


@dataclass(frozen=True)
class Batch:
    """One explained batch: ``x`` (batch, ...), ``target`` (batch,), ``mask`` the batch's ground truth or None."""

    model: nn.Module
    x: Tensor
    target: Tensor
    explanation: Explanation
    explain: ExplainFn
    mask: Tensor | None = None

    @property
    def relevance(self) -> Tensor:
        """The explanation's relevance, detached: (batch, ...)."""
        return self.explanation.relevance.detach()

    def require_mask(self, metric: str) -> Tensor:
        """The ground truth, or a :class:`~relprop.errors.ConfigError` naming ``metric`` when the loader gave none."""
        if self.mask is None:
            raise ConfigError(
                f"metric {metric} needs ground truth: let the loader yield (x, target, mask) or a mapping with 'mask'"
            )
        return self.mask


class BatchMetric(Protocol):
    """A metric :func:`relprop.explain_dataset` can run: per-sample scores of one :class:`Batch`."""

    @property
    def higher_is_better(self) -> bool: ...

    def score(self, batch: Batch) -> Scores: ...
