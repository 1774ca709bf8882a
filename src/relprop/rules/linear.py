"""The z-rule family of LRP for linear maps (Linear, ConvNd and modules exposing ``relprop_affine``).

Every rule here has the form (Bach et al. 2015; Montavon et al. 2019, "Layer-wise relevance propagation: an
overview")::

    R_j = sum_groups c_g * sum_k  sum_t sign_t * x^t_j w^t_jk / stabilize(z^g_k) * m^g_k * R_k
    z^g_k = sum_t sign_t * (sum_j x^t_j w^t_jk + b^t_k)

where each *term* ``t`` modifies the inputs, weights and bias, each *group* ``g`` of terms shares one denominator,
and ``m^g`` optionally masks outputs (Gamma uses the sign of z). Simple rules override :meth:`ZRule.inputs` and
:meth:`ZRule.weights`; rules with several terms override :meth:`ZRule.groups`. By default a rule's weight
modifier also applies to the bias, which then takes part in the denominator (as in zennit); ``bias=False`` drops it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import grad as nn_grad

from .. import ops
from ..core import MergedBatchNorm, Site, stabilize
from ..errors import ExplanationError
from ..ops import OpCall

__all__ = ["ZRule", "Epsilon", "ZPlus", "AlphaBeta", "Gamma", "ZBox", "Flat", "WSquare", "affine_map"]


_CONV_INPUT_GRADIENTS = {1: nn_grad.conv1d_input, 2: nn_grad.conv2d_input, 3: nn_grad.conv3d_input}


def _conv_transpose(conv: Any, s: Tensor, weight: Tensor, input_shape: Sequence[int]) -> Tensor:
    """``weight^T s`` for a zero-padded convolution with integer padding: the vector-Jacobian product."""
    grad_input: Any = _CONV_INPUT_GRADIENTS[weight.dim() - 2]
    result: Tensor = grad_input(input_shape, weight, s, conv.stride, conv.padding, conv.dilation, conv.groups)
    return result


class _Affine:
    """A linear map ``x -> x W^T + b`` of one site, with its transpose (the vector-Jacobian product).

    Sites: ``nn.Linear``, ``nn.ConvNd``, a module with ``relprop_affine()``, a layer merged with the batch norm it
    feeds (:class:`~relprop.core.MergedBatchNorm`), or an eval-mode ``batch_norm`` call, a diagonal map
    ``x -> a x + c`` per channel (dimension 1).
    """

    def __init__(self, site: Site) -> None:
        self.module: Any = site  # Linear, ConvNd or a module with relprop_affine(): attributes read dynamically
        if isinstance(site, MergedBatchNorm):
            layer = _Affine(site.layer)
            scale, shift = _batch_norm_affine(site.norm)
            weight = layer.weight * scale.reshape((-1,) + (1,) * (layer.weight.dim() - 1))
            bias = shift if layer.bias is None else layer.bias * scale + shift
            self.module, self.kind = layer.module, layer.kind
        elif isinstance(site, OpCall) and site.op is ops.BATCH_NORM:
            weight, bias = _batch_norm_affine(site)
            self.kind = "diagonal"
        elif hasattr(site, "relprop_affine"):
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
        if self.kind == "linear":
            return F.linear(x, weight, bias)
        if self.kind == "diagonal":
            shape = (1, -1) + (1,) * (x.dim() - 2)  # per channel, dimension 1
            z = x * weight.reshape(shape)
            return z if bias is None else z + bias.reshape(shape)
        result: Tensor = self.module._conv_forward(x, weight, bias)  # handles padding modes
        return result

    def transpose(self, s: Tensor, weight: Tensor, x: Tensor) -> Tensor:
        if self.kind == "linear":
            return s @ weight
        if self.kind == "diagonal":
            return s * weight.reshape((1, -1) + (1,) * (s.dim() - 2))
        conv = self.module
        if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
            return _conv_transpose(conv, s, weight, x.shape)
        x = x.detach().requires_grad_()
        (grad,) = torch.autograd.grad(self.forward(x, weight, None), x, s)
        return grad


def _batch_norm_affine(call: OpCall) -> tuple[Tensor, Tensor]:
    """``(a, c)`` of an eval-mode batch norm ``y = a x + c``: ``a = gamma / sqrt(var + eps)``, ``c = beta - a mean``."""
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
    if relevance.requires_grad or denominator.requires_grad or relevance.shape != denominator.shape:
        return relevance / denominator
    return torch.div(relevance, denominator, out=denominator)


def _has_negative(x: Tensor) -> bool:
    return bool(x.min() < 0)


def _positive(t: Tensor) -> Tensor:
    return t.clamp(min=0)


def _negative(t: Tensor) -> Tensor:
    return t.clamp(max=0)


@dataclass(frozen=True)
class ZRule:
    """Base of the z-rule family: one term with modified inputs and weights, one stabilised denominator."""

    stabilizer: float = 1e-6
    bias: bool = True
    # True when inputs() ignores the values of x (flat, w^2): the denominator is then computed for one sample
    uniform_inputs: ClassVar[bool] = False
    # a batch norm that a layer with this rule feeds is explained with the layer, as one affine map
    merges_batch_norm: ClassVar[bool] = True

    def inputs(self, x: Tensor) -> Tensor:
        return x

    def weights(self, name: str, param: Tensor) -> Tensor:
        return param

    def stabilize(self, z: Tensor) -> Tensor:
        return stabilize(z, self.stabilizer)

    def _bias(self, bias: Tensor | None) -> Tensor | None:
        if bias is None or not self.bias:
            return None
        return self.weights("bias", bias)

    def groups(self, x: Tensor, weight: Tensor, bias: Tensor | None, output: Tensor) -> list[Group]:
        return [Group([Term(self.inputs(x), self.weights("weight", weight), self._bias(bias))])]

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        (x,) = inputs
        affine = _Affine(site)
        relevance_in: Tensor | None = None
        for group in self.groups(x, affine.weight, affine.bias, output):
            z = sum(term.sign * affine.forward(term.x[:1] if self.uniform_inputs else term.x, term.weight, term.bias)
                    for term in group.terms)  # (1 or batch, ...): a uniform denominator broadcasts over the batch
            s = relevance_out / self.stabilize(z)  # type: ignore[arg-type]
            if group.mask is not None:
                s = s * group.mask
            for term in group.terms:
                part = affine.transpose(s, term.weight, x).mul_(term.x)
                scale = group.coefficient * term.sign
                if relevance_in is None:
                    relevance_in = part if scale == 1 else part.mul_(scale)
                else:
                    relevance_in.add_(part, alpha=scale)
        return (relevance_in,)


def _signed_terms(x: Tensor, w_pos: Tensor, w_neg: Tensor, bias: Tensor | None) -> list[Term]:
    """``x+ w_pos + bias + x- w_neg``; the negative-input term is dropped when x has no negative entries."""
    if not _has_negative(x):
        return [Term(x, w_pos, bias)]
    return [Term(_positive(x), w_pos, bias), Term(_negative(x), w_neg, None)]


@dataclass(frozen=True)
class Epsilon(ZRule):
    """LRP-epsilon: ``R_j = sum_k a_j w_jk / (z_k + eps sign(z_k)) R_k`` (Bach et al. 2015). ``epsilon=0`` is LRP-0.

    >>> layer = torch.nn.Linear(3, 2)
    >>> Epsilon(epsilon=1e-9).relevance(layer, (torch.ones(1, 3),), layer(torch.ones(1, 3)), torch.ones(1, 2))[0].shape
    torch.Size([1, 3])
    """

    epsilon: float = 1e-6

    def stabilize(self, z: Tensor) -> Tensor:
        if self.epsilon == 0:
            return torch.where(z == 0, torch.ones_like(z), z)
        return stabilize(z, self.epsilon)

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        (x,) = inputs
        affine = _Affine(site)
        if not self.bias and affine.bias is not None or hasattr(site, "relprop_affine"):
            z = affine.forward(x, affine.weight, self._bias(affine.bias))
        else:
            z = output  # the module's own output is x W^T + b
        s = self.stabilize(z)
        s = relevance_out / s if s is z else _divide(relevance_out, s)  # never write into the module's output
        return (affine.transpose(s, affine.weight, x).mul_(x),)


@dataclass(frozen=True)
class ZPlus(ZRule):
    """z+: ``R_j = sum_k a_j w+_jk / sum_j a_j w+_jk R_k`` (Montavon et al. 2017); equals AlphaBeta(1, 0).

    Negative inputs contribute through negative weights (``x- w-``), the generalisation zennit uses.
    """

    def groups(self, x: Tensor, weight: Tensor, bias: Tensor | None, output: Tensor) -> list[Group]:
        b_pos = _positive(bias) if bias is not None and self.bias else None
        return [Group(_signed_terms(x, _positive(weight), _negative(weight), b_pos))]

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        (x,) = inputs
        if _has_negative(x):
            return super().relevance(site, inputs, output, relevance_out)
        affine = _Affine(site)  # x >= 0: one term, z = x w+ + b+ >= 0, so stabilize(z) = z + eps
        w_pos = _positive(affine.weight)
        z = affine.forward(x, w_pos, _positive(affine.bias) if affine.bias is not None and self.bias else None)
        s = _divide(relevance_out, z.add_(self.stabilizer))
        return (affine.transpose(s, w_pos, x).mul_(x),)


@dataclass(frozen=True)
class AlphaBeta(ZRule):
    """alpha-beta: ``R_j = sum_k (alpha z+_jk / z+_k - beta z-_jk / z-_k) R_k`` with ``alpha - beta = 1``.

    (Bach et al. 2015.) ``z+`` collects positive contributions ``x+ w+ + x- w- + b+``, ``z-`` the negative ones.
    """

    alpha: float = 2.0
    beta: float = 1.0

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1) > 1e-12:
            raise ValueError(
                f"AlphaBeta needs alpha >= 0, beta >= 0 and alpha - beta = 1, got {self.alpha}, {self.beta}"
            )

    def groups(self, x: Tensor, weight: Tensor, bias: Tensor | None, output: Tensor) -> list[Group]:
        w_pos, w_neg = _positive(weight), _negative(weight)
        b_pos = _positive(bias) if bias is not None and self.bias else None
        b_neg = _negative(bias) if bias is not None and self.bias else None
        groups = [Group(_signed_terms(x, w_pos, w_neg, b_pos), self.alpha)]
        if self.beta:
            groups.append(Group(_signed_terms(x, w_neg, w_pos, b_neg), -self.beta))
        return groups


@dataclass(frozen=True)
class Gamma(ZRule):
    """gamma: weights ``w + gamma w+`` favour positive contributions (Montavon et al. 2019).

    Generalised to signed inputs and outputs (Andeol et al. 2021): outputs with ``z > 0`` use
    ``x+ (w + gamma w+) + x- (w + gamma w-)``, outputs with ``z < 0`` the mirror image.
    """

    gamma: float = 0.25

    def _lift(self, param: Tensor, part: Tensor) -> Tensor:
        return param + self.gamma * part

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        (x,) = inputs
        affine = _Affine(site)
        if _has_negative(x) or (affine.bias is not None and not self.bias):
            return super().relevance(site, inputs, output, relevance_out)
        # x >= 0 (e.g. after a ReLU): with q = x w+ + b+ >= 0 and z = x w + b, the two denominators are
        # z + gamma q > 0 where z > 0 and (1 + gamma) z - gamma q < 0 where z < 0. With m = |sign(z)| and
        # c = sign(z) (1 + gamma / 2) - m gamma / 2 (1 where z > 0, -(1 + gamma) where z < 0, 0 where z = 0),
        # both magnitudes are d = gamma q + c z, so with s = R / (d + eps):
        #     R_in = x (w^T (c s) + w+^T (gamma m s)).
        # Arithmetic kernels only, and four temporaries of the output's size (allocation dominates on CPU).
        gamma, eps = self.gamma, self.stabilizer
        weight, bias = affine.weight, affine.bias
        c = output.sign()
        if not bool(c.sub(1).mul_(relevance_out).any()):
            # No relevance where z <= 0, the usual case below a ReLU whose output feeds z-rules (they give a
            # unit that outputs 0 no relevance): only the z > 0 group is active, with weights w + gamma w+.
            # One forward and one transpose; |.| + eps keeps the unused denominators (z <= 0) away from zero.
            w_up = self._lift(weight, _positive(weight))
            z_up = affine.forward(x, w_up, None if bias is None else self._lift(bias, _positive(bias)))
            s = _divide(relevance_out, z_up.abs_().add_(eps))
            return (affine.transpose(s, w_up, x).mul_(x),)
        w_pos = _positive(weight)
        q = affine.forward(x, w_pos, None if bias is None else _positive(bias))
        m = c.abs()
        c.mul_(1 + gamma / 2).add_(m, alpha=-gamma / 2)
        s = torch.mul(output, c).add_(q, alpha=gamma).add_(eps)
        del q
        s = _divide(relevance_out, s)
        return (affine.transpose(c.mul_(s), weight, x).add_(affine.transpose(m.mul_(s), w_pos.mul_(gamma), x))
                .mul_(x),)

    def groups(self, x: Tensor, weight: Tensor, bias: Tensor | None, output: Tensor) -> list[Group]:
        up = self._lift(weight, _positive(weight))
        down = self._lift(weight, _negative(weight))
        use_bias = bias is not None and self.bias
        b_up = self._lift(bias, _positive(bias)) if use_bias else None  # type: ignore[arg-type]
        b_down = self._lift(bias, _negative(bias)) if use_bias else None  # type: ignore[arg-type]
        return [
            Group(_signed_terms(x, up, down, b_up), mask=(output > 0).to(output)),
            Group(_signed_terms(x, down, up, b_down), mask=(output < 0).to(output)),
        ]


def _uniform(bound: float | Tensor, x: Tensor) -> bool:
    """Whether a bound is the same for every sample (a scalar or a per-feature tensor without batch dimension)."""
    return not isinstance(bound, Tensor) or bound.dim() < x.dim() or bound.shape[0] == 1


def _stacked_transpose(affine: _Affine, s: Tensor, first: Tensor, second: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(first^T s, second^T s)``, in one call where the weights can be stacked on the input dimension."""
    module = affine.module
    if affine.kind == "linear":
        first_t, second_t = (s @ torch.cat([first, second], 1)).chunk(2, dim=-1)
        return first_t, second_t
    if (affine.kind == "conv" and module.padding_mode == "zeros" and not isinstance(module.padding, str)
            and module.groups == 1):
        shape = (x.shape[0], 2 * x.shape[1], *x.shape[2:])  # both weights' inputs side by side on the channels
        first_t, second_t = _conv_transpose(module, s, torch.cat([first, second], 1), shape).chunk(2, dim=1)
        return first_t, second_t
    return affine.transpose(s, first, x), affine.transpose(s, second, x)


@dataclass(frozen=True)
class ZBox(ZRule):
    """zB for inputs bounded in ``[low, high]``: ``z_jk = a_j w_jk - l_j w+_jk - h_j w-_jk`` (Montavon et al. 2017).

    ``low`` and ``high`` are scalars or tensors broadcastable to one sample (per-feature bounds).
    """

    low: float | Tensor = field(default=-1.0)
    high: float | Tensor = field(default=1.0)

    def _bound(self, value: float | Tensor, x: Tensor) -> Tensor:
        bound = torch.as_tensor(value).to(x)
        if bound.dim() == x.dim() - 1:
            bound = bound.unsqueeze(0)
        return bound.expand_as(x)

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        (x,) = inputs
        affine = _Affine(site)
        low, high = self._bound(self.low, x[:1]), self._bound(self.high, x[:1])  # (1, ...) shared by the batch
        if (affine.bias is not None and not self.bias) or not (_uniform(self.low, x) and _uniform(self.high, x)):
            return super().relevance(site, inputs, output, relevance_out)
        # z = x w + b - (l w+ + b+) - (h w- + b-); the bound terms are the same for every sample.
        # R = x w^T s - l w+^T s - h w-^T s = (x - h) w^T s + (h - l) w+^T s
        weight, bias = affine.weight, affine.bias
        w_pos = _positive(weight)
        bounds = (affine.forward(low, w_pos, None if bias is None else _positive(bias))
                  + affine.forward(high, weight - w_pos, None if bias is None else _negative(bias)))  # (1, ...)
        s = _divide(relevance_out, self.stabilize(output - bounds))
        t_w, t_pos = _stacked_transpose(affine, s, weight, w_pos, x)
        return (t_w.mul_(x - high).add_(t_pos.mul_(high - low)),)

    def groups(self, x: Tensor, weight: Tensor, bias: Tensor | None, output: Tensor) -> list[Group]:
        use_bias = bias is not None and self.bias
        return [Group([
            Term(x, weight, bias if use_bias else None),
            Term(self._bound(self.low, x), _positive(weight), _positive(bias) if use_bias else None, -1.0),  # type: ignore[arg-type]
            Term(self._bound(self.high, x), _negative(weight), _negative(bias) if use_bias else None, -1.0),  # type: ignore[arg-type]
        ])]


@dataclass(frozen=True)
class WSquare(ZRule):
    """w^2: ``R_j = sum_k w_jk^2 / sum_j w_jk^2 R_k`` (Montavon et al. 2017); the bias takes no part by default."""

    bias: bool = False
    uniform_inputs: ClassVar[bool] = True

    def inputs(self, x: Tensor) -> Tensor:
        return torch.ones_like(x)

    def weights(self, name: str, param: Tensor) -> Tensor:
        return param**2


@dataclass(frozen=True)
class Flat(ZRule):
    """flat: relevance spreads uniformly over each output's receptive field (Lapuschkin et al. 2019)."""

    bias: bool = False
    uniform_inputs: ClassVar[bool] = True

    def inputs(self, x: Tensor) -> Tensor:
        return torch.ones_like(x)

    def weights(self, name: str, param: Tensor) -> Tensor:
        return torch.ones_like(param)

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        (x,) = inputs
        affine = _Affine(site)
        if self.bias and affine.bias is not None or affine.kind == "diagonal" or getattr(affine.module, "groups", 1) > 1:
            return super().relevance(site, inputs, output, relevance_out)
        # every output of the layer has the same all-ones weights: one output channel stands for all of them
        ones = affine.weight.new_ones((1, *affine.weight.shape[1:]))
        z = affine.forward(x.new_ones((1, *x.shape[1:])), ones, None)  # receptive-field sizes, (1, 1, ...)
        channel = -1 if affine.kind == "linear" else 1  # where the layer's outputs are
        s = (relevance_out / self.stabilize(z)).sum(channel, keepdim=True)  # one output of all-ones weights
        return (affine.transpose(s, ones, x),)
