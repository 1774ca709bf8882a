"""Guided backpropagation and deconvnet: gradients with a modified backward pass through ReLUs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..core import FunctionalGuard, attach_rules
from ._common import one_hot_start

__all__ = ["guided_backprop", "deconvnet"]

_RELU_FUNCTIONS = frozenset({"relu", "relu_", "threshold", "threshold_", "hardtanh", "relu6", "clamp", "clamp_min"})


@dataclass(frozen=True)
class _GuidedReLU:
    """Backward through ReLU passes only positive gradient where the forward input was positive."""

    def relevance(
        self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        return (relevance_out.clamp(min=0) * (inputs[0] > 0).to(relevance_out),)


@dataclass(frozen=True)
class _DeconvReLU:
    """Backward through ReLU is a ReLU of the gradient, ignoring the forward activation (Zeiler & Fergus 2014)."""

    def relevance(
        self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        return (relevance_out.clamp(min=0),)


def _relu_check(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    if name in _RELU_FUNCTIONS:
        return (
            f"functional '{name}' runs outside an nn.ReLU module, so guided backprop/deconvnet cannot modify its "
            "backward pass; use nn.ReLU modules"
        )
    return None


def _modified_relu_gradient(model: nn.Module, x: Tensor, target: Tensor, rule: Any) -> Tensor:
    relus = [(name, m, rule) for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    guard = FunctionalGuard(_relu_check)
    x = x.detach().requires_grad_()
    with attach_rules(model, relus, guard=guard), torch.enable_grad():
        with guard:
            output = model(x)
        (grad,) = torch.autograd.grad(output, x, one_hot_start(output, target))
    return grad


def guided_backprop(model: nn.Module, x: Tensor, target: Tensor, *, squared: bool = False) -> Tensor:
    """Guided backpropagation (Springenberg et al. 2015); ``squared=True`` gives the thesis's SA-style variant."""
    grad = _modified_relu_gradient(model, x, target, _GuidedReLU())
    return grad**2 if squared else grad


def deconvnet(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Deconvnet attribution (Zeiler & Fergus 2014)."""
    return _modified_relu_gradient(model, x, target, _DeconvReLU())
