"""Robustness metrics: does the explanation stay put when the input barely changes?

Max-sensitivity (Yeh et al. 2019), estimated by Monte-Carlo: draw ``samples`` perturbations ``delta_k`` uniformly
from the box ``[-radius, radius]^D`` and report, per sample,
``max_k ||e(x + delta_k) - e(x)||_2 / ||e(x)||_2`` (``relative=True``, as Quantus does by default; where
``e(x) = 0`` that is 0 when the explanation stays zero and infinite when it moves) or the unnormalised
``max_k ||e(x + delta_k) - e(x)||_2``. The target class stays the one explained at ``x``. Lower is
better. The noise is drawn from a ``torch.Generator`` seeded with ``seed``, in float64, one ``x``-shaped draw per
sample: ``delta_k = radius * (2 * torch.rand(x.shape) - 1)``, so runs are reproducible and independent of the
global random state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from relprop.errors import ConfigError, boundary
from relprop.metrics._checks import check_draws, require_finite
from relprop.metrics.batch import Batch, ExplainFn

__all__ = ["MaxSensitivity"]


@dataclass(frozen=True)
class MaxSensitivity:
    """Largest change of the explanation under ``samples`` uniform input perturbations of size ``radius``.

    Example
    -------
    >>> model = torch.nn.Linear(3, 2, bias=False).double().eval()
    >>> saliency = lambda model, x, target: model.weight[target].detach().expand_as(x)  # constant in x
    >>> x, target = torch.ones(2, 3, dtype=torch.float64), torch.tensor([0, 1])
    >>> MaxSensitivity(radius=0.1, samples=4)(model, x, target, saliency)
    tensor([0., 0.], dtype=torch.float64)
    """

    radius: float = 0.2
    samples: int = 10
    seed: int = 0
    relative: bool = True
    higher_is_better: ClassVar[bool] = False

    @boundary("relprop.metrics.MaxSensitivity")
    def __post_init__(self) -> None:
        check_draws(self.samples, self.radius, "radius")

    def noise(self, shape: torch.Size) -> list[Tensor]:
        """The ``samples`` perturbations this metric adds, float64 of ``shape`` (the definition, for reference)."""
        generator = torch.Generator().manual_seed(self.seed)
        return [self.radius * (2 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1)
                for _ in range(self.samples)]

    @boundary("relprop.metrics.MaxSensitivity")
    def __call__(self, model: nn.Module, x: Tensor, target: Tensor, explain: ExplainFn) -> Tensor:
        """Per-sample max-sensitivity (N,) of ``explain`` at ``x`` for ``target``."""
        if not x.is_floating_point():
            raise ConfigError("it perturbs the input, so x must be a float tensor (embed token ids first)")
        reference = explain(model, x, target).detach().reshape(len(x), -1).double()  # (N, D)
        require_finite(reference)
        scale = reference.norm(dim=1)
        worst = torch.zeros_like(scale)
        for delta in self.noise(x.shape):
            moved = explain(model, x + delta.to(x), target).detach().reshape(len(x), -1).double()
            require_finite(moved, "relevance at a perturbed input")
            change = (moved - reference).norm(dim=1)  # (N,)
            # relative to a zero explanation: no change is 0, any change is infinitely large
            relative = torch.where(change > 0, change / scale, torch.zeros_like(change))
            worst = torch.maximum(worst, relative if self.relative else change)
        return worst

    def score(self, batch: Batch) -> Tensor:
        return self(batch.model, batch.x, batch.target, batch.explain)
