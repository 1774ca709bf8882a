"""Activation maximisation: class prototypes ``x* = argmax_x log p(c|x)`` (Erhan et al. 2009).

With a density model of the data as prior the objective becomes ``log p(c|x) + log p(x)``
("AM + expert", Montavon et al. 2018, Methods for interpreting and understanding deep neural networks),
which keeps the prototype close to the data instead of drifting to an adversarial pattern.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from relprop.core import eval_mode
from relprop.errors import ConfigError, ExplanationError, boundary
from relprop.safety import explaining

__all__ = [
    "DensityModel", "GaussianMixturePrior", "GaussianPrior", "Maximization", "activation_maximization", "prototypes",
]

class DensityModel(Protocol):
    """Anything with a differentiable ``log_prob(x (N, ...)) -> (N,)``."""

    def log_prob(self, x: Tensor) -> Tensor: ...


def _flatten64(x: Tensor, dim: int) -> Tensor:
    """(N, ...) -> (N, D) in float64, checking that D matches the prior."""
    flat = x.reshape(x.shape[0], -1)  # (N, D)
    if flat.shape[1] != dim:
        raise ExplanationError(
            f"the prior was fitted on {dim} features but x has shape {tuple(x.shape)} "
            f"({flat.shape[1]} features per sample); fit the prior on data flattened like x"
        )
    return flat.to(torch.float64)


def _gaussian_log_density(diff: Tensor, scale_tril: Tensor) -> Tensor:
    """log N(diff | 0, L L^T) for diff (..., D, N) and Cholesky factors L (..., D, D): (..., N)."""
    z = torch.linalg.solve_triangular(scale_tril, diff, upper=False)  # (..., D, N)
    log_det = 2.0 * torch.diagonal(scale_tril, dim1=-2, dim2=-1).log().sum(-1)  # (...,)
    dim = diff.shape[-2]
    density: Tensor = -0.5 * (dim * math.log(2 * math.pi) + log_det[..., None] + z.square().sum(-2))
    return density


def _cholesky(covariance: Tensor, what: str) -> Tensor:
    factor: Tensor
    factor, info = torch.linalg.cholesky_ex(covariance)
    if bool((info != 0).any()):
        raise ExplanationError(
            f"the {what} covariance is not positive definite (constant features?); "
            "use more shrinkage / regularisation"
        )
    return factor


@dataclass(frozen=True)
class GaussianPrior:
    """Multivariate normal density of the data, ``log p(x) = log N(x | mean, L L^T)``, in float64."""

    mean: Tensor  # (D,)
    scale_tril: Tensor  # (D, D)

    @classmethod
    @boundary("relprop.methods.maximization.GaussianPrior.fit")
    def fit(cls, data: Tensor, *, shrinkage: float | None = None) -> GaussianPrior:
        """Fit mean and shrunk covariance ``(1 - s) S + s tr(S)/D I`` to data (N, ...).

        ``shrinkage=None`` picks ``s`` by Ledoit-Wolf (scikit-learn); constant features (e.g. MNIST
        borders) need ``s > 0``.
        """
        flat = data.detach().reshape(data.shape[0], -1).to(torch.float64)  # (N, D)
        if shrinkage is None:
            from sklearn.covariance import ledoit_wolf_shrinkage

            shrinkage = float(ledoit_wolf_shrinkage(flat.cpu().numpy()))
        mean = flat.mean(0)
        centred = flat - mean
        empirical = centred.T @ centred / flat.shape[0]  # (D, D)
        scale = empirical.trace() / flat.shape[1]
        eye = torch.eye(flat.shape[1], dtype=torch.float64, device=flat.device)
        covariance = (1 - shrinkage) * empirical + shrinkage * scale * eye
        return cls(mean=mean, scale_tril=_cholesky(covariance, "Gaussian prior"))

    @boundary("relprop.methods.maximization.GaussianPrior.log_prob")
    def log_prob(self, x: Tensor) -> Tensor:
        """Log density per sample, (N, ...) -> (N,), differentiable in x."""
        flat = _flatten64(x, self.mean.shape[0])
        diff = (flat - self.mean.to(flat.device)).T  # (D, N)
        result = _gaussian_log_density(diff, self.scale_tril.to(flat.device))
        return result.to(x.dtype) if x.is_floating_point() else result


@dataclass(frozen=True)
class GaussianMixturePrior:
    """Mixture of full-covariance Gaussians, fitted by scikit-learn, evaluated in torch (float64)."""

    log_weights: Tensor  # (k,)
    means: Tensor  # (k, D)
    scale_trils: Tensor  # (k, D, D)

    @classmethod
    @boundary("relprop.methods.maximization.GaussianMixturePrior.fit")
    def fit(
        cls, data: Tensor, k: int = 10, seed: int = 0, *, reg_covar: float = 1e-3
    ) -> GaussianMixturePrior:
        """Fit ``k`` components to data (N, ...) by EM; ``reg_covar`` is added to each covariance diagonal."""
        from sklearn.mixture import GaussianMixture

        flat = data.detach().reshape(data.shape[0], -1).to(torch.float64)  # (N, D)
        if not 1 <= k <= len(flat):
            raise ConfigError(f"a mixture of {k} components needs at least {k} samples to fit, got {len(flat)}: "
                              "fit on more data or use fewer components")
        mixture = GaussianMixture(
            n_components=k, covariance_type="full", reg_covar=reg_covar, random_state=seed
        )
        mixture.fit(flat.cpu().numpy())
        covariances = torch.as_tensor(mixture.covariances_, dtype=torch.float64, device=flat.device)
        return cls(
            log_weights=torch.as_tensor(mixture.weights_, dtype=torch.float64, device=flat.device).log(),
            means=torch.as_tensor(mixture.means_, dtype=torch.float64, device=flat.device),
            scale_trils=_cholesky(covariances, "mixture component"),
        )

    @boundary("relprop.methods.maximization.GaussianMixturePrior.log_prob")
    def log_prob(self, x: Tensor) -> Tensor:
        """Log density per sample, (N, ...) -> (N,), differentiable in x."""
        flat = _flatten64(x, self.means.shape[1])
        diff = (flat[None] - self.means.to(flat.device)[:, None]).transpose(1, 2)  # (k, D, N)
        per_component = _gaussian_log_density(diff, self.scale_trils.to(flat.device))  # (k, N)
        result = torch.logsumexp(per_component + self.log_weights.to(flat.device)[:, None], dim=0)
        return result.to(x.dtype) if x.is_floating_point() else result


def _into_ball(u: Tensor, norm: float | None) -> Tensor:
    """x = u scaled into the L2 ball of radius ``norm`` per sample (identity inside the ball)."""
    if norm is None:
        return u
    squared = u.reshape(u.shape[0], -1).square().sum(1)  # (B,)
    outside = squared > norm**2
    safe = torch.where(outside, squared, torch.ones_like(squared))
    scale = torch.where(outside, norm * safe.rsqrt(), torch.ones_like(squared))
    return u * scale.reshape(-1, *([1] * (u.ndim - 1)))


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.device, parameter.dtype
    return torch.device("cpu"), torch.get_default_dtype()


@dataclass(frozen=True)
class Maximization:
    """How :func:`prototypes` optimises: the objective's prior, the constraints and the optimiser.

    The objective is ``log p(c|x) + prior_weight * prior.log_prob(x)`` (no prior: ``log p(c|x)`` alone).
    A density's log-likelihood grows with the number of features (hundreds of nats for a 28x84 MAJ
    sequence) while ``log p(c|x) <= 0``, so a weight of 1 lets the prior win and every class comes out as
    the mean input; the default 0.01 keeps both terms in play on MNIST-sized inputs. Constraints:
    ``box=(low, high)`` clamps every value; ``norm=r`` keeps ``||x||_2 <= r`` per sample. ``steps`` of Adam
    with learning rate ``lr``; the start is seeded noise of scale 0.01 (``seed``) unless an ``init`` is given.

    Example
    -------
    >>> Maximization(steps=50, norm=3.0)
    Maximization(steps=50, lr=0.05, prior=None, prior_weight=0.01, norm=3.0, box=(-1.0, 1.0), seed=0)
    """

    steps: int = 200
    lr: float = 0.05
    prior: DensityModel | None = None
    prior_weight: float = 0.01
    norm: float | None = None
    box: tuple[float, float] | None = (-1.0, 1.0)
    seed: int = 0

    @boundary("relprop.methods.maximization.Maximization")
    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or not math.isfinite(self.lr):
            raise ConfigError(f"steps must be >= 1 and lr a positive number, got steps={self.steps}, "
                              f"lr={self.lr}")
        if not (math.isfinite(self.prior_weight) and self.prior_weight >= 0):
            raise ConfigError(f"prior_weight must be a finite number >= 0, got {self.prior_weight}")
        box = self.box
        if box is not None and not (math.isfinite(box[0]) and math.isfinite(box[1]) and box[0] < box[1]):
            raise ConfigError(f"box must be (low, high) with low < high, got {box}")
        if self.norm is not None and (not self.norm > 0 or (box is not None and not box[0] <= 0 <= box[1])):
            raise ConfigError(
                f"norm={self.norm} needs norm > 0 and a box containing 0 (got box={box}); "
                "shift the inputs or drop one constraint"
            )


@boundary("relprop.methods.maximization.prototypes")
@explaining  # the model's lock; grad mode restored; buffers the forward pass wrote into detached (relprop.safety)
def prototypes(
    model: nn.Module,
    classes: Sequence[int] | Tensor,
    *,
    shape: Sequence[int],
    config: Maximization = Maximization(),  # noqa: B008  (frozen: one shared default is safe)
    init: Tensor | None = None,
) -> Tensor:
    """One prototype per class, optimised together: (len(classes), *shape).

    Gradient ascent with Adam on ``log_softmax(model(x))[c] + config.prior_weight * config.prior.log_prob(x)``
    (see :class:`Maximization`); ``shape`` is one input's shape, e.g. ``(784,)`` or ``(steps, features)`` for
    a sequence model. The softmax runs over the model's own logits (the thesis' extra constant-zero training
    logit is not part of the model). The ball constraint is a reparametrisation ``x = u * min(1, r / ||u||)``
    (projecting Adam steps onto a ball would stall at a wrong point, since Adam rescales coordinates); the box
    clamps ``u`` after each step, so ``0`` must lie in the box when both are used. ``init`` (shape or
    (len(classes), *shape)) defaults to seeded noise of scale 0.01. The model runs in eval mode (each
    module's flag is restored); only x is optimised (``torch.autograd.grad``), so parameters and their
    ``.grad`` stay untouched.

    Example
    -------
    >>> model = torch.nn.Linear(3, 2, bias=False)
    >>> prototypes(model, [0, 1], shape=(3,), config=Maximization(steps=5, norm=1.0)).shape
    torch.Size([2, 3])
    """
    device, dtype = _device_dtype(model)
    labels = torch.as_tensor(classes, dtype=torch.long, device=device).reshape(-1)  # (B,)
    size = (labels.numel(), *shape)
    box, norm, prior = config.box, config.norm, config.prior
    if init is None:
        generator = torch.Generator().manual_seed(config.seed)
        start = 0.01 * torch.randn(size, generator=generator, dtype=torch.float64)
    elif init.shape in (torch.Size(size), torch.Size(size[1:])):
        start = init.detach().expand(size)
    else:
        raise ExplanationError(
            f"init must have shape {tuple(size[1:])} or {size}, got {tuple(init.shape)}"
        )
    u = start.to(device=device, dtype=dtype).clone()
    if box is not None:
        u.clamp_(*box)
    u.requires_grad_(True)
    optimizer = torch.optim.Adam([u], lr=config.lr, maximize=True)
    rows = torch.arange(labels.numel(), device=device)
    with eval_mode(model), torch.enable_grad():
        for _ in range(config.steps):
            x = _into_ball(u, norm)
            logits = model(x)
            if logits.ndim != 2 or int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
                raise ExplanationError(
                    f"classes {labels.tolist()} do not index the model output of shape "
                    f"{tuple(logits.shape)} for inputs of shape {tuple(x.shape)}"
                )
            objective = torch.log_softmax(logits, dim=1)[rows, labels].sum()
            if prior is not None:
                objective = objective + config.prior_weight * prior.log_prob(x).sum()
            (u.grad,) = torch.autograd.grad(objective, u)
            optimizer.step()
            if box is not None:
                with torch.no_grad():
                    u.clamp_(*box)
    return _into_ball(u.detach(), norm)


@boundary("relprop.methods.maximization.activation_maximization")
def activation_maximization(
    model: nn.Module,
    target: int,
    *,
    shape: Sequence[int],
    config: Maximization = Maximization(),  # noqa: B008  (frozen: one shared default is safe)
    init: Tensor | None = None,
) -> Tensor:
    """Prototype of class ``target``: ``argmax_x log p(target|x) [+ w log p(x)]``, shape ``shape``.

    See :class:`Maximization` for the options and :func:`prototypes` for the optimiser.

    Example
    -------
    >>> model = torch.nn.Linear(3, 2, bias=False)
    >>> activation_maximization(model, 1, shape=(3,), config=Maximization(steps=5)).shape
    torch.Size([3])
    """
    return prototypes(model, [target], shape=shape, config=config, init=init)[0]
