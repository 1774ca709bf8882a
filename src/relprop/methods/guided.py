"""Guided backpropagation and deconvnet: gradients with a modified backward pass through ReLUs (and gates)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import ops
from ..core import (
    FunctionalGuard,
    Site,
    attach_rules,
    mark_path,
    refuse_hidden,
    root_module,
    script_module_error,
)
from ..errors import ConfigError, ExplanationError
from ..ops import OpCall
from ..rules.elementwise import vjp
from ._common import OutputSeed, explained_forward, is_several, start_gradient, start_gradients
from ._layers import backward_batched
from ._registry import method

__all__ = ["guided_backprop", "deconvnet", "beta_smooth"]

_RELU_NAMES = frozenset({"relu", "relu_"})
_SIGMOID_NAMES = frozenset({"sigmoid", "sigmoid_"})
GATES = ("gradient", "frozen")


def _is(site: Site, module_type: type[nn.Module], names: frozenset[str]) -> bool:
    return site.name in names if isinstance(site, OpCall) else isinstance(site, module_type)


@dataclass(frozen=True)
class _ModifiedBackward:
    """Backward through ReLUs modified (guided, deconvnet or smoothed), through sigmoids zero when gates are frozen.

    Guided (Springenberg et al. 2015): only positive gradient passes, and only where the ReLU's input was
    positive. Deconvnet (Zeiler & Fergus 2014): a ReLU of the gradient, whatever the forward activation.
    Smoothed (``beta``; Dombrowski et al. 2019): the ReLU's derivative becomes softplus's, ``sigmoid(beta x)``.
    Frozen gates (Chormai 2018): every sigmoid (an LSTM's or GRU's gates, the GRU's complement ``1 - z``)
    passes no gradient, so the gates act as constants. Every other activation keeps its gradient.
    """

    deconv: bool = False
    frozen_gates: bool = False
    beta: float | None = None

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if self.frozen_gates and _is(site, nn.Sigmoid, _SIGMOID_NAMES):
            return (torch.zeros_like(inputs[0]),)
        if not _is(site, nn.ReLU, _RELU_NAMES):
            return vjp(site, inputs, relevance_out)
        if self.beta is not None:
            return (torch.sigmoid(self.beta * inputs[0]).to(relevance_out) * relevance_out,)
        if self.deconv:
            return (relevance_out.clamp(min=0),)
        return (relevance_out.clamp(min=0) * (inputs[0] > 0).to(relevance_out),)


def _modified_gradient(model: nn.Module, x: Tensor, target: Tensor | OutputSeed, rule: _ModifiedBackward) -> Tensor:
    """The gradient with ``rule`` at every ReLU (and sigmoid), module (``nn.ReLU``) or functional (``F.relu``);
    (batch, k, ...) for a (batch, k) target, from one forward pass."""
    root = root_module(model)
    kinds: tuple[type[nn.Module], ...] = (nn.ReLU, nn.Sigmoid) if rule.frozen_gates else (nn.ReLU,)
    if rule.frozen_gates:
        fused = [name for name, m in root.named_modules() if isinstance(m, nn.RNNBase)]
        if fused:
            raise ExplanationError(
                f"gates='frozen' needs the gates of {fused[0]!r} ({type(root.get_submodule(fused[0])).__name__}), "
                "which the fused kernel hides; build the model with relprop.models.Recurrent or apply "
                "relprop.canonizers.ExplicitRecurrent, or use gates='gradient'"
            )
    scripted = next((name for name, m in root.named_modules() if isinstance(m, torch.jit.ScriptModule)), None)
    if scripted is not None:  # its ReLUs would keep their gradient, unseen
        raise script_module_error(scripted or type(root).__name__)
    modules = [(name, m, rule) for name, m in root.named_modules() if isinstance(m, kinds)]
    guard = FunctionalGuard({ops.ACTIVATION: rule}, strict=False)  # every other op keeps its own gradient
    x = mark_path(x.detach().requires_grad_())
    with attach_rules(model, modules, guard=guard), torch.enable_grad():
        with guard, explained_forward():
            output = model(x)
        refuse_hidden((output,), lambda: f"the output of {type(root).__name__}", strict=False)
        if is_several(target):
            assert isinstance(target, Tensor)
            return backward_batched(output, x, start_gradients(output, target), {})[0].transpose(0, 1)
        (grad,) = torch.autograd.grad(output, x, start_gradient(output, target))
    return grad


@method("guided_backprop", several_targets=True)
def guided_backprop(
    model: nn.Module, x: Tensor, target: Tensor | OutputSeed, *, squared: bool = False, gates: str = "gradient"
) -> Tensor:
    """Guided backpropagation (Springenberg et al. 2015).

    ``squared=True`` gives the thesis's SA-style variant. ``gates="frozen"`` also zeroes the backward pass of
    every sigmoid (the LSTM/GRU gates and the GRU's ``1 - z``): the thesis's final guided backprop (Chormai
    2018); ``gates="gradient"`` (default) is standard guided backprop, which guides only the ReLUs.
    """
    if gates not in GATES:
        raise ExplanationError(f"gates must be one of {GATES}, got {gates!r}")
    grad = _modified_gradient(model, x, target, _ModifiedBackward(frozen_gates=gates == "frozen"))
    return grad**2 if squared else grad


@method("deconvnet", several_targets=True)
def deconvnet(model: nn.Module, x: Tensor, target: Tensor | OutputSeed) -> Tensor:
    """Deconvnet attribution (Zeiler & Fergus 2014)."""
    return _modified_gradient(model, x, target, _ModifiedBackward(deconv=True))


@method("beta_smooth", several_targets=True)
def beta_smooth(model: nn.Module, x: Tensor, target: Tensor | OutputSeed, *, beta: float = 10.0) -> Tensor:
    """The gradient with every ReLU's derivative smoothed to ``sigmoid(beta * input)``, the derivative of
    ``softplus(beta * input) / beta`` (Dombrowski et al. 2019), as zennit's BetaSmooth composite: the forward pass
    is the model's own, only the backward pass is smoothed. Large ``beta`` approaches the plain gradient."""
    if not 0 < beta < float("inf"):
        raise ConfigError(f"option beta={beta!r} must be a finite number > 0")
    return _modified_gradient(model, x, target, _ModifiedBackward(beta=float(beta)))
