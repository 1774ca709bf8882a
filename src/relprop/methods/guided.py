"""Guided backpropagation and deconvnet: gradients with a modified backward pass through ReLUs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import ops
from ..core import FunctionalGuard, Rule, Site, attach_rules, mark_path, root_module
from ..ops import OpCall
from ..rules.elementwise import vjp
from ._common import OutputSeed, start_gradient
from ._registry import method

__all__ = ["guided_backprop", "deconvnet"]

_RELU_NAMES = frozenset({"relu", "relu_"})


@dataclass(frozen=True)
class _GuidedReLU:
    """Backward through ReLU passes only positive gradient where the forward input was positive."""

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if isinstance(site, OpCall) and site.name not in _RELU_NAMES:
            return vjp(site, inputs, relevance_out)  # other activations keep their gradient
        return (relevance_out.clamp(min=0) * (inputs[0] > 0).to(relevance_out),)


@dataclass(frozen=True)
class _DeconvReLU:
    """Backward through ReLU is a ReLU of the gradient, ignoring the forward activation (Zeiler & Fergus 2014)."""

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if isinstance(site, OpCall) and site.name not in _RELU_NAMES:
            return vjp(site, inputs, relevance_out)
        return (relevance_out.clamp(min=0),)


def _modified_relu_gradient(model: nn.Module, x: Tensor, target: Tensor | OutputSeed, rule: Rule) -> Tensor:
    """The gradient with ``rule`` at every ReLU, module (``nn.ReLU``) or functional (``F.relu``, ``x.relu_()``)."""
    relus = [(name, m, rule) for name, m in root_module(model).named_modules() if isinstance(m, nn.ReLU)]
    guard = FunctionalGuard({ops.ACTIVATION: rule}, strict=False)  # every other op keeps its own gradient
    x = mark_path(x.detach().requires_grad_())
    with attach_rules(model, relus, guard=guard), torch.enable_grad():
        with guard:
            output = model(x)
        (grad,) = torch.autograd.grad(output, x, start_gradient(output, target))
    return grad


@method("guided_backprop")
def guided_backprop(model: nn.Module, x: Tensor, target: Tensor | OutputSeed, *, squared: bool = False) -> Tensor:
    """Guided backpropagation (Springenberg et al. 2015); ``squared=True`` gives the thesis's SA-style variant."""
    grad = _modified_relu_gradient(model, x, target, _GuidedReLU())
    return grad**2 if squared else grad


@method("deconvnet")
def deconvnet(model: nn.Module, x: Tensor, target: Tensor | OutputSeed) -> Tensor:
    """Deconvnet attribution (Zeiler & Fergus 2014)."""
    return _modified_relu_gradient(model, x, target, _DeconvReLU())
