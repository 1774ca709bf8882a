"""The z-rule family of LRP for linear maps (Linear, ConvNd and modules exposing ``relprop_affine``).

Every rule here has the form (Bach et al. 2015; Montavon et al. 2019, "Layer-wise relevance propagation: an
overview")::

    R_j = sum_groups c_g * sum_k  sum_t sign_t * x^t_j w^t_jk / stabilize(z^g_k) * m^g_k * R_k
    z^g_k = sum_t sign_t * (sum_j x^t_j w^t_jk + b^t_k)

where each *term* ``t`` modifies the inputs, weights and bias, each *group* ``g`` of terms shares one denominator,
and ``m^g`` optionally masks outputs (Gamma uses the sign of z). Simple rules override :meth:`ZRule.inputs` and
:meth:`ZRule.weights`; rules with several terms override :meth:`ZRule.groups`. By default a rule's weight
modifier also applies to the bias, which then takes part in the denominator (as in zennit); ``bias=False`` drops it.

This module holds each rule's readable definition; faster kernels for the common cases (inputs >= 0 below a ReLU,
bounds shared by the batch) are registered separately in :mod:`relprop.rules.kernels` and checked against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core import Site, has_relprop_affine, stabilize
from ..errors import ConfigError
from .affine import FAST_KERNELS, Group, Term, _Affine, _has_negative, _negative, _positive, affine_map

__all__ = ["ZRule", "Epsilon", "ZPlus", "AlphaBeta", "Gamma", "ZBox", "Flat", "WSquare", "affine_map"]


@dataclass(frozen=True)
class ZRule:
    """Base of the z-rule family: one term with modified inputs and weights, one stabilised denominator."""

    stabilizer: float = 1e-6
    bias: bool = True
    # True when inputs() ignores the values of x (flat, w^2): the denominator is then computed for one sample
    uniform_inputs: ClassVar[bool] = False
    # a batch norm that a layer with this rule feeds is explained with the layer, as one affine map
    merges_batch_norm: ClassVar[bool] = True
    # computes with the layer's weight and map (a subclass's own forward is checked: relprop.core.OwnForward)
    reads_weights: ClassVar[bool] = True

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
        affine = affine_map(site)
        kernel = FAST_KERNELS.get(type(self))
        relevance_in = None if kernel is None else kernel(self, affine, x, output, relevance_out)
        return (self.reference(affine, x, output, relevance_out) if relevance_in is None else relevance_in,)

    def reference(self, affine: _Affine, x: Tensor, output: Tensor, relevance_out: Tensor) -> Tensor:
        """The rule as defined: every group's terms over one stabilised denominator."""
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
        assert relevance_in is not None  # every rule has at least one term
        return relevance_in


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

    def output_denominator(self, site: Site) -> Callable[[Tensor], Tensor] | None:
        """The denominator as a function of the site's output, where the relevance is ``x * J^T (R / d(z))``
        with ``z`` the site's own output and ``J`` its Jacobian: a plain ``nn.Linear``, or a ``nn.ConvNd`` with
        zero padding, whose bias takes part in ``z``. The engine then runs the site as it is and lets autograd
        carry ``R / d(z)`` through the layer's own backward (:class:`relprop.core.Attachment`), the same
        operations as :meth:`relevance` without a Python backward. None elsewhere (subclasses too)."""
        if type(self) is not Epsilon:
            return None
        kind = type(site)
        if kind is not nn.Linear and not (kind in _ZERO_PADDED and getattr(site, "padding_mode", "") == "zeros"
                                          and not isinstance(getattr(site, "padding", ""), str)):
            return None
        if not self.bias and getattr(site, "bias", None) is not None or has_relprop_affine(site):
            return None
        return self.stabilize

_ZERO_PADDED = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class ZPlus(ZRule):
    """z+: ``R_j = sum_k a_j w+_jk / sum_j a_j w+_jk R_k`` (Montavon et al. 2017); equals AlphaBeta(1, 0).

    Negative inputs contribute through negative weights (``x- w-``), the generalisation zennit uses.
    """

    def groups(self, x: Tensor, weight: Tensor, bias: Tensor | None, output: Tensor) -> list[Group]:
        b_pos = _positive(bias) if bias is not None and self.bias else None
        return [Group(_signed_terms(x, _positive(weight), _negative(weight), b_pos))]

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

    def check_inputs(self, site: object, inputs: tuple[Any, ...]) -> None:
        """Raise ConfigError when the layer's input lies outside ``[low, high]`` (checked in the forward pass, where
        the layer runs: the zB rule assumes every input inside its bounds)."""
        x = inputs[0] if inputs else None
        if not isinstance(x, Tensor) or not x.is_floating_point():
            return
        low, high = self._bound(self.low, x.detach()), self._bound(self.high, x.detach())
        if not bool(((x >= low) & (x <= high)).all()):
            raise ConfigError(
                f"the input of {site!r} lies outside the zB bounds [low, high] = [{self.low!r}, {self.high!r}] (it "
                f"spans [{x.min().item():.4g}, {x.max().item():.4g}]): the zB rule assumes every input inside them; "
                "give rules.ZBox the range of that input's domain (low=, high=)"
            )

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
