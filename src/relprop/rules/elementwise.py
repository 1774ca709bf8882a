"""Rules for parameter-free sites: activations, products, sums, pooling and routing, as modules or functional ops.

Each rule works at a module (``nn.ReLU``, :class:`relprop.layers.Sum`, ``nn.AvgPool2d`` ...) and at the
:class:`~relprop.ops.OpCall` of a functional operation (``F.relu(x)``, ``x + y``, ``x.mean(1)``, ``x * gate``).
At an op site, ``inputs`` are the operands on the relevance path; the others (parameters, constants) are part of
the site.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..core import Rule, Site, batched, pullback, stabilize
from ..errors import ExplanationError
from ..layers import Sum
from ..ops import OpCall

__all__ = ["Pass", "SignalTakeAll", "Uniform", "Proportional", "WinnerTakeAll", "Route"]


def reduce_to(relevance: Tensor, shape: Sequence[int]) -> Tensor:
    """Sum ``relevance`` over the dimensions along which an input of ``shape`` was broadcast.

    >>> reduce_to(torch.ones(2, 3, 4), (3, 1)).shape
    torch.Size([3, 1])
    """
    if tuple(relevance.shape) == tuple(shape):
        return relevance
    lead = relevance.dim() - len(shape)
    dims = [*range(lead), *(lead + i for i, n in enumerate(shape) if n == 1 and relevance.shape[lead + i] != 1)]
    return relevance.sum(dims, keepdim=True).reshape(shape) if dims else relevance.reshape(shape)


def vjp(site: Site, inputs: tuple[Tensor, ...], grad_output: Tensor) -> tuple[Tensor, ...]:
    """The vector-Jacobian products of the site's forward function with each input (zeros where unused)."""
    return pullback(site.forward, inputs, grad_output)


@dataclass(frozen=True)
class Pass:
    """Relevance passes unchanged through an element-wise layer (ReLU, tanh, sigmoid, ...): ``R_x = R_y``.

    The identity rule (Montavon et al. 2019; Achtibat et al. 2024 use it for GELU and SiLU). At an op site whose
    operand was broadcast, relevance is summed over the broadcast dimensions.

    >>> Pass().relevance(torch.nn.ReLU(), (torch.tensor([-1.0, 2.0]),), torch.tensor([0.0, 2.0]), torch.ones(2))
    (tensor([1., 1.]),)
    """

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if isinstance(site, OpCall):
            if len(inputs) != 1:
                raise ExplanationError(
                    f"Pass needs one operand on the relevance path, {site!r} has {len(inputs)}: for a bound that is "
                    "itself on the path (clamp(x, min=y)) write torch.maximum(x, y) or torch.minimum(x, y), which "
                    "have a rule")
            return (reduce_to(relevance_out, inputs[0].shape),)
        if inputs[0].shape != relevance_out.shape:
            raise ExplanationError(
                f"Pass needs an element-wise module, but {type(site).__name__} maps "
                f"{tuple(inputs[0].shape)} to {tuple(relevance_out.shape)}"
            )
        return (relevance_out,) + (None,) * (len(inputs) - 1)

    def route(self, site: Site, inputs: tuple[Any, ...], output: Tensor) -> int | None:
        """All relevance goes to the first input when the shapes match (else relevance() decides)."""
        if isinstance(site, OpCall) and len(inputs) != 1:
            return None
        return 0 if inputs[0].shape == output.shape and inputs[0].dtype == output.dtype else None


@dataclass(frozen=True)
class SignalTakeAll:
    """In ``gate * signal`` the gate gets no relevance and the signal takes all of it (Arras et al. 2017).

    At a module, the call is ``module(gate, signal)``, as :class:`relprop.layers.GatedProduct` has it. At a
    product op (``x * y``), the gate is the operand that a sigmoid or hard sigmoid produced (squeeze-excitation,
    gating), or a bounded function moved by constants so that it cannot be negative (``1 - sigmoid(a)``, GELU's
    ``1 + erf(u / sqrt 2)``: :data:`relprop.ops.BOUNDED`); a product with one operand on the relevance path (a
    constant scale, layer scale, ``x / 2``) passes all relevance to it, which is the same rule with a constant gate.
    A product of path tensors none of which is a gate goes to ``otherwise`` (e.g. :class:`Uniform`), or raises when
    there is none.

    A division by a tensor on the relevance path raises, unless ``constant_divisor``: then the divisor is held
    constant and the numerator takes all relevance, ``R_a = R`` in ``a / b``. That is the transformer presets'
    reading of a normaliser written out (``attn / attn.sum(-1, keepdim=True)``, a linear attention's
    ``(v k^T q) / (1 k^T q)``), as they hold the statistics of layer and RMS norms constant; a constant divided by a
    path tensor (a reciprocal, with no numerator to take the relevance) still raises.
    """

    otherwise: Rule | None = None
    constant_divisor: bool = False

    def _signal(self, site: Site, count: int) -> int | None:
        if not isinstance(site, OpCall):
            if count != 2:
                raise ExplanationError(f"SignalTakeAll needs module(gate, signal), got {count} inputs")
            return 1
        if site.op is ops.DIV and any(key not in (0, "input") for key in site.keys):
            if not self.constant_divisor:
                raise ExplanationError(
                    f"{site!r} divides by a tensor on the relevance path, which no product rule explains; for a "
                    "normaliser (x / x.sum(-1, keepdim=True)) use preset='attnlrp' or 'cp_lrp', which hold the "
                    "divisor constant, or give ops.DIV rules.SignalTakeAll(constant_divisor=True); otherwise express "
                    "it as a module with a rule of its own, or detach the divisor if it is meant as a constant"
                )
            if site.keys[0] not in (0, "input"):
                raise ExplanationError(
                    f"{site!r} divides a constant by a tensor on the relevance path (a reciprocal), which leaves no "
                    "numerator on the path to take the relevance; if it is a normaliser's statistic that scales the "
                    "path (1 / d * x), write torch.reciprocal(d) or 1 / d, which the transformer presets hold "
                    "constant (ops.NORM_STATISTIC), else express it as a module with a rule of its own"
                )
            return 0  # the numerator; the divisor is held constant
        if count == 1:
            return 0
        signals = [i for i, gate in enumerate(site.gates) if not gate]
        if count == 2 and len(signals) == 1:
            return signals[0]
        if self.otherwise is not None:
            return None
        raise ExplanationError(
            f"{site!r} multiplies {count} tensors on the relevance path and {len(site.gates) - len(signals)} of them "
            "come from a sigmoid gate, so SignalTakeAll cannot tell the signal; give the product another rule, e.g. "
            "RuleMap([(ops.MUL, rules.Uniform())]) for an equal split"
        )

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        signal = self._signal(site, len(inputs))
        if signal is None:
            assert self.otherwise is not None
            return self.otherwise.relevance(site, inputs, output, relevance_out)
        relevance: list[Tensor | None] = [None] * len(inputs)
        relevance[signal] = reduce_to(relevance_out, inputs[signal].shape)
        return tuple(relevance)

    def route(self, site: Site, inputs: tuple[Any, ...], output: Tensor) -> int | None:
        """All relevance goes to the signal when it has the output's shape."""
        signal = self._signal(site, len(inputs))
        if signal is not None and inputs[signal].shape == output.shape and inputs[signal].dtype == output.dtype:
            return signal
        return None


@dataclass(frozen=True)
class Uniform:
    """A product of ``n`` factors on the relevance path: each gets an equal share, ``R_i = x_i J_i^T (R / z) / n``.

    For ``z = a * b`` that is ``R_a = R_b = R / 2`` per element; for a matrix product the shares follow each
    factor's contributions. The uniform rule of AttnLRP (Achtibat et al. 2024, "AttnLRP: attention-aware
    layer-wise relevance propagation for transformers"). With one factor on the path (``x * c``, ``x @ W``) it is
    LRP-epsilon through the op, with ``epsilon`` = ``stabilizer``.
    """

    stabilizer: float = 1e-6

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        # a term added to the product (addmm's input, F.linear's bias) on the path is a summand, not a factor: it
        # keeps its share as in a sum, and the product's share is split among the factors only
        added = _added_term(site)
        factors = max(len(inputs) - (added is not None), 1)
        s = relevance_out / stabilize(output, self.stabilizer) / factors
        return tuple(x * g * factors if i == added else x * g
                     for i, (x, g) in enumerate(zip(inputs, vjp(site, inputs, s))))


# functional products with a term added to them, and where that term stands (position, keyword)
_ADDED_TERM = {"addmm": (0, "input"), "baddbmm": (0, "input"), "addbmm": (0, "input"), "linear": (2, "bias"),
               **{f"conv{kind}{d}d": (2, "bias") for kind in ("", "_transpose") for d in (1, 2, 3)}}


def _added_term(site: Site) -> int | None:
    """The index among a product op's path inputs of the term added to the product (``torch.addmm(c, a, b)``'s
    ``c``, ``F.linear(x, w, b)``'s ``b``), None if that term is not on the path or the site is no such op."""
    if not isinstance(site, OpCall) or site.name not in _ADDED_TERM:
        return None
    position, keyword = _ADDED_TERM[site.name]
    for index, key in enumerate(site.keys):
        if key in (position, keyword):
            return index
    return None


@dataclass(frozen=True)
class Proportional:
    """Relevance splits in proportion to each input's contribution: ``R_i = x_i J_i^T (R / stabilize(z))``.

    For a sum (:class:`relprop.layers.Sum`, ``x + y``, a residual connection) the terms are the operands; for
    average or sum pooling, ``mean`` and ``sum`` over dimensions the window members; for max pooling (as an option)
    the members of each max window. A constant term (``x + 1``, a position embedding) absorbs its share, as a bias
    does in LRP-epsilon. (Bach et al. 2015; zennit's ``Norm``.)
    """

    stabilizer: float = 1e-6

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if isinstance(site, Sum) or (isinstance(site, OpCall) and _plain_add(site, inputs, output)):
            s = relevance_out / stabilize(output, self.stabilizer)  # every term enters with weight 1
            return tuple(x * s for x in inputs)
        if isinstance(site, OpCall):
            s = relevance_out / stabilize(output, self.stabilizer)
            return tuple(x * g for x, g in zip(inputs, vjp(site, inputs, s)))
        (x,) = inputs
        forward = _window_sum(site) if isinstance(site, _MAX_POOLS) else site.forward
        if batched(relevance_out):  # several targets at once (torch.func.vmap): no leaf can be made here
            z, pull = torch.func.vjp(forward, x)[:2]
            (grad,) = pull(relevance_out / stabilize(z, self.stabilizer))
            return (x * grad,)
        x_ = x.detach().requires_grad_()
        z = forward(x_)
        (grad,) = torch.autograd.grad(z, x_, relevance_out / stabilize(z.detach(), self.stabilizer))
        return (x * grad,)


def _plain_add(call: OpCall, inputs: tuple[Tensor, ...], output: Tensor) -> bool:
    """``a + b`` of same-shaped operands with weight 1 each (no ``alpha``): its Jacobian is the identity."""
    return (call.op is ops.ADD and "alpha" not in call.kwargs and len(call.args) <= 2
            and all(x.shape == output.shape for x in inputs))


@dataclass(frozen=True)
class WinnerTakeAll:
    """Max pooling: each window's relevance goes to the input that won the max (the pooling's own backward)."""

    gradient_is_relevance: ClassVar[bool] = True

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        return vjp(site, inputs, relevance_out)


@dataclass(frozen=True)
class Route:
    """Relevance follows the operation's own backward: for operations that only select, copy, move or reshape values
    (``view``, ``permute``, ``cat``, indexing, ``torchvision.ops.Permute``), which conserves it exactly."""

    gradient_is_relevance: ClassVar[bool] = True

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        return vjp(site, inputs, relevance_out)


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
