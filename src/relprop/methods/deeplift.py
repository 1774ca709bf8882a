"""DeepLIFT with the Rescale rule (Shrikumar et al. 2017, "Learning important features through propagating
activation differences"), op by op.

DeepLIFT explains the difference ``f(x) - f(x')`` from a reference input ``x'``. It runs the gradient's backward
pass with each non-linearity's derivative replaced by its secant between the two inputs, ``(g(a) - g(a')) /
(a - a')`` (the Rescale rule; the derivative where the two nearly agree), and multiplies the result by ``x - x'``.
Linear maps keep their gradient. Where those are the only ops, the attributions sum to ``f(x) - f(x')`` exactly
(summation to delta).

Every op on the way gets its rule by data flow through relprop's op guard, functional or not (``F.relu``,
``x * gate``): Captum's DeepLift sees only activation modules and passes the plain gradient through functional
ones. A product of two tensors that both depend on x (``x * torch.sigmoid(x)``, ``q @ k``) splits its difference
exactly: ``ab - a'b' = (a - a')(b + b')/2 + (a + a')/2 (b - b')``. Max pooling and other maxima and minima of one
tensor split their difference between the input's winner and the reference's, as Captum's rule for max-pooling
modules does.

Normalisations (layer, group, RMS and instance norms), the softmax and attention take several inputs at once,
where the secant of one is not defined. They run as the elementary ops they are made of, each with its rule:
a layer norm as ``u = a - mean(a)``, ``v = mean(u u)``, ``u rsqrt(v + eps)`` (a product of two tensors on the path,
a Rescale of the element-wise ``rsqrt``, linear means), attention as ``softmax(q k^T * scale) @ v`` (products of
two tensors). The softmax is ``e / sum(e)`` with ``e = exp(a - c)`` (``c`` one constant for the input and the
reference): the product and Rescale rules on those ops, in closed form. So summation to delta stays exact, and a
norm written by hand (``x * torch.rsqrt(x.pow(2).mean(-1) + eps)``) gets the same attributions as the module.
Element-wise statistics (``rsqrt``, ``sqrt``, powers, ``reciprocal``) take the Rescale rule; ``var``, ``std`` and
the 2-norm over given dimensions run as their elementary ops; a division by a tensor on the path is the product
with its reciprocal, whose secant ``-1 / (b b')`` is exact. The maximum of two tensors on the path runs as
``a + relu(b - a)``. A top-k selection is a linear map where the input and the reference select the same places,
and refused, naming the op, where they do not (a mixture of experts' router).

The input and the reference run as one batch of twice the size, the reference second, as Captum does; every
tensor on the way must keep the batch in dimension 0, which each non-linearity checks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..canonizers import ExplicitRecurrent
from ..composites import activation_module
from ..core import (
    FunctionalGuard,
    Rule,
    Site,
    attach_rules,
    mark_path,
    on_path,
    pullback,
    refuse_hidden,
    root_module,
    script_module_error,
)
from ..errors import ConfigError, ExplanationError
from ..ops import OpCall
from ..rules import Decompose, Route
from ..rules.elementwise import _added_term, reduce_to, vjp
from ..safety import protected
from ._common import (
    OutputSeed,
    explained_forward,
    is_several,
    reference_inputs,
    start_gradient,
    start_gradients,
    target_major,
    target_score,
    target_scores,
)
from ._layers import backward, backward_batched, gap_by_layer, recorded_layers, stacked
from ._registry import Attribution, method

__all__ = ["deeplift", "deeplift_shap"]

_LINEAR = (ops.ADD, ops.SUB, ops.SUM, ops.MEAN, ops.AVG_POOL, ops.INTERPOLATE, ops.DROPOUT, ops.BATCH_NORM,
           ops.ROUTE)


def _halves(tensor: Tensor, batch: int, site: Site) -> tuple[Tensor, Tensor]:
    """The input's and the reference's part of a tensor on the way: the two halves of dimension 0, which holds the
    batch of 2 * ``batch`` (times any dimension folded into it, the batch outermost: (batch * steps, ...))."""
    where = site if isinstance(site, OpCall) else type(site).__name__
    if tensor.dim() == 0:
        raise ExplanationError(
            f"DeepLIFT runs the input and the reference as one batch, but at {where} a tensor on the way is a scalar, "
            "computed over the whole batch (a maximum or sum over every sample), which mixes the input with the "
            "reference; explain this model with method='integrated_gradients' or 'lrp'")
    if tensor.shape[0] == 0 or tensor.shape[0] % (2 * batch):
        raise ExplanationError(
            f"DeepLIFT runs the input and the reference as one batch, but at {where} a tensor on the way has shape "
            f"{tuple(tensor.shape)}, not the batch ({2 * batch}) in dimension 0: the model moves the batch "
            "elsewhere (a time-major layout; explain it with a batch-first layout) or regroups its rows by values it "
            "computed (a mixture of experts gathering each expert's tokens; explain it with "
            "method='integrated_gradients' or 'lrp')")
    half = tensor.shape[0] // 2
    return tensor[:half], tensor[half:]


def _mean_of_halves(tensor: Tensor, batch: int, site: Site) -> Tensor:
    first, second = _halves(tensor, batch, site)
    return (first + second) / 2


def _apart(a: Tensor, a_ref: Tensor) -> tuple[Tensor, Tensor]:
    """Where the input's ``a`` and the reference's ``a_ref`` differ by at least the square root of the dtype's
    precision times the larger of their sizes (1.5e-8 in float64, 3.5e-4 in float32), and ``a - a_ref`` with 1
    elsewhere (a safe divisor: there the derivative at ``a`` replaces the secant).

    Closer than that, the secant's rounding error (the dtype's precision over the relative difference) exceeds the
    derivative's error (the relative difference itself), and the sum of the attributions moves by no more than
    rounding. The bound is relative: Captum's absolute 1e-10 takes the derivative at every activation of a model
    whose values have shrunk below it (a random MobileNetV2's, about 1e-22), whose sum then missed f(x) - f(x') by
    about twice that difference; in float32 it took secants of differences in the last digits, whose noise put a
    random EfficientNet-B0's attributions 4.1e-4 away from float64's (2.8e-5 with this bound;
    tests/unit/test_deeplift.py)."""
    delta = a - a_ref
    size = torch.maximum(a.abs(), a_ref.abs())
    apart = (delta.abs() >= math.sqrt(torch.finfo(delta.dtype).eps) * size) & (delta != 0)
    return apart, torch.where(apart, delta, torch.ones_like(delta))


def _twice(half: Tensor) -> Tensor:
    return torch.cat([half, half])


def _gradient(site: Site, a: Tensor, grad_output: Tensor) -> Tensor:
    """The plain vector-Jacobian product of an element-wise site (a module may work in place: on a copy)."""
    if isinstance(site, OpCall):
        return vjp(site, (a,), grad_output)[0]
    return pullback(lambda t: site.forward(t.clone()), (a,), grad_output)[0]


_DECOMPOSED = (ops.LAYER_NORM, ops.GROUP_NORM, ops.INSTANCE_NORM, ops.RMS_NORM, ops.ATTENTION, ops.NORMALIZE,
               ops.ADDCMUL)


def _normalised(x: Tensor, dims: tuple[int, ...], eps: float, centre: bool) -> Tensor:
    """``u / sqrt(mean(u u) + eps)`` over ``dims``, ``u`` x centred (or x itself), in elementary ops."""
    u = x - x.mean(dims, keepdim=True) if centre else x
    return u * torch.rsqrt((u * u).mean(dims, keepdim=True) + eps)


@dataclass(frozen=True)
class _Elementary:
    """Runs a normalisation or attention function (or ``addcmul``, ``input + value * tensor1 * tensor2``, as timm's
    affine layers and ConvNeXt V2's global response norm call it) as its elementary ops, each of which gets its
    DeepLIFT rule."""

    def decompose(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = ops.function_name(func)
        bound = _bound(func, name, args, kwargs)
        if name in ("scaled_dot_product_attention", "multi_head_attention_forward"):
            return Decompose().decompose(func, args, kwargs)
        if name == "addcmul":  # a sum and products: one factor on the way a linear map, two the product rule
            product = bound["tensor1"] * bound["tensor2"]
            value = bound.get("value", 1)
            return bound["input"] + (product if value == 1 else value * product)
        if name == "normalize":  # x / max(||x||_p over dim, eps), for p = 2
            x, p = args[0], kwargs.get("p", args[1] if len(args) > 1 else 2.0)
            dim, eps = kwargs.get("dim", args[2] if len(args) > 2 else 1), kwargs.get("eps", 1e-12)
            if p != 2:
                raise ExplanationError(f"DeepLIFT runs F.normalize as its ops for p=2 only, got p={p!r}")
            return x / torch.sqrt((x * x).sum(dim, keepdim=True)).clamp_min(eps)
        x = bound["input"]
        weight, bias = bound.get("weight"), bound.get("bias")
        if name == "layer_norm":
            dims = tuple(range(-len(bound["normalized_shape"]), 0))
            y = _normalised(x, dims, bound.get("eps", 1e-5), centre=True)
        elif name == "rms_norm":
            dims = tuple(range(-len(bound["normalized_shape"]), 0))
            eps = bound.get("eps")
            y = _normalised(x, dims, torch.finfo(x.dtype).eps if eps is None else eps, centre=False)
        elif name == "group_norm":
            groups = bound["num_groups"]
            grouped = x.reshape(x.shape[0], groups, -1)
            y = _normalised(grouped, (-1,), bound.get("eps", 1e-5), centre=True).reshape(x.shape)
        elif name == "instance_norm" and bound.get("use_input_stats", True):
            y = _normalised(x, tuple(range(2, x.dim())), bound.get("eps", 1e-5), centre=True)
        elif name == "instance_norm":  # running statistics: an affine map of x
            shape = (1, -1, *(1,) * (x.dim() - 2))
            mean, var = bound["running_mean"].reshape(shape), bound["running_var"].reshape(shape)
            y = (x - mean) * torch.rsqrt(var + bound.get("eps", 1e-5)).detach()
        else:
            raise ExplanationError(f"DeepLIFT has no decomposition of '{name}'")
        if name in ("group_norm", "instance_norm"):  # per channel
            shape = (1, -1, *(1,) * (x.dim() - 2))
            weight = None if weight is None else weight.reshape(shape)
            bias = None if bias is None else bias.reshape(shape)
        if weight is not None:
            y = y * weight
        return y if bias is None else y + bias

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        raise ExplanationError(f"{site!r} runs as its elementary ops under DeepLIFT; it never relays itself")


_SIGNATURES = {
    "layer_norm": ("input", "normalized_shape", "weight", "bias", "eps"),
    "rms_norm": ("input", "normalized_shape", "weight", "eps"),
    "group_norm": ("input", "num_groups", "weight", "bias", "eps"),
    "instance_norm": ("input", "running_mean", "running_var", "weight", "bias", "use_input_stats", "momentum", "eps"),
    "addcmul": ("input", "tensor1", "tensor2"),  # (value: keyword only)
    "topk": ("input", "k", "dim", "largest", "sorted"),
}


def _bound(func: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by name (the torch.nn.functional signatures of the norms, ``addcmul``'s and
    ``topk``'s)."""
    names = _SIGNATURES.get(name)
    if names is None:
        return {}
    if func is torch.instance_norm:  # (torch's own takes the weight and bias first)
        names = ("input", "weight", "bias", "running_mean", "running_var", "use_input_stats", "momentum", "eps")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


@dataclass(frozen=True)
class _Softmax:
    """The softmax ``y = e / S``, ``e = exp(a - c)``, ``S = sum(e)``, with ``c`` the larger maximum of the input's and
    the reference's row (one constant for both): the Rescale rule on ``exp`` and on ``1 / S``, the product rule on
    ``e * (1 / S)``, the sum linear. With ``r = 1 / S`` and the upstream multipliers ``g`` of y, e gets
    ``g (r + r') / 2 - sum(g (e + e') / 2) / (S S')`` and a gets that times exp's secant."""

    batch: int
    # the dtypes of the tensors it splits, shared by the rules of one call: a model may compute in a coarser dtype
    # than its input (Hugging Face's LLaMA casts its RMS norm to float32 in a float64 model), and its attributions
    # are then known only to that dtype's precision (_checked_gap)
    seen: set[torch.dtype] = field(default_factory=set, compare=False)

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if len(inputs) != 1 or not isinstance(site, OpCall):
            raise ExplanationError(f"DeepLIFT's softmax rule needs one input on the way; {site!r} has {len(inputs)}")
        dim = site.kwargs.get("dim", site.args[1] if len(site.args) > 1 else None)  # (torch.softmax: no signature)
        if not isinstance(dim, int):
            raise ExplanationError(f"DeepLIFT at {site!r}: give the softmax its dim as an int, got {dim!r}")
        (a,) = inputs
        self.seen.add(a.dtype)
        a_x, a_ref = _halves(a, self.batch, site)
        g = _halves(relevance_out, self.batch, site)[0]
        shift = torch.maximum(a_x.amax(dim, keepdim=True), a_ref.amax(dim, keepdim=True))
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))  # a row masked throughout
        e_x, e_ref = torch.exp(a_x - shift), torch.exp(a_ref - shift)
        s_x, s_ref = e_x.sum(dim, keepdim=True), e_ref.sum(dim, keepdim=True)
        if bool((s_x == 0).any() or (s_ref == 0).any()):
            distance = float((a_x.amax(dim) - a_ref.amax(dim)).abs().nan_to_num(0.0).max())
            underflow = -math.log(torch.finfo(a_x.dtype).tiny)
            raise ExplanationError(
                f"DeepLIFT at {site!r}: the input's and the reference's scores lie so far apart (their rows' maxima "
                f"by up to {distance:.3g}; exp underflows {underflow:.0f} below the maximum in {a_x.dtype}) that one "
                "side's exponentials all underflow to 0; choose a reference closer to the input" +
                (", or explain in float64" if a_x.dtype != torch.float64 and distance < 700 else ""))
        r_x, r_ref = 1 / s_x, 1 / s_ref
        at_e = g * (r_x + r_ref) / 2 - (g * (e_x + e_ref) / 2).sum(dim, keepdim=True) * (r_x * r_ref)
        finite = torch.isfinite(a_x) & torch.isfinite(a_ref)  # (a row masked with -inf throughout)
        apart, divisor = _apart(torch.where(finite, a_x, 0.0), torch.where(finite, a_ref, 0.0))
        secant = torch.where(apart, (e_x - e_ref) / divisor, e_x)
        multiplier = at_e * secant
        return (torch.cat([multiplier, torch.zeros_like(multiplier)]),)


def _refusal(name: str, op: ops.Op | None) -> tuple[str, str]:
    """Why an op without a DeepLIFT rule is refused, and what to do."""
    what = "relprop has no rule for it" if op is None else f"DeepLIFT has no rule for {op!r} here"
    return what, ("DeepLIFT here covers linear maps, element-wise activations and statistics (Rescale), products "
                  "of two tensors, max pooling, the softmax, attention and layer, group, RMS and instance norms; "
                  "explain this model with method='lrp' (a transformer: preset='attnlrp'), 'integrated_gradients' or "
                  "'gradient_x_input'")


@dataclass(frozen=True)
class _Rescale:
    """The Rescale rule at an element-wise non-linearity ``y = g(a)``: the backward pass multiplies by
    ``(g(a) - g(a')) / (a - a')`` (by ``g'(a)`` where a and a' nearly agree, :func:`_apart`), for both halves of
    the batch."""

    batch: int
    seen: set[torch.dtype] = field(default_factory=set, compare=False)

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if len(inputs) != 1 or inputs[0].shape != output.shape:
            raise ExplanationError(
                f"DeepLIFT's Rescale rule needs an element-wise function of one tensor on the way; {site!r} has "
                f"{len(inputs)} such inputs of shapes {[tuple(t.shape) for t in inputs]} for an output of shape "
                f"{tuple(output.shape)}")
        (a,) = inputs
        self.seen.add(a.dtype)
        a_x, a_ref = _halves(a, self.batch, site)
        y_x, y_ref = _halves(output, self.batch, site)
        apart, divisor = _apart(a_x, a_ref)
        secant = _twice((y_x - y_ref) / divisor)
        rescaled = relevance_out * secant
        if bool(apart.all()):
            return (rescaled,)
        return (torch.where(_twice(apart), rescaled, _gradient(site, a, relevance_out)),)


_SPREADS = frozenset({"var", "std", "var_mean", "std_mean", "norm", "linalg_vector_norm"})


@dataclass(frozen=True)
class _Statistic(_Rescale):
    """A norm's statistics: the element-wise ones (``rsqrt``, ``sqrt``, powers, ``reciprocal``) take the Rescale rule;
    ``var``, ``std`` (and their ``_mean`` forms) and the 2-norm over given dimensions run as their elementary ops
    (a centred product, a sum, a division by the count, ``sqrt``)."""

    def decomposes(self, name: str) -> bool:
        return name in _SPREADS

    def decompose(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = ops.function_name(func)
        x, rest = args[0], list(args[1:])
        if name in ("norm", "linalg_vector_norm"):
            order = kwargs.get("ord" if name == "linalg_vector_norm" else "p", rest.pop(0) if rest else 2)
            dim = kwargs.get("dim", rest.pop(0) if rest else None)
            keepdim = bool(kwargs.get("keepdim", rest.pop(0) if rest else False))
            if order not in (2, 2.0, "fro") or dim is None:
                raise ExplanationError(
                    f"DeepLIFT runs '{name}' as its ops for the 2-norm over given dimensions (dim=...) only; got "
                    f"order {order!r}, dim {dim!r} at {ops.caller_location()}")
            return torch.sqrt((x * x).sum(dim, keepdim=keepdim))
        dim, unbiased = kwargs.get("dim"), kwargs.get("unbiased")
        if rest and isinstance(rest[0], bool):
            unbiased = rest.pop(0)
        elif rest:
            dim = rest.pop(0)
        if rest and isinstance(rest[0], bool):
            unbiased = rest.pop(0)
        keepdim = bool(kwargs.get("keepdim", rest.pop(0) if rest else False))
        correction = kwargs.get("correction", 1 if unbiased is None or unbiased else 0)
        if dim is None:
            raise ExplanationError(
                f"'{name}' over every element at {ops.caller_location()} mixes the samples of the batch, which "
                "DeepLIFT runs with their references; give it the dimensions of one sample (dim=...)")
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        count = math.prod(x.shape[d] for d in dims)
        mean = x.mean(dims, keepdim=True)
        u = x - mean
        spread = (u * u).sum(dims, keepdim=keepdim) / max(count - correction, 0)
        if name.startswith("std"):
            spread = torch.sqrt(spread)
        if name.endswith("_mean"):
            return spread, (mean if keepdim else mean.squeeze(dims))
        return spread


@dataclass(frozen=True)
class _Product:
    """A product: with one factor on the way a linear map (its gradient); with two, the gradient of each factor
    taken at the mean of the other's two values, ``(b + b') / 2``, which splits ``ab - a'b'`` exactly. A term added
    to the product (``addmm``'s input, a bias) keeps its gradient. A division by a tensor on the way is the product
    with its reciprocal (:meth:`_division`)."""

    batch: int
    seen: set[torch.dtype] = field(default_factory=set, compare=False)

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        self.seen.update(t.dtype for t in inputs)
        if isinstance(site, OpCall) and site.op is ops.DIV and ({1, "other"} & set(site.keys)):
            return self._division(site, relevance_out)
        added = _added_term(site)
        factors = [i for i in range(len(inputs)) if i != added]
        if len(factors) <= 1:
            return vjp(site, inputs, relevance_out)
        if len(factors) > 2:
            raise ExplanationError(
                f"DeepLIFT splits a product of two tensors on the way; {site!r} multiplies {len(factors)} of them: "
                "write it as products of two")
        means = [_twice(_mean_of_halves(t, self.batch, site)) for t in inputs]
        grads = list(vjp(site, inputs, relevance_out))  # the added term's (if any) is its plain gradient
        for i in factors:
            (other,) = (j for j in factors if j != i)
            at_mean = tuple(means[j] if j == other else t for j, t in enumerate(inputs))
            grads[i] = vjp(site, at_mean, relevance_out)[i]
        return tuple(grads)

    def _division(self, site: OpCall, relevance_out: Tensor) -> tuple[Tensor | None, ...]:
        """``a / b`` with b on the way: the product ``a r`` of ``r = 1 / b``, whose secant ``-1 / (b b')`` is exact
        (the derivative where ``b = b'``): ``a`` gets ``(r + r') / 2``, ``b`` gets ``-(a + a') / 2 / (b b')``."""
        numerator = site.args[0] if site.args else site.kwargs.get("input")
        divisor = site.args[1] if len(site.args) > 1 else site.kwargs.get("other")
        if site.kwargs.get("rounding_mode") is not None or not isinstance(divisor, Tensor) or \
                not isinstance(numerator, (Tensor, int, float)):
            raise ExplanationError(f"DeepLIFT has no rule here for {site!r}")
        a_x: Tensor | float
        a_ref: Tensor | float
        if isinstance(numerator, Tensor) and ({0, "input", "self"} & set(site.keys) or (
                numerator.dim() == divisor.dim() and numerator.shape[0] == divisor.shape[0])):  # per-sample values
            a_x, a_ref = _halves(numerator, self.batch, site)
        else:
            a_x = a_ref = numerator
        b_x, b_ref = _halves(divisor, self.batch, site)
        g = _halves(relevance_out, self.batch, site)[0]
        r_x, r_ref = 1 / b_x, 1 / b_ref
        to_divisor = reduce_to(g * (a_x + a_ref) / 2 * -(r_x * r_ref), b_x.shape)
        grads = []
        for key in site.keys:
            if key in (1, "other"):
                grads.append(torch.cat([to_divisor, torch.zeros_like(to_divisor)]))
            else:
                assert isinstance(a_x, Tensor)
                to_numerator = reduce_to(g * (r_x + r_ref) / 2, a_x.shape)
                grads.append(torch.cat([to_numerator, torch.zeros_like(to_numerator)]))
        return tuple(grads)


_EXTREMA = frozenset({"max", "min", "maximum", "minimum", "fmax", "fmin"})


@dataclass(frozen=True)
class _Extremum:
    """Max pooling and other maxima (minima) of one tensor on the way, split exactly as Captum splits max pooling:
    with ``m = max(y, y')``, ``m - y'`` goes to where the input's own maximum is and ``y - m`` to where the
    reference's is, each divided by ``a - a'`` there; their sum is ``y - y'``.

    Two forms run as other ops (:meth:`decompose`): the maximum of two tensors on the way is ``a + relu(b - a)``
    (the minimum ``a - relu(a - b)``), whose Rescale gives ``(1 - m) (a - a') + m (b - b')``, the same for
    ``max(b, a)``; a maximum over a dimension that returns its indices too (``x.max(dim)``) is ``amax`` with the
    indices a constant."""

    batch: int
    seen: set[torch.dtype] = field(default_factory=set, compare=False)

    def decomposes(self, name: str) -> bool:
        return name in _EXTREMA

    def decompose(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = ops.function_name(func)
        x = args[0] if args else kwargs.get("input")
        rest = list(args[1:])
        second = rest.pop(0) if rest else kwargs.get("other", kwargs.get("dim"))
        minimum = name in ("min", "minimum", "fmin")
        if not isinstance(x, Tensor) or kwargs.get("out") is not None:
            return NotImplemented
        if isinstance(second, Tensor):  # of two tensors (torch.max(a, b) as well)
            if not (on_path([x]) and on_path([second])):
                return NotImplemented  # one on the way: an element-wise extremum with a constant
            return x - F.relu(x - second) if minimum else x + F.relu(second - x)
        if name in ("max", "min") and isinstance(second, int):  # over a dimension: (values, indices)
            keepdim = bool(kwargs.get("keepdim", rest.pop(0) if rest else False))
            values = (torch.amin if minimum else torch.amax)(x, second, keepdim)
            with torch.no_grad():
                indices = (torch.argmin if minimum else torch.argmax)(x.detach(), second, keepdim)
            kind = torch.return_types.min if minimum else torch.return_types.max
            return kind((values, indices))
        return NotImplemented

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if len(inputs) != 1:
            raise ExplanationError(
                f"DeepLIFT has no rule here for a maximum or minimum of {len(inputs)} tensors on the way ({site!r}); "
                "explain this model with method='lrp' or 'integrated_gradients'")
        (a,) = inputs
        self.seen.add(a.dtype)
        a_x, a_ref = _halves(a, self.batch, site)
        y_x, y_ref = _halves(output, self.batch, site)
        g = _halves(relevance_out, self.batch, site)[0]
        minimum = isinstance(site, OpCall) and site.name in ("min", "amin", "minimum", "fmin")
        cross = torch.minimum(y_x, y_ref) if minimum else torch.maximum(y_x, y_ref)
        routed = vjp(site, inputs, torch.cat([g * (cross - y_ref), g * (y_x - cross)]))[0]  # to each half's winner
        share = sum(_halves(routed, self.batch, site))  # both winners' shares, at their places in the input
        apart, divisor = _apart(a_x, a_ref)
        multiplier = share / divisor
        if not bool(apart.all()):
            multiplier = torch.where(apart, multiplier, _halves(vjp(site, inputs, relevance_out)[0], self.batch,
                                                                 site)[0])
        return (torch.cat([multiplier, torch.zeros_like(multiplier)]),)


@dataclass(frozen=True)
class _Selection(Route):
    """The routing ops' own backward (:class:`~relprop.rules.Route`), with a check at ``topk``: in every slot of
    the result, the reference's selected value must be exactly its value at the input's place (the same place, or
    a tie). Each selected value is then compared with its reference value at the same place, and the selection is a
    linear map. Where the two select different values (a mixture of experts' router sending a token and its
    reference to different experts, top-k pooling), the difference of the selected values is not that map of
    ``a - a'``, and the error names the op and its line; the summation check would catch it only at the end, naming
    no op. ``sort`` is left to that check: its result is often summed or pooled, where the order does not matter."""

    batch: int

    def decomposes(self, name: str) -> bool:
        return name == "topk"

    def decompose(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = _bound(func, "topk", args, kwargs)
        x = bound.get("input")
        if not isinstance(x, Tensor) or x.dim() == 0 or not on_path([x]):
            return NotImplemented
        d = int(bound.get("dim", -1)) % x.dim()
        if d == 0:
            raise ExplanationError(
                f"DeepLIFT at topk at {ops.caller_location()}: the selection runs over dimension 0, where the input "
                f"and the reference lie side by side (a batch of 2 x {self.batch}), so it would pick across them; "
                "select over another dimension, or explain this model with method='integrated_gradients' or 'lrp'")
        with torch.no_grad():
            values, indices = torch.topk(x.detach(), bound["k"], d, bound.get("largest", True),
                                         bound.get("sorted", True))
        if indices.shape[0] % (2 * self.batch):  # the batch moved: the halves' checks elsewhere say so
            return NotImplemented
        rows = indices.shape[0] // 2
        # the reference's selected values against its values at the input's places, both copies of stored values:
        # equal at the same places and at ties (zeros after a ReLU). Not within rounding: near-ties pick other
        # places, whose indices may choose other experts (a random Mixtral's router probabilities lie within 1e-4
        # of each other, and its sum then missed f(x) - f(x') by 4%)
        own, at_input = values[rows:], x.detach()[rows:].gather(d, indices[:rows])
        differ = (own != at_input).reshape(rows, -1).any(1)
        if bool(differ.any()):
            raise ExplanationError(
                f"DeepLIFT at topk at {ops.caller_location()}: the input and the reference select different values in "
                f"{int(differ.sum())} of {rows} rows (a row: a sample, or a token where the model folds its positions "
                "into the batch), so a selected value would be compared with a reference value from another place. "
                "A mixture of experts' router does this (it sends a token and its reference to different experts), "
                "as does top-k pooling. DeepLIFT splits a maximum or minimum between the input's place and the "
                "reference's, but not a top-k selection: explain this model with method='integrated_gradients' or "
                "'gradient_x_input', or method='lrp' (preset='attnlrp' for a transformer); or choose a reference at "
                "which the model selects the same places")
        return NotImplemented


@method("deeplift", several_targets=True)
def deeplift(model: nn.Module, x: Tensor, target: Tensor | OutputSeed, *, baseline: Tensor | float = 0.0,
             layers: Sequence[str] = (), layer_at: str = "output") -> Attribution:
    """DeepLIFT-Rescale against the reference input ``baseline`` (a number, or a tensor that broadcasts to x's
    shape), with ``details["summation_gap"]``: ``sum R - (f(x) - f(x'))`` per sample, zero up to rounding (an
    activation whose input differs from the reference's by less than the square root of the dtype's precision times
    their size takes its derivative there instead of the secant). At the modules named in ``layers`` (their outputs,
    or inputs with ``layer_at="input"``) the attributions of their values, ``(a - a') m`` with ``m`` the multipliers
    there (Captum's ``LayerDeepLift``), in ``Explanation.layers``, and ``details["summation_by_layer"]``, each
    layer's ``sum - (f(x) - f(x'))`` (zero for a layer that every path from the input to the output passes through,
    not for one beside a residual). A (batch, k) target gives every result as (batch, k, ...) from one forward pass.
    See :mod:`relprop.methods.deeplift`."""
    root = root_module(model)
    scripted = next((name for name, m in root.named_modules() if isinstance(m, torch.jit.ScriptModule)), None)
    if scripted is not None:  # its activations would keep their gradient, unseen
        raise script_module_error(scripted or type(root).__name__)
    reference = torch.as_tensor(baseline).to(x).expand_as(x)  # (its shape and values: relprop.validate)
    batch = len(x)
    both = mark_path(torch.cat([x.detach(), reference]).requires_grad_())
    seen: set[torch.dtype] = set()  # the dtypes the rules split
    rescale, product = _Rescale(batch, seen), _Product(batch, seen)
    op_rules: dict[ops.Op, Rule] = {**{op: Route() for op in _LINEAR}, ops.ROUTE: _Selection(batch),
                                    ops.ACTIVATION: rescale,
                                    ops.MUL: product, ops.DIV: product, ops.MATMUL: product,
                                    ops.MAX: _Extremum(batch, seen), ops.SOFTMAX: _Softmax(batch, seen),
                                    ops.NORM_STATISTIC: _Statistic(batch, seen), ops.POWER: rescale,
                                    **{op: _Elementary() for op in _DECOMPOSED}}
    guard = FunctionalGuard(op_rules, refusal=_refusal)
    several = is_several(target)
    with protected(root), contextlib.ExitStack() as stack:  # the model's lock; Ctrl-C waits for a safe point
        # stock nn.LSTM / nn.GRU / nn.RNN run as explicit cells, whose gates and products get the rules below
        stack.callback(ExplicitRecurrent().apply(root))
        modules = [(name, m, rescale) for name, m in root.named_modules() if activation_module(name, m)]
        stack.enter_context(attach_rules(model, modules, guard=guard, in_region=True))
        records = stack.enter_context(recorded_layers(model, layers, layer_at))
        stack.enter_context(torch.enable_grad())
        with guard, explained_forward():
            output = model(both)
        refuse_hidden((output,), lambda: f"the output of {type(root).__name__}")
        if output.dim() == 0 or output.shape[0] != 2 * batch:
            raise ExplanationError(f"the model returned shape {tuple(output.shape)} for a batch of {2 * batch}")
        if several:  # (batch, k): one backward pass per class, batched, over the same forward pass
            assert isinstance(target, Tensor)
            starts = start_gradients(output[:batch], target)
            grad, at_layers = backward_batched(output, both, torch.cat([starts, torch.zeros_like(starts)], 1),
                                               records)  # every value (k, ...)
        else:
            start = start_gradient(output[:batch], target)
            grad, at_layers = backward(output, both, torch.cat([start, torch.zeros_like(start)]), records)
    scores = output.detach()
    if several:
        assert isinstance(target, Tensor)
        high, low = target_scores(scores[:batch], target), target_scores(scores[batch:], target)  # (k * batch,)
    else:
        high, low = target_score(scores[:batch], target), target_score(scores[batch:], target)
    delta = high - low

    def attributed(value: Tensor, multipliers: Tensor) -> Tensor:
        """(value - its reference) times the multipliers of the input's half; target-major for k targets."""
        first, second = value.detach().chunk(2)
        if not several:
            return (first - second) * multipliers.chunk(2)[0]
        return target_major((first - second).unsqueeze(0) * multipliers.chunk(2, dim=1)[0])

    relevance = attributed(both, grad)
    coarsest = max(seen | {relevance.dtype}, key=lambda dtype: torch.finfo(dtype).eps)
    gap = _checked_gap(relevance.reshape(len(delta), -1), delta, torch.maximum(high.abs(), low.abs()), coarsest)
    layer_relevance = stacked({name: [attributed(v, m) for v, m in zip(records[name], at_layers[name])]
                               for name in layers})
    details = {"summation_gap": gap}
    if layers:
        details["summation_by_layer"] = gap_by_layer(layer_relevance, delta)
    result = Attribution(relevance, details, layer_relevance)
    return result.per_target(target.shape[1]) if several and isinstance(target, Tensor) else result


def _checked_gap(relevance: Tensor, delta: Tensor, size: Tensor, coarsest: torch.dtype) -> Tensor:
    """``sum R - delta`` per row of ``relevance`` (rows, features); an ExplanationError where it is not rounding.
    ``size``: the larger of ``|f(x)|`` and ``|f(x')|`` per row; ``coarsest``: the least precise dtype of the values
    the rules saw (a model may compute its norms in float32 inside a float64 model), whose precision bounds the
    attributions'.

    Every rule here sums to delta exactly, up to the derivative taken where an activation's two inputs nearly agree
    (each such term off by at most the square root of the dtype's precision of itself, :func:`_apart`), and
    rounding; a gap above 1e-3 of delta (16 units of the last place in float16 and bfloat16) plus that root of the
    precision times the attributions' absolute sum means the halves of a tensor on the way were not the input's and
    the reference's (a batch folded with another dimension outermost, (steps * batch, ...)), or that values were
    picked at places found from the values (sort, a gather at argmax's indices, a top-k selection of ties whose
    indices choose other rows, as a mixture of experts regroups its tokens), which differ between the two halves.
    Attributions whose absolute values add up to more than that limit over the dtype's precision times ``|delta|``
    cancel beyond what the dtype can check (a reference at which a norm sees a constant input), and are
    refused as well; the dtype's precision is ``coarsest``'s (Hugging Face's Gemma and Qwen3 in float64, their RMS
    norms in float32, gave attributions adding up to 1e6 times the difference with token 0 as the reference, which
    float32 knows to 0.1-0.25 of it).

    Both checks allow 16 units of the last place of the scores themselves besides: f(x) - f(x') is known no better
    (a random model whose scores hardly depend on its input: timm's ConvMixer, RepVGG and CSPNeXt, where the
    difference was 0 or one unit of the last place and the attributions summed to 1e-13)."""
    gap = relevance.sum(1) - delta
    wide = relevance.double()  # the check itself summed without the dtype's rounding
    absolute = wide.abs().sum(1)
    eps = torch.finfo(coarsest).eps
    limit = max(1e-3, 16 * eps)
    floor = 16 * eps * size.double()  # the scores' own rounding
    allowed = limit * delta.double().abs() + math.sqrt(eps) * absolute + floor
    if bool(((wide.sum(1) - delta.double()).abs() > allowed).any()):
        worst = int((gap.abs() / allowed.clamp(min=torch.finfo(allowed.dtype).tiny)).argmax())
        raise ExplanationError(
            f"DeepLIFT's attributions do not sum to f(x) - f(x') (gap {float(gap[worst]):.3g} against "
            f"{float(delta[worst]):.3g}): the input and the reference run as one batch, split in halves of dimension "
            "0 at every non-linearity. Either the model has folded another dimension outside the batch there (a "
            "time-major (steps * batch, ...) layout; explain it with the batch outermost), or it picks values at "
            "places found from the values themselves (sort, a gather at the indices of a maximum, rows regrouped "
            "by a mixture of experts' choices), which are other places for the reference: DeepLIFT here splits "
            "only a maximum or minimum so; explain such a model with method='integrated_gradients' or 'lrp'"
            + ("" if coarsest == torch.float64 else
            f". In {coarsest} it may also be rounding inside the model where f(x) - f(x') is small against the "
            "values there" + (": explain in float64 to tell" if coarsest == relevance.dtype else
                              f" (the model computes some of its values in {coarsest})")))
    cancelling = (absolute * eps > limit * delta.double().abs() + floor) & (absolute > 0)
    if bool(cancelling.any()):
        worst = int((absolute / delta.double().abs().clamp(min=torch.finfo(torch.float64).tiny)).argmax())
        raise ExplanationError(
            f"DeepLIFT's attributions cancel: for sample {worst} their absolute values add up to "
            f"{float(absolute[worst]):.3g}, against f(x) - f(x') = {float(delta[worst]):.3g}, so that "
            f"{coarsest}'s rounding alone could move their sum by more than {limit:g} of it and no heatmap of them "
            "means much" + ("" if coarsest == relevance.dtype else
                            f" (the model computes some of its values in {coarsest}, a norm cast to it)") +
            ". Usually a normalisation whose input is constant at the reference (a zero image through a convolution "
            "without bias, a reference of padding tokens) has a huge secant there; choose a reference on which the "
            "model's norms see varied values (noise, a blurred image, other tokens)" +
            (", or explain in float64" if coarsest == relevance.dtype != torch.float64 else ""))
    return gap


@method("deeplift_shap")
def deeplift_shap(model: nn.Module, x: Tensor, target: Tensor | OutputSeed, *, baselines: Tensor | None = None,
                  batch_size: int | None = None, layers: Sequence[str] = (), layer_at: str = "output") -> Attribution:
    """DeepLIFT averaged over a set of reference inputs (Lundberg and Lee 2017's DeepSHAP, Captum's
    ``DeepLiftShap``): ``baselines`` (n, *x.shape[1:]), e.g. samples of the training data; every sample is explained
    against each of them (as one batch of n times the size, or chunks of ``batch_size`` pairs) and the results
    averaged. ``details["summation_gap"]``: ``sum R - (f(x) - mean_j f(b_j))``, rounding. At the modules named in
    ``layers`` the attributions of their outputs (inputs with ``layer_at="input"``) averaged the same way, in
    ``Explanation.layers`` (Captum's ``LayerDeepLiftShap``)."""
    references = reference_inputs(baselines, x, "deeplift_shap")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
    n, batch = len(references), len(x)
    per_chunk = n if batch_size is None else max(batch_size // batch, 1)  # whole copies of the batch per chunk
    relevance, gaps = torch.zeros_like(x), torch.zeros(batch, dtype=x.dtype, device=x.device)
    at_layers: dict[str, Tensor] = {}
    for start in range(0, n, per_chunk):
        chunk = references[start:start + per_chunk]  # copy-major: copy j of sample i at j * batch + i
        tiled = x.repeat(len(chunk), *(1,) * (x.dim() - 1))
        reference = chunk.repeat_interleave(batch, 0)
        result = deeplift(model, tiled, target, baseline=reference, layers=layers, layer_at=layer_at)
        relevance += result.relevance.reshape(len(chunk), *x.shape).sum(0)
        gaps += result.details["summation_gap"].reshape(len(chunk), batch).sum(0)
        for name, value in result.layers.items():
            summed = value.reshape(len(chunk), batch, *value.shape[1:]).sum(0)
            at_layers[name] = summed if name not in at_layers else at_layers[name] + summed
    return Attribution(relevance / n, {"summation_gap": gaps / n}, {name: v / n for name, v in at_layers.items()})
