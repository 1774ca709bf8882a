"""Linear maps as the z-rules see them: a site's weight, bias, forward map and transpose, plus the fast-kernel registry.

A site is ``nn.Linear``, ``nn.ConvNd``, a module with ``relprop_affine()``, a layer merged with the batch norm it
feeds (:class:`~relprop.core.MergedBatchNorm`) or an eval-mode ``batch_norm`` call (a per-channel diagonal map).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import grad as nn_grad

from .. import ops
from ..core import MergedBatchNorm, OwnForward, Site, batched, has_relprop_affine, pullback
from ..errors import ExplanationError
from ..ops import OpCall, function_name

__all__ = ["affine_map", "Term", "Group", "FAST_KERNELS", "fast_kernel"]


_CONV_INPUT_GRADIENTS = {1: nn_grad.conv1d_input, 2: nn_grad.conv2d_input, 3: nn_grad.conv3d_input}


def _conv_transpose(conv: Any, s: Tensor, weight: Tensor, input_shape: Sequence[int]) -> Tensor:
    """``weight^T s`` for a zero-padded convolution with integer padding: the vector-Jacobian product."""
    grad_input: Any = _CONV_INPUT_GRADIENTS[weight.dim() - 2]
    result: Tensor = grad_input(input_shape, weight, s, conv.stride, conv.padding, conv.dilation, conv.groups)
    return result


class _Affine:
    """A linear map ``x -> x W^T + b`` of one site, with its transpose (the vector-Jacobian product).

    Sites: ``nn.Linear``, ``nn.ConvNd``, a module with ``relprop_affine()``, a subclass explained through its own
    forward (:class:`~relprop.core.OwnForward`), a layer merged with the batch norm it feeds
    (:class:`~relprop.core.MergedBatchNorm`), or an eval-mode ``batch_norm`` call, a diagonal map ``x -> a x + c``
    per channel (dimension 1).
    """

    kind: str  # "linear", "conv" or "diagonal"
    weight: Tensor
    bias: Tensor | None
    own: OwnForward | None = None  # the layer's own forward computes the map, with the weights it is given

    def __init__(self, site: Site) -> None:
        weight: Tensor
        bias: Tensor | None
        self.module: Any = site  # Linear, ConvNd or a module with relprop_affine(): attributes read dynamically
        if isinstance(site, OwnForward):  # the weight and bias its own forward passes to its linear or conv call
            weight, bias, self.module, self.own = site.weight, site.bias, site.layer, site
            self.kind = "linear" if isinstance(site.layer, nn.Linear) else "conv"
        elif isinstance(site, MergedBatchNorm):
            layer = _Affine(site.layer)
            scale, shift = batch_norm_affine(site.norm)
            weight = layer.weight * scale.reshape((-1,) + (1,) * (layer.weight.dim() - 1))
            bias = shift if layer.bias is None else layer.bias * scale + shift
            self.module, self.kind, self.own = layer.module, layer.kind, layer.own
        elif isinstance(site, OpCall) and site.op is ops.BATCH_NORM:
            weight, bias = batch_norm_affine(site)
            self.kind = "diagonal"
        elif has_relprop_affine(site):
            weight, bias = getattr(site, "relprop_affine")()  # noqa: B009  (typed access for mypy)
            self.kind = "linear"
        elif isinstance(site, nn.Linear):
            weight, bias, self.kind = site.weight, site.bias, "linear"
        elif isinstance(site, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            weight, bias, self.kind = site.weight, site.bias, "conv"
        else:
            raise ExplanationError(
                f"z-rules need a linear map, but got {site!r}; give it a rule from relprop.rules.elementwise, or "
                "add a relprop_affine() method returning (weight, bias)"
            )
        # rules never differentiate into the parameters: no graph is built through them
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.own is not None:
            return self.own.map(x, weight, bias)
        if self.kind == "linear":
            return F.linear(x, weight, bias)
        if self.kind == "diagonal":
            shape = (1, -1) + (1,) * (x.dim() - 2)  # per channel, dimension 1
            z = x * weight.reshape(shape)
            return z if bias is None else z + bias.reshape(shape)
        result: Tensor = self.module._conv_forward(x, weight, bias)  # handles padding modes
        return result

    def transpose(self, s: Tensor, weight: Tensor, x: Tensor) -> Tensor:
        if self.own is None:
            if self.kind == "linear":
                return s @ weight
            if self.kind == "diagonal":
                return s * weight.reshape((1, -1) + (1,) * (s.dim() - 2))
            conv = self.module
            if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
                return _conv_transpose(conv, s, weight, x.shape)
        elif self.own.call is not None:  # the layer's one call on its input as it is: that call's transpose
            fast = _call_transpose(self.own, s, weight, x)
            if fast is not None:
                return fast
        (grad,) = pullback(lambda x_: self.forward(x_, weight, None), (x,), s)
        return grad


def _call_transpose(own: OwnForward, s: Tensor, weight: Tensor, x: Tensor) -> Tensor | None:
    """``weight^T s`` for an :class:`~relprop.core.OwnForward`'s one ``F.linear``/``F.convNd`` call on the layer's
    input as it is, None where its padding is a string ("same")."""
    assert own.call is not None
    if function_name(own.call[0]) == "linear":
        return s @ weight
    stride, padding, dilation, groups = own.conv_arguments()
    if isinstance(padding, str):
        return None
    grad_input: Any = _CONV_INPUT_GRADIENTS[weight.dim() - 2]
    result: Tensor = grad_input(x.shape, weight, s, stride, padding, dilation, groups)
    return result


def batch_norm_affine(call: OpCall) -> tuple[Tensor, Tensor]:
    """``(a, c)`` of an eval-mode batch norm ``y = a x + c``: ``a = gamma / sqrt(var + eps)``, ``c = beta - a mean``
    (also of an instance norm with running statistics: the arguments have the same names)."""
    mean, var = call.argument("running_mean"), call.argument("running_var")
    gamma, beta = call.argument("weight"), call.argument("bias")
    scale = (var + call.argument("eps")).rsqrt()
    if gamma is not None:
        scale = scale * gamma
    shift = -mean * scale
    if beta is not None:
        shift = shift + beta
    return scale.detach(), shift.detach()


def affine_map(site: Site) -> _Affine:
    """The linear map of ``site`` as used by the z-rules (raises for sites that are not linear maps)."""
    return _Affine(site)


class Term(NamedTuple):
    """One contribution ``sign * (x W^T + b)`` to a denominator."""

    x: Tensor
    weight: Tensor
    bias: Tensor | None
    sign: float = 1.0


class Group(NamedTuple):
    """Terms sharing one denominator; its relevance is scaled by ``coefficient`` and masked by ``mask``."""

    terms: list[Term]
    coefficient: float = 1.0
    mask: Tensor | None = None


def _divide(relevance: Tensor, denominator: Tensor) -> Tensor:
    """``relevance / denominator``, written into ``denominator`` (a temporary of the rule) outside autograd."""
    if (relevance.requires_grad or denominator.requires_grad or relevance.shape != denominator.shape
            or batched(relevance)):
        return relevance / denominator
    return torch.div(relevance, denominator, out=denominator)


def _has_negative(x: Tensor) -> bool:
    return bool(x.min() < 0)


def _positive(t: Tensor) -> Tensor:
    return t.clamp(min=0)


def _negative(t: Tensor) -> Tensor:
    return t.clamp(max=0)


def _uniform(bound: float | Tensor, x: Tensor) -> bool:
    """Whether a bound is the same for every sample (a scalar or a per-feature tensor without batch dimension)."""
    return not isinstance(bound, Tensor) or bound.dim() < x.dim() or bound.shape[0] == 1


def _stacked_transpose(affine: _Affine, s: Tensor, first: Tensor, second: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(first^T s, second^T s)``, in one call where the weights can be stacked on the input dimension."""
    module = affine.module
    if affine.own is not None:  # the layer's own forward: no shortcut
        return affine.transpose(s, first, x), affine.transpose(s, second, x)
    if affine.kind == "linear":
        first_t, second_t = (s @ torch.cat([first, second], 1)).chunk(2, dim=-1)
        return first_t, second_t
    if (affine.kind == "conv" and module.padding_mode == "zeros" and not isinstance(module.padding, str)
            and module.groups == 1):
        shape = (x.shape[0], 2 * x.shape[1], *x.shape[2:])  # both weights' inputs side by side on the channels
        first_t, second_t = _conv_transpose(module, s, torch.cat([first, second], 1), shape).chunk(2, dim=1)
        return first_t, second_t
    return affine.transpose(s, first, x), affine.transpose(s, second, x)



# A fast kernel computes a rule's relevance ``R_x`` for one site with fewer passes or temporaries than the rule's
# readable definition (:meth:`relprop.rules.ZRule.reference`), or returns None where it does not apply (the
# definition then runs). Kernels are registered per exact rule class, so a subclass that changes the formula never
# inherits one; tests check each kernel against the definition.
Kernel = Callable[[Any, "_Affine", Tensor, Tensor, Tensor], "Tensor | None"]
FAST_KERNELS: dict[type, Kernel] = {}


def fast_kernel(rule_type: type) -> Callable[[Kernel], Kernel]:
    """Register ``kernel(rule, affine, x, output, relevance_out) -> relevance_in | None`` for ``rule_type``."""

    def register(kernel: Kernel) -> Kernel:
        FAST_KERNELS[rule_type] = kernel
        return kernel

    return register
