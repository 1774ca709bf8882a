"""Functional operations as rule sites: what a model's ``forward`` does outside modules (``x + y``, ``x.mean()``).

An :class:`Op` names one operation by the torch function names that perform it; a RuleMap gives it a rule as it
gives a module type one, e.g. ``RuleMap([(ops.ADD, rules.Proportional()), (ops.MUL, rules.Uniform())])``. While a
model is explained, every call of an op on the relevance path (a tensor derived from the explained input) becomes an
:class:`OpCall`, the site its rule receives. An op that no rule covers raises an ExplanationError naming the op and
the line of the model that called it.

>>> ADD
ops.ADD
>>> lookup("__iadd__") is ADD, lookup("permute") is ROUTE, lookup("cumsum") is None
(True, True, True)
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .errors import ExplanationError

__all__ = [
    "Op", "OpCall", "lookup", "ALL", "ADD", "SUB", "MUL", "DIV", "SUM", "MEAN", "AVG_POOL", "MAX", "INTERPOLATE",
    "ACTIVATION", "BATCH_NORM", "LAYER_NORM", "GROUP_NORM", "INSTANCE_NORM", "RMS_NORM", "DROPOUT", "ROUTE",
    "CONSTANT", "MATMUL", "SOFTMAX", "ATTENTION", "NORM_STATISTIC", "NORMALIZE", "ADDCMUL",
]


@dataclass(frozen=True)
class Op:
    """One functional operation: the ``__name__``s of the torch functions and tensor methods that perform it."""

    name: str
    names: frozenset[str] = field(repr=False)

    def __repr__(self) -> str:
        return f"ops.{self.name.upper()}"


def _op(name: str, names: str) -> Op:
    return Op(name, frozenset(names.split()))


ADD = _op("add", "add add_ __add__ __radd__ __iadd__")
SUB = _op("sub", "sub sub_ subtract subtract_ rsub __sub__ __rsub__ __isub__ neg neg_ negative __neg__")
MUL = _op("mul", "mul mul_ multiply multiply_ __mul__ __rmul__ __imul__")
DIV = _op("div", "div div_ divide divide_ true_divide true_divide_ __truediv__ __itruediv__ __div__ __idiv__")
SUM = _op("sum", "sum nansum fold index_add index_add_ scatter_add scatter_add_")  # F.fold sums overlapping patches;
# index_add and scatter_add sum rows into places (a mixture of experts adds each expert's output to its tokens)
MEAN = _op("mean", "mean nanmean")
AVG_POOL = _op("avg_pool", "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d "
                           "adaptive_avg_pool3d")
MAX = _op("max", "max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices "
                 "max_pool3d_with_indices adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d "
                 "adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices adaptive_max_pool3d_with_indices "
                 "max amax maximum fmax min amin minimum fmin")
INTERPOLATE = _op("interpolate", "interpolate upsample upsample_bilinear upsample_nearest")
ACTIVATION = _op("activation", "relu relu_ relu6 hardtanh hardtanh_ hardswish hardswish_ silu silu_ gelu sigmoid "
                               "sigmoid_ tanh tanh_ hardsigmoid hardsigmoid_ leaky_relu leaky_relu_ elu elu_ selu "
                               "selu_ celu celu_ softplus mish mish_ threshold threshold_ clamp clamp_ clip clip_ "
                               "clamp_min clamp_min_ clamp_max clamp_max_ logsigmoid log_sigmoid _threshold "
                               "softsign prelu rrelu erf erf_")
BATCH_NORM = _op("batch_norm", "batch_norm")
LAYER_NORM = _op("layer_norm", "layer_norm")
GROUP_NORM = _op("group_norm", "group_norm")
INSTANCE_NORM = _op("instance_norm", "instance_norm")  # nn.InstanceNormNd: a group norm with a group per channel
RMS_NORM = _op("rms_norm", "rms_norm")
# x / max(||x||, eps) (Swin V2's cosine attention); x / (k + alpha * mean of x^2 over nearby channels)^beta (local
# response normalisation, AlexNet's era): a division by a statistic, held constant
NORMALIZE = _op("normalize", "normalize local_response_norm")
DROPOUT = _op("dropout", "dropout dropout_ dropout1d dropout2d dropout3d alpha_dropout alpha_dropout_ "
                         "feature_alpha_dropout feature_alpha_dropout_")
# Products of matrices (q k^T, attention @ v) and linear maps written as functions (F.linear(x, w), x @ w,
# F.conv2d(x, w): a fixed blur filter, a convolution whose weight the model computes)
MATMUL = _op("matmul", "matmul __matmul__ __rmatmul__ mm bmm einsum linear addmm baddbmm addbmm mv dot inner "
                       "tensordot conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d "
                       "_grouped_mm grouped_mm")  # (grouped: mixture-of-experts layers, one weight per group)
SOFTMAX = _op("softmax", "softmax")
# Attention written as one function: decomposed into its matmuls and softmax, which get their own rules
ATTENTION = _op("attention", "scaled_dot_product_attention multi_head_attention_forward")
# The statistics a hand-written normalisation divides by (RMSNorm: x * rsqrt(mean(x^2) + eps); ConvNeXt V2's global
# response normalisation: x * (||x|| / mean ||x||); Nystromformer's 1 / max(sum(k)) * k^T)
NORM_STATISTIC = _op("norm_statistic", "rsqrt rsqrt_ sqrt sqrt_ pow pow_ __pow__ square var std var_mean std_mean "
                                       "norm linalg_vector_norm reciprocal reciprocal_ __rdiv__ __rtruediv__")
# x ** n, n a positive integer (x.pow(2), torch.square, x ** 3.0): the product of n copies of x, so the uniform
# product rule passes all of its relevance to x. The op guard tells it from the exponent (the names are
# NORM_STATISTIC's, which takes every other power: x ** -0.5 in a hand-written norm)
POWER = _op("power", "")
POWER_NAMES = frozenset({"pow", "pow_", "__pow__", "square", "square_"})
# Operations whose backward only selects, copies, moves or reshapes values: their own gradient routes relevance.
ROUTE = _op("route", """view view_as reshape reshape_as flatten unflatten permute transpose t squeeze unsqueeze
    contiguous clone expand expand_as repeat repeat_interleave tile cat concat concatenate stack hstack vstack dstack
    split split_with_sizes tensor_split chunk unbind __getitem__ __setitem__ narrow select index_select gather
    take_along_dim flip fliplr flipud roll rot90 movedim moveaxis swapaxes swapdims to float double half bfloat16
    type type_as cpu cuda __get__ unfold pad pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle
    where masked_fill masked_fill_ topk sort diagonal tril triu index_fill index_fill_ masked_scatter masked_scatter_
    unsqueeze_ squeeze_ t_ transpose_ swapdims_ swapaxes_ as_strided complex copy_""")
# In-place routing ops that change the shape of the tensor they are called on, not its values
INPLACE_VIEWS = frozenset({"unsqueeze_", "squeeze_", "t_", "transpose_", "swapdims_", "swapaxes_"})
# Routing ops that bring in values of their own: where each takes them from ((position, keyword), default)
NEW_VALUES: dict[str, tuple[tuple[int, str], Any]] = {
    **dict.fromkeys(("masked_fill", "masked_fill_"), ((2, "value"), None)),
    **dict.fromkeys(("where",), ((2, "other"), None)),  # Tensor.where(self, condition, other)
    **dict.fromkeys(("__setitem__",), ((2, "value"), None)),
    **dict.fromkeys(("pad",), ((3, "value"), 0.0)),  # F.pad(input, pad, mode, value): constant mode only
    **dict.fromkeys(("index_fill", "index_fill_"), ((3, "value"), None)),  # x.index_fill(dim, index, value)
    **dict.fromkeys(("masked_scatter", "masked_scatter_"), ((2, "source"), None)),  # x.masked_scatter(mask, source)
}
# Operations whose result is a constant (no relevance flows through it).
CONSTANT = _op("constant", "detach new_zeros new_ones new_full new_empty new_tensor zeros_like ones_like empty_like "
                           "full_like rand_like randn_like randint_like")

# input + value * tensor1 * tensor2 in one function (timm's affine layers: torch.addcmul(bias, weight, x)), at most
# one factor on the path: a sum whose terms each take their share
ADDCMUL = _op("addcmul", "addcmul")
FOURIER = _op("fourier", "fft_fft fft_fft2 fft_fftn fft_rfft fft_rfft2 fft_rfftn")  # of a real tensor
ALL: tuple[Op, ...] = (ADD, SUB, MUL, DIV, SUM, MEAN, AVG_POOL, MAX, INTERPOLATE, ACTIVATION, BATCH_NORM, LAYER_NORM,
                       GROUP_NORM, INSTANCE_NORM, RMS_NORM, DROPOUT, ROUTE, CONSTANT, MATMUL, SOFTMAX, ATTENTION,
                       NORM_STATISTIC, NORMALIZE, ADDCMUL, POWER, FOURIER)
_BY_NAME = {name: op for op in ALL for name in op.names}
# Bounded functions and the range of their output. A bounded output, or a constant affine map of one (``1 + erf(u)``,
# ``0.5 * (1 + tanh(u))``, ``1 - sigmoid(u)``), that cannot be negative is a gate: a factor that scales the signal
GATE_NAMES = frozenset({"sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_"})
BOUNDED: dict[str, tuple[float, float]] = {
    **dict.fromkeys(GATE_NAMES, (0.0, 1.0)), **dict.fromkeys(("tanh", "tanh_", "erf", "erf_"), (-1.0, 1.0)),
}


def lookup(name: str) -> Op | None:
    """The op a torch function name belongs to, or None for an operation relprop has no op for."""
    return _BY_NAME.get(name)


def function_name(func: Any) -> str:
    """The ``__name__`` of a torch function as a TorchFunctionMode receives it."""
    return str(getattr(func, "__name__", repr(func)))


def condition_first(args: tuple[Any, ...]) -> bool:
    """Whether a ``where`` call is ``torch.where(condition, input, other)`` (its first argument a boolean tensor),
    not ``Tensor.where(self, condition, other)``."""
    return bool(args) and isinstance(args[0], Tensor) and args[0].dtype == torch.bool


def is_inplace_name(name: str) -> bool:
    """Tensor methods ``add_``, operators ``__iadd__`` and ``x[i] = y`` modify their first argument."""
    return ((name.endswith("_") and not name.startswith("_")) or (name.startswith("__i") and name.endswith("__"))
            or name == "__setitem__")


@functools.cache
def _signature(func: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):  # builtins without a Python signature
        return None


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_RELPROP_DIR = os.path.dirname(__file__) + os.sep


def caller_location() -> str:
    """``file:line`` of the innermost frame outside torch and relprop: the line of the model that called an op."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith((_TORCH_DIR, _RELPROP_DIR)):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return "<unknown>"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


@dataclass(eq=False)
class OpCall:
    """One call of an op on the relevance path: the site an op rule receives.

    ``keys`` say where the path tensors (the rule's ``inputs``) stand among ``args`` (int) or ``kwargs`` (str);
    :meth:`forward` calls the same function with other tensors in their place, always out of place.
    """

    op: Op
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    keys: tuple[int | str, ...]
    location: str
    gates: tuple[bool, ...] = ()  # per input: the output of a sigmoid-like gate

    @property
    def name(self) -> str:
        return function_name(self.func)

    def __repr__(self) -> str:
        return f"{self.name} ({self.op!r}) at {self.location}"

    def inputs(self) -> tuple[Tensor, ...]:
        return tuple(self.args[k] if isinstance(k, int) else self.kwargs[k] for k in self.keys)

    def forward(self, *inputs: Any) -> Any:
        """The operation on ``inputs`` in place of the path tensors (the others arguments as called)."""
        args, kwargs = list(self.args), dict(self.kwargs)
        for key, value in zip(self.keys, inputs):
            if isinstance(key, int):
                args[key] = value
            else:
                kwargs[key] = value
        return self.func(*args, **kwargs)

    def argument(self, name: str) -> Any:
        """The value of the named parameter in this call (its default if not passed)."""
        signature = _signature(self.func)
        if signature is None:
            raise ExplanationError(f"cannot read the arguments of {self!r}: the function has no Python signature")
        bound = signature.bind(*self.args, **self.kwargs)
        bound.apply_defaults()
        return bound.arguments[name]


def out_of_place(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None:
    """The out-of-place twin of an in-place call (``add_`` -> ``add``, ``F.relu(x, inplace=True)`` -> ``F.relu(x)``).

    Returns ``(function, args, kwargs)``, or None when the call does not modify its arguments.
    """
    name = function_name(func)
    if is_inplace_name(name):
        base = "__" + name[3:] if name.startswith("__i") else name[:-1]
        twin = getattr(Tensor, base, None) or getattr(torch, base, None)
        if twin is None:
            raise ExplanationError(f"in-place operation '{name}' has no out-of-place twin relprop could run")
        return twin, args, kwargs
    signature = _signature(func)
    if signature is None or "inplace" not in signature.parameters:
        return None
    position = list(signature.parameters).index("inplace")
    if len(args) > position:
        if not args[position]:
            return None
        return func, args[:position] + (False,) + args[position + 1 :], kwargs
    if not kwargs.get("inplace", False):
        return None
    return func, args, {**kwargs, "inplace": False}
