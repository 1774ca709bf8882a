"""Rules for parameter-free modules: element-wise activations, gated products, sums and pooling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import ExplanationError, stabilize
from ..layers import Sum

__all__ = ["Pass", "SignalTakeAll", "Proportional", "WinnerTakeAll"]


@dataclass(frozen=True)
class Pass:
    """Relevance passes unchanged through an element-wise layer (ReLU, tanh, sigmoid, ...).

    >>> Pass().relevance(torch.nn.ReLU(), (torch.tensor([-1.0, 2.0]),), torch.tensor([0.0, 2.0]), torch.ones(2))
    (tensor([1., 1.]),)
    """

    def relevance(
        self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if inputs[0].shape != relevance_out.shape:
            raise ExplanationError(
                f"Pass needs an element-wise module, but {type(module).__name__} maps "
                f"{tuple(inputs[0].shape)} to {tuple(relevance_out.shape)}"
            )
        return (relevance_out,) + (None,) * (len(inputs) - 1)

    def route(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int | None:
        """All relevance goes to the first input when the shapes match (else relevance() raises)."""
        return 0 if inputs[0].shape == output.shape and inputs[0].dtype == output.dtype else None


@dataclass(frozen=True)
class SignalTakeAll:
    """In ``gate * signal`` the gate gets no relevance and the signal takes all of it (Arras et al. 2017).

    Expects the module to be called as ``module(gate, signal)``, as :class:`relprop.layers.GatedProduct` is.
    """

    def relevance(
        self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if len(inputs) != 2:
            raise ExplanationError(f"SignalTakeAll needs module(gate, signal), got {len(inputs)} inputs")
        return (None, relevance_out.expand_as(inputs[1]) if relevance_out.shape != inputs[1].shape
                else relevance_out)

    def route(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int | None:
        """All relevance goes to the signal (input 1) when it has the output's shape."""
        if len(inputs) == 2 and inputs[1].shape == output.shape and inputs[1].dtype == output.dtype:
            return 1
        return None


@dataclass(frozen=True)
class Proportional:
    """Relevance splits in proportion to each input's contribution: ``R_i = x_i / stabilize(z) R`` per window.

    For :class:`relprop.layers.Sum` the terms are the inputs; for average and sum pooling the window members;
    for max pooling (as an option) the members of each max window.
    """

    stabilizer: float = 1e-6

    def relevance(
        self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if isinstance(module, Sum):
            s = relevance_out / stabilize(output, self.stabilizer)
            return tuple(x * s for x in inputs)
        (x,) = inputs
        forward = _window_sum(module) if isinstance(module, _MAX_POOLS) else module.forward
        x_ = x.detach().requires_grad_()
        z = forward(x_)
        (grad,) = torch.autograd.grad(z, x_, relevance_out / stabilize(z.detach(), self.stabilizer))
        return (x * grad,)


@dataclass(frozen=True)
class WinnerTakeAll:
    """Max pooling: each window's relevance goes to the input that won the max."""

    def relevance(
        self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        x = inputs[0].detach().requires_grad_()
        (grad,) = torch.autograd.grad(module.forward(x), x, relevance_out)
        return (grad,)


_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


def _window_sum(module: Any) -> Callable[[Tensor], Tensor]:
    """The average pooling over the same windows as a max-pooling module (the factor 1/k cancels)."""
    if isinstance(module, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)):
        adaptive: Any = F.adaptive_avg_pool1d if isinstance(module, nn.AdaptiveMaxPool1d) else F.adaptive_avg_pool2d
        return lambda x: adaptive(x, module.output_size)
    if module.dilation not in (1, (1,), (1, 1), (1, 1, 1)):
        raise ExplanationError(f"proportional max pooling does not support dilation {module.dilation}")
    pool: Any = {nn.MaxPool1d: F.avg_pool1d, nn.MaxPool2d: F.avg_pool2d, nn.MaxPool3d: F.avg_pool3d}[type(module)]
    return lambda x: pool(x, module.kernel_size, module.stride, module.padding, module.ceil_mode, True)
