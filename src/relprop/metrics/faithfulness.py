"""Faithfulness metrics: does removing the relevant features change the prediction?

Pixel flipping / region perturbation (Bach et al. 2015; Samek et al. 2017): remove features in order of
relevance, most relevant first ("morf"), and record the target-class output. A good explanation makes the
output drop fast; the area over the perturbation curve (AOPC) summarises the drop.

Infidelity (Yeh et al. 2019; Captum's ``infidelity``): how far the explanation's prediction of the score's change
under a random perturbation ``I`` is from the change itself, ``mean_k (I_k . e(x) - (f(x) - f(x - I_k)))^2`` per
sample, with ``I_k`` drawn from ``N(0, scale^2)`` per element (a ``torch.Generator`` seeded with ``seed``, float64).
``normalize=True`` first scales the explanation by the factor that fits the changes best (least squares), as
Captum's ``normalize`` does: then only the explanation's shape counts, not its scale. Lower is better.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from relprop.core import eval_mode
from relprop.errors import ConfigError, ExplanationError, boundary
from relprop.metrics._checks import check_draws, require_finite
from relprop.metrics.batch import Batch, ExplainFn

__all__ = ["FlipConfig", "FlipCurve", "Infidelity", "PixelFlipping", "pixel_flipping", "word_deletion"]

Order = Literal["morf", "lerf", "random"]


@dataclass(frozen=True)
class FlipCurve:
    """Perturbation curve of a batch.

    ``fractions`` (steps + 1,): share of features (or groups) removed at each point, from 0 to 1: ``j / steps``
    rounded to whole features (with more steps than features some points repeat).
    ``scores`` (N, steps + 1): target-class output after that removal (``scores[:, 0] = f(x)``).
    ``aopc`` (N,): ``1/(L+1) sum_{k=0}^{L} (f(x) - f(x_k))`` over the ``L + 1 = steps + 1`` points
    (Samek et al. 2017); higher means the ordering found the evidence faster.
    """

    fractions: Tensor
    scores: Tensor
    aopc: Tensor
    higher_is_better: ClassVar[bool] = True


@dataclass(frozen=True)
class FlipConfig:
    """Options of :func:`pixel_flipping`.

    ``steps``: the curve has ``steps + 1`` points; ``fill``: the replacement value (a number, or a baseline tensor
    of shape x or x[0]); ``feature_groups``: one group id per element of a sample (removed as a whole, ranked by
    summed relevance), None for single features; ``order``: ``"morf"``, ``"lerf"`` or ``"random"`` (seeded by
    ``seed``); ``batch_size``: samples per forward pass; ``progress``: a bar over the curve points.
    """

    steps: int = 20
    fill: float | int | Tensor = -1.0
    feature_groups: Tensor | None = None
    order: Order = "morf"
    seed: int = 0
    batch_size: int = 256
    progress: bool = False

    def __post_init__(self) -> None:  # checked when made, as the other metric configs are
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"FlipConfig.{name} must be an integer >= 1, got {value!r}")
        if self.order not in ("morf", "lerf", "random"):
            raise ConfigError(f"FlipConfig.order must be 'morf', 'lerf' or 'random', got {self.order!r}")

    @boundary("relprop.metrics.FlipConfig.replace")
    def replace(self, **options: Any) -> FlipConfig:
        """A copy with some fields changed; an unknown name raises :class:`~relprop.errors.ConfigError`."""
        names = [f.name for f in fields(self)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ConfigError(f"unknown options {unknown}; valid: {', '.join(names)}")
        return dataclasses.replace(self, **options)


def _groups(feature_groups: Tensor | None, feature_shape: torch.Size, device: torch.device) -> Tensor:
    """Map each element of one sample to a group index in [0, G): a LongTensor of shape (D,)."""
    size = feature_shape.numel()
    if feature_groups is None:
        return torch.arange(size, device=device)
    if feature_groups.shape != feature_shape:
        raise ExplanationError(
            f"feature_groups must have the per-sample shape of x {tuple(feature_shape)} "
            f"(one group id per element, shared by the batch), got {tuple(feature_groups.shape)}"
        )
    inverse: Tensor
    _, inverse = torch.unique(feature_groups.reshape(-1).to(device), return_inverse=True)
    return inverse  # (D,) relabelled to 0..G-1


def _fill(fill: float | int | Tensor, x: Tensor) -> Tensor:
    """Broadcast the replacement value to x's shape, keeping x's dtype (integer fills for token ids)."""
    if isinstance(fill, Tensor):
        if not x.is_floating_point() and fill.is_floating_point():
            raise ExplanationError(
                f"x holds integers ({x.dtype}) but the fill tensor is {fill.dtype}; "
                "pass an integer baseline (e.g. the padding id)"
            )
        if fill.shape not in (x.shape, x.shape[1:]) and fill.numel() != 1:
            raise ExplanationError(
                f"fill tensor must be a scalar or have shape {tuple(x.shape)} or "
                f"{tuple(x.shape[1:])}, got {tuple(fill.shape)}"
            )
        return fill.to(device=x.device, dtype=x.dtype).expand_as(x)
    if not x.is_floating_point() and float(fill) != int(fill):
        raise ExplanationError(f"x holds integers ({x.dtype}); fill={fill!r} must be an integer")
    return torch.full_like(x, int(fill) if not x.is_floating_point() else float(fill))


def _ranking(group_relevance: Tensor, order: Order, seed: int) -> Tensor:
    """Group indices per sample in removal order: (N, G)."""
    if order == "morf":
        return group_relevance.argsort(dim=1, descending=True, stable=True)
    if order == "lerf":
        return group_relevance.argsort(dim=1, stable=True)
    if order == "random":
        generator = torch.Generator().manual_seed(seed)
        keys = torch.rand(group_relevance.shape, generator=generator, dtype=torch.float64)
        return keys.argsort(dim=1).to(group_relevance.device)
    raise ExplanationError(f"unknown order {order!r}; use 'morf', 'lerf' or 'random'")


def _target_scores(model: Callable[[Tensor], Tensor], x: Tensor, target: Tensor) -> Tensor:
    """The model's output for each sample's target class: (n,)."""
    output = model(x)
    if output.ndim == 1:
        return output
    if output.ndim != 2:
        raise ExplanationError(
            f"the model must return (N, classes) or (N,), got shape {tuple(output.shape)}"
        )
    if bool(((target < 0) | (target >= output.shape[1])).any()):
        raise ExplanationError(f"target out of range: the model has {output.shape[1]} outputs, got {target.tolist()}")
    return output.gather(1, target[:, None])[:, 0]


@boundary("relprop.metrics.pixel_flipping")
def pixel_flipping(
    model: nn.Module,
    x: Tensor,
    relevance: Tensor,
    target: int | Tensor,
    config: FlipConfig = FlipConfig(),
    **options: Any,
) -> FlipCurve:
    """Perturbation curve: remove the most relevant features first and track the target output.

    The options are the fields of :class:`FlipConfig`, given as ``config`` or as keywords (``steps=10``), which
    override the fields of ``config``. At point ``j`` the ``round(j / steps * G)`` highest-ranked features (or
    groups) are replaced by
    ``fill`` (a number, or a baseline tensor of shape x or x[0]); ``G`` is the number of features, or of
    groups when ``feature_groups`` (per-sample shape of x, one id per element, e.g. the time step of each
    value) is given: a group is removed as a whole, ranked by its summed relevance. ``order`` is
    ``"morf"`` (most relevant first), ``"lerf"`` (least relevant first) or ``"random"`` (seeded; the
    chance-level baseline). Inputs may be integer token ids with an integer ``fill`` (see
    :func:`word_deletion`). Runs under ``torch.no_grad`` in eval mode (each module's flag is restored),
    in batches of ``batch_size`` samples; ``progress`` shows a tqdm bar over the curve points.

    Example
    -------
    >>> model = torch.nn.Linear(4, 2, bias=False)
    >>> curve = pixel_flipping(model, torch.randn(3, 4), torch.randn(3, 4), 0, FlipConfig(steps=4, fill=0.0))
    >>> curve.scores.shape, curve.aopc.shape
    (torch.Size([3, 5]), torch.Size([3]))
    """
    config = config.replace(**options) if options else config
    steps, fill, order, batch_size = config.steps, config.fill, config.order, config.batch_size
    if relevance.shape != x.shape:
        raise ExplanationError(
            f"relevance must have the shape of x {tuple(x.shape)}, got {tuple(relevance.shape)}; "
            "for token inputs sum relevance over the embedding axis first"
        )
    if steps < 1 or batch_size < 1:
        raise ExplanationError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    require_finite(relevance)
    n = x.shape[0]
    given = torch.as_tensor(target)
    if given.is_floating_point() or given.is_complex() or given.dtype == torch.bool:
        raise ExplanationError(f"target must be class indices (integers), got {target!r}")
    target = given.to(device=x.device, dtype=torch.long)
    if target.shape not in ((), (n,)):
        raise ExplanationError(f"target must be an int or ({n},), got {tuple(target.shape)}")
    target = target.expand(n)  # (N,)
    groups = _groups(config.feature_groups, x.shape[1:], x.device)  # (D,)
    count = int(groups.max()) + 1 if groups.numel() else 0
    flat_relevance = relevance.detach().reshape(n, -1).to(device=x.device, dtype=torch.float64)  # (N, D)
    group_relevance = torch.zeros(n, count, dtype=torch.float64, device=x.device)
    group_relevance.index_add_(1, groups, flat_relevance)  # (N, G)
    ranking = _ranking(group_relevance, order, config.seed)  # (N, G)
    rank = torch.empty_like(ranking)
    rank.scatter_(1, ranking, torch.arange(count, device=x.device).expand(n, count))  # rank of each group
    element_rank = rank[:, groups].reshape(x.shape)  # removal position of every element
    baseline = _fill(fill, x)
    removed = torch.round(torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64) * count)
    fractions = removed / max(count, 1)  # the share actually removed (repeats when steps > count)
    removed_counts = removed.long().tolist()

    columns = []
    with torch.no_grad(), eval_mode(model):
        for removed in tqdm(removed_counts, disable=not config.progress, desc="pixel flipping", leave=False):
            column = []
            for start in range(0, n, batch_size):
                part = slice(start, start + batch_size)
                flipped = torch.where(element_rank[part] < removed, baseline[part], x[part])
                column.append(_target_scores(model, flipped, target[part]))
            columns.append(torch.cat(column))
    scores = torch.stack(columns, dim=1)  # (N, steps + 1)
    aopc = (scores[:, :1] - scores).mean(dim=1)
    return FlipCurve(fractions=fractions.to(scores), scores=scores, aopc=aopc)


@boundary("relprop.metrics.word_deletion")
def word_deletion(
    model: nn.Module,
    tokens: Tensor,
    relevance: Tensor,
    target: int | Tensor,
    *,
    pad_id: int = 0,
    steps: int = 20,
    order: Order = "morf",
    seed: int = 0,
    batch_size: int = 256,
) -> FlipCurve:
    """Word deletion: :func:`pixel_flipping` on token ids (N, L), replacing deleted words by ``pad_id``.

    ``relevance`` is per word (N, L), or per embedding value (N, L, E), which is summed over E first.
    Padding positions count as features; with zero relevance they are "removed" (a no-op) after the
    positive words under ``"morf"``. The model receives integer token ids throughout.
    """
    if relevance.ndim == tokens.ndim + 1:
        relevance = relevance.sum(dim=-1)  # (N, L, E) -> (N, L)
    config = FlipConfig(steps=steps, fill=pad_id, order=order, seed=seed, batch_size=batch_size)
    return pixel_flipping(model, tokens, relevance, target, config)


@dataclass(frozen=True)
class PixelFlipping:
    """:func:`pixel_flipping` as a dataset metric: scores ``aopc`` (N,) and ``curve`` (N, steps + 1)."""

    config: FlipConfig = FlipConfig()
    higher_is_better: ClassVar[bool] = True

    @boundary("relprop.metrics.PixelFlipping")
    def score(self, batch: Batch) -> dict[str, Tensor]:
        curve = pixel_flipping(batch.model, batch.x, batch.relevance, batch.target, self.config)
        return {"aopc": curve.aopc, "curve": curve.scores}


pixel_flipping.higher_is_better = True  # type: ignore[attr-defined]
word_deletion.higher_is_better = True  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Infidelity:
    """Mean squared error of the explanation's prediction of the score's change under ``samples`` Gaussian
    perturbations of standard deviation ``scale`` (module docstring).

    Example
    -------
    >>> model = torch.nn.Linear(3, 2, bias=False).double().eval()
    >>> exact = lambda model, x, target: model.weight[target].detach().expand_as(x)  # a linear model's own change
    >>> x, target = torch.ones(2, 3, dtype=torch.float64), torch.tensor([0, 1])
    >>> bool(Infidelity(samples=4)(model, x, target, exact).max() < 1e-28)
    True
    """

    scale: float = 0.1
    samples: int = 10
    seed: int = 0
    normalize: bool = False
    higher_is_better: ClassVar[bool] = False

    @boundary("relprop.metrics.Infidelity")
    def __post_init__(self) -> None:
        check_draws(self.samples, self.scale, "scale")

    def perturbations(self, shape: torch.Size) -> list[Tensor]:
        """The ``samples`` perturbations ``I_k`` this metric subtracts from x, float64 of ``shape``."""
        generator = torch.Generator().manual_seed(self.seed)
        return [self.scale * torch.randn(shape, generator=generator, dtype=torch.float64)
                for _ in range(self.samples)]

    @boundary("relprop.metrics.Infidelity")
    def __call__(self, model: nn.Module, x: Tensor, target: Tensor, explain: ExplainFn) -> Tensor:
        """Per-sample infidelity (N,) of ``explain`` at ``x`` for ``target``."""
        if not x.is_floating_point():
            raise ConfigError("it perturbs the input, so x must be a float tensor (embed token ids first)")
        relevance = explain(model, x, target).detach().reshape(len(x), -1).double()  # (N, D)
        require_finite(relevance)
        predicted, actual = [], []
        with torch.no_grad(), eval_mode(model):
            full = _target_scores(model, x, target).double()
            for perturbation in self.perturbations(x.shape):
                moved = _target_scores(model, x - perturbation.to(x), target).double()
                predicted.append((relevance * perturbation.reshape(len(x), -1)).sum(1))
                actual.append(full - moved)
        a, b = torch.stack(predicted, 1), torch.stack(actual, 1)  # (N, samples)
        if self.normalize:  # the least-squares scale of the explanation
            energy = (a * a).sum(1)
            beta = torch.where(energy > 0, (a * b).sum(1) / energy.clamp(min=torch.finfo(a.dtype).tiny), 0.0)
            a = beta.unsqueeze(1) * a
        return ((a - b) ** 2).mean(1)

    def score(self, batch: Batch) -> Tensor:
        return self(batch.model, batch.x, batch.target, batch.explain)
