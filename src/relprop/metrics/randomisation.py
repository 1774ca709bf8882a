"""Randomisation metrics: does the explanation depend on what the model learned?

Model-parameter randomisation test (Adebayo et al. 2018): re-draw the parameters of the model's layers, from
the output layer towards the input, explain again, and compare each new explanation with the original one. An
explanation that stays similar when the weights it should reflect are random is not explaining the model. Lower
similarity is better.

- ``order="cascading"``: layer ``k`` is randomised on top of layers ``1..k-1`` (output first); the last entry is
  the fully random model.
- ``order="independent"``: only layer ``k`` is random, the others keep their trained values.

A layer is every module with its own parameters and a ``reset_parameters()`` method (``nn.Linear``, ``nn.Conv2d``,
``nn.LSTM``, norms, ...), in the order of ``model.named_modules()``. Each layer is re-drawn by its
``reset_parameters()`` with the global torch seed set to ``seed`` (the same seed for every layer; the global random
state is restored afterwards), which is what Quantus's ``MPRT`` does with its ``seed + 1``. The user's model is
never changed: the test runs on a deep copy. Similarity per sample and layer: Spearman rank correlation of the
flattened relevance (ties get their average rank, as ``scipy.stats.spearmanr``), Pearson correlation, or cosine;
with ``absolute=True`` on ``|R|``. A sample whose original explanation is constant (all zero, say) scores NaN at
every layer: there is nothing to compare, and the 0 of a constant row would be the best score (Quantus gives NaN
too). Relevance with NaN or infinite values is an error.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from relprop.errors import ConfigError, ExplanationError, boundary
from relprop.metrics._checks import require_finite
from relprop.metrics.batch import Batch, ExplainFn

__all__ = ["ModelRandomisation", "RandomisationResult", "similarity"]

Similarity = Literal["spearman", "pearson", "cosine"]


def _ranks(values: Tensor) -> Tensor:
    """Ranks 1..D per row, ties averaged: (N, D)."""
    ordered, order = values.sort(dim=1)
    first = torch.searchsorted(ordered, ordered, right=False)
    after = torch.searchsorted(ordered, ordered, right=True)
    average = (first + after + 1).to(torch.float64) / 2  # mean of the 1-based ranks first+1 .. after
    return torch.empty_like(average).scatter_(1, order, average)


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return _cosine(a, b)


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    denominator = a.norm(dim=1) * b.norm(dim=1)
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, (a * b).sum(dim=1) / safe, torch.zeros_like(denominator))


@boundary("relprop.metrics.similarity")
def similarity(a: Tensor, b: Tensor, kind: Similarity = "spearman") -> Tensor:
    """Row-wise similarity of two (N, ...) maps, flattened per sample; a constant row scores 0.

    Example
    -------
    >>> similarity(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 20.0, 25.0]])).round(decimals=6)
    tensor([1.], dtype=torch.float64)
    """
    if a.shape != b.shape:
        raise ExplanationError(f"the two maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    require_finite(a, "first map")
    require_finite(b, "second map")
    a, b = a.detach().reshape(len(a), -1).double(), b.detach().reshape(len(b), -1).double()  # (N, D)
    if kind == "spearman":
        return _pearson(_ranks(a), _ranks(b))
    if kind == "pearson":
        return _pearson(a, b)
    if kind == "cosine":
        return _cosine(a, b)
    raise ConfigError(f"unknown similarity {kind!r}; use 'spearman', 'pearson' or 'cosine'")


@dataclass(frozen=True)
class RandomisationResult:
    """``layers``: the randomised modules in test order; ``similarity`` (N, layers) to the original explanation."""

    layers: tuple[str, ...]
    similarity: Tensor

    @property
    def last(self) -> Tensor:
        """Similarity after the last step (cascading: the fully random model), (N,)."""
        return self.similarity[:, -1]


def _layers(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules()
            if callable(getattr(module, "reset_parameters", None)) and any(True for _ in module.parameters(False))]


@dataclass(frozen=True)
class ModelRandomisation:
    """Model-parameter randomisation test: similarity of the explanation before and after randomising layers.

    Example
    -------
    >>> import relprop
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval()
    >>> grad_x_input = lambda m, x, t: relprop.explain(m, x, t, method="gradient_x_input").relevance
    >>> result = ModelRandomisation()(model, torch.randn(5, 4), torch.zeros(5, dtype=torch.long), grad_x_input)
    >>> result.layers, result.similarity.shape
    (('2', '0'), torch.Size([5, 2]))
    """

    order: Literal["cascading", "independent"] = "cascading"
    seed: int = 42
    kind: Similarity = "spearman"
    absolute: bool = False
    higher_is_better: ClassVar[bool] = False

    def __post_init__(self) -> None:  # checked when made, not at the first batch
        if self.order not in ("cascading", "independent"):
            raise ConfigError(f"unknown order {self.order!r}; use 'cascading' or 'independent'")
        if self.kind not in ("spearman", "pearson", "cosine"):
            raise ConfigError(f"unknown similarity {self.kind!r}; use 'spearman', 'pearson' or 'cosine'")

    @boundary("relprop.metrics.ModelRandomisation")
    def __call__(self, model: nn.Module, x: Tensor, target: Tensor, explain: ExplainFn) -> RandomisationResult:
        if self.order not in ("cascading", "independent"):
            raise ConfigError(f"unknown order {self.order!r}; use 'cascading' or 'independent'")
        names = _layers(model)[::-1]  # output layer first
        if not names:
            raise ConfigError(f"{type(model).__name__} has no layer with parameters to randomise")
        original = self._map(explain(model, x, target))
        require_finite(original)
        trained = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        randomised = copy.deepcopy(model)
        scores = []
        for name in names:
            if self.order == "independent":
                randomised.load_state_dict(trained)
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(self.seed)
                randomised.get_submodule(name).reset_parameters()  # type: ignore[operator]
            scores.append(similarity(original, self._map(explain(randomised, x, target)), self.kind))
        result = torch.stack(scores, dim=1)  # (N, layers)
        # a sample whose original explanation is constant (all zero) has nothing to compare: its similarity would
        # be 0, the best score, for an explainer that ignores the model
        flat = original.reshape(len(original), -1)
        constant = (flat == flat[:, :1]).all(dim=1)
        return RandomisationResult(tuple(names), torch.where(constant[:, None], torch.nan, result))

    def _map(self, relevance: Tensor) -> Tensor:
        relevance = relevance.detach()
        return relevance.abs() if self.absolute else relevance

    def score(self, batch: Batch) -> Tensor:
        """Per sample and layer (N, layers), in the order of :attr:`RandomisationResult.layers`."""
        return self(batch.model, batch.x, batch.target, batch.explain).similarity
