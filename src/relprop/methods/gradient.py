"""Gradient-based attributions: saliency, sensitivity, gradient x input, integrated gradients and SmoothGrad."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ExplanationError
from ._common import gradient_of_target

__all__ = ["gradient", "sensitivity", "gradient_x_input", "integrated_gradients", "smoothgrad", "ig_alphas"]


def gradient(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Plain saliency ``df/dx`` (Simonyan et al. 2014)."""
    return gradient_of_target(model, x, target)


def sensitivity(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Sensitivity analysis ``R_i = (df/dx_i)^2`` (Baehrens et al. 2010)."""
    return gradient_of_target(model, x, target) ** 2


def gradient_x_input(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Gradient x input, the simple Taylor decomposition ``R_i = x_i df/dx_i``."""
    return x * gradient_of_target(model, x, target)


def ig_alphas(steps: int, quadrature: str, like: Tensor) -> tuple[Tensor, Tensor]:
    """Points ``alpha_k`` on [0, 1] and their weights for the path integral of integrated gradients."""
    if steps < 1:
        raise ExplanationError(f"integrated_gradients needs steps >= 1, got {steps}")
    k = torch.arange(steps, dtype=like.dtype, device=like.device)
    if quadrature == "right":
        return (k + 1) / steps, torch.full_like(k, 1 / steps)
    if quadrature == "midpoint":
        return (k + 0.5) / steps, torch.full_like(k, 1 / steps)
    if quadrature == "trapezoid":
        if steps < 2:
            raise ExplanationError("the trapezoid rule needs steps >= 2")
        weights = torch.full_like(k, 1 / (steps - 1))
        weights[0] = weights[-1] = 0.5 / (steps - 1)
        return k / (steps - 1), weights
    raise ExplanationError(f"unknown quadrature '{quadrature}'; valid: right, midpoint, trapezoid")


def integrated_gradients(
    model: nn.Module, x: Tensor, target: Tensor, *, baseline: Tensor | float = 0.0, steps: int = 32,
    quadrature: str = "right", batch_size: int | None = None,
) -> Tensor:
    """Integrated gradients ``(x - x') * int_0^1 df(x' + a (x - x'))/dx da`` (Sundararajan et al. 2017).

    All ``steps`` points of the path run as one batch (or in chunks of ``batch_size`` samples). Completeness:
    ``sum R = f(x) - f(x')`` up to the quadrature error, which shrinks as ``steps`` grows.
    """
    baseline = torch.as_tensor(baseline).to(x).expand_as(x)
    alphas, weights = ig_alphas(steps, quadrature, x)
    shape = (steps,) + (1,) * x.dim()
    path = baseline + alphas.reshape(shape) * (x - baseline)  # (steps, batch, ...)
    flat = path.reshape(steps * x.shape[0], *x.shape[1:])  # step-major: sample i of step k at k * batch + i
    batch = x.shape[0]
    chunk = flat.shape[0] if batch_size is None else max(batch_size // batch, 1) * batch  # whole steps
    grads = torch.cat([
        gradient_of_target(model, part, target) for part in torch.split(flat, chunk)
    ]).reshape(path.shape)
    return (x - baseline) * (weights.reshape(shape) * grads).sum(0)


def smoothgrad(
    model: nn.Module, x: Tensor, target: Tensor, *, noise: float = 0.15, samples: int = 16, seed: int = 0,
    squared: bool = False,
) -> Tensor:
    """SmoothGrad: the gradient averaged over noisy copies of x (Smilkov et al. 2017).

    The noise is Gaussian with standard deviation ``noise * (max(x_i) - min(x_i))`` per sample; ``seed`` makes
    it reproducible. Every sample of a batch gets the same noise draws (scaled to its own range), so a sample's
    result does not depend on the rest of the batch. ``noise=0`` gives the plain gradient.
    """
    if samples < 1:
        raise ExplanationError(f"smoothgrad needs samples >= 1, got {samples}")
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).reshape(-1, *(1,) * (x.dim() - 1))  # (batch, 1, ...)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    eps = torch.randn((samples, 1, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
    noisy = (x + noise * span * eps).reshape(samples * x.shape[0], *x.shape[1:])  # step-major like IG
    grads = gradient_of_target(model, noisy, target).reshape(samples, *x.shape)
    return (grads**2 if squared else grads).mean(0)
