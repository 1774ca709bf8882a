"""Core plumbing: the Rule protocol, the relay that carries relevance backward, and the two kinds of rule site.

The convention (as in zennit) is that **the backward pass carries relevance**: while rules are attached to a
model, the gradient that arrives at the input *is* the relevance. A rule sits at a *site*:

- a module: a wrapper around each call of the module (installed as its ``forward`` while the rules are attached)
  runs it on detached inputs and sends its output through :class:`_Relay`, whose backward calls
  ``rule.relevance(module, inputs, output, relevance_out)``; a z-rule that declares ``output_denominator`` (Epsilon
  on a plain Linear or Conv) runs in autograd's own form instead (:func:`_carry`, :func:`_divided`), with no Python
  in its backward;
- a functional operation (``x + y``, ``x.mean(1)``, ``F.relu(x)``): :class:`FunctionalGuard`, a
  ``TorchFunctionMode``, sees every call on the relevance path outside ruled modules *before* it runs and gives it
  its rule from the RuleMap through the same relay, with an :class:`~relprop.ops.OpCall` as the site. In-place ops
  run out of place, so nothing ever modifies a relayed tensor. An op without a rule raises, naming the op and the
  line of the model that called it.

The *relevance path* is every tensor derived from the explained input: such tensors carry a tag, set on the input
and on the result of every op or ruled module that takes a tagged tensor. Parameters and buffers are off the path,
so ``x * self.scale`` is a product with a constant, not of two path tensors. An untagged tensor whose autograd
history reaches the path was computed where the guard cannot see (a TorchScript function): an op, the outermost
ruled module or the model's output that takes one raises (:func:`refuse_hidden`).

An exact ``nn.Sequential`` of ruled modules needs neither wrappers nor the guard: :class:`SequentialPlan` runs each
child through its rule's steps; where no child needs the guard at all, :class:`PlanTrace` runs the forward pass
without autograd and calls each rule's ``relevance`` in reverse order, as the relay's backward would.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from . import ops
from .errors import ExplanationError
from .ops import Op, OpCall
from .safety import interruption_point, protected

__all__ = [
    "ExplanationError", "Rule", "Site", "MergedBatchNorm", "OwnForward", "stabilize", "attach_rules", "FunctionalGuard",
    "eval_mode", "mark_path", "on_path", "attached_rule", "SequentialPlan", "PlanTrace",
]


@dataclass(frozen=True, eq=False)
class MergedBatchNorm:
    """A Linear/Conv layer and the eval-mode batch norm it feeds, explained as one affine map (a rule site).

    The engine finds such pairs by data flow: a ``batch_norm`` call whose input is the output of a layer with a
    z-rule. ``y = a (x W^T + b - mean) + beta`` with ``a = gamma / sqrt(var + eps)`` is the layer with ``W' = a W``
    and ``b' = a (b - mean) + beta``; the layer's rule explains it. Nothing in the model is modified.
    """

    layer: nn.Module | OwnForward
    norm: OpCall

    def __repr__(self) -> str:
        return f"{type(self.layer).__name__} merged with the batch norm at {self.norm.location}"

    def forward(self, x: Tensor) -> Tensor:
        """The pair's function (the layer without relprop's wrapper, which passes calls from a rule's backward
        through, then the batch norm)."""
        result: Tensor = self.norm.forward(self.layer.forward(x))
        return result


@dataclass(frozen=True, eq=False)
class OwnForward:
    """A Linear/Conv subclass whose own forward computes its map in another way than its stock class (a rule site):
    timm's ``Conv2dSame`` pads each input to "same" size first, by an amount it computes per call; ``StdConv2d``
    standardises its weight before the convolution.

    Such a forward makes one ``F.linear``/``F.convNd`` call. ``weight`` and ``bias`` are what it passed to that call
    (the layer's effective weight), and the z-rules compute the map with their modified weights put into that call
    (:meth:`map`). Where the call took the layer's input as it is (``call``: the function, its arguments and keyword
    arguments), that is the call itself; otherwise the layer's forward runs again with the call's weights replaced.
    The engine makes one where its checks hold (:func:`_own_forward`): the call's result is the layer's output, and
    what the forward does to the input before the call is linear. Nothing in the model is modified.
    """

    layer: nn.Module
    weight: Tensor
    bias: Tensor | None
    call: tuple[Callable[..., Tensor], list[Any], dict[str, Any]] | None = None

    def __repr__(self) -> str:
        return f"{type(self.layer).__name__} (its own forward)"

    def forward(self, x: Tensor) -> Tensor:
        """The layer's function (without relprop's wrapper, which passes calls from a rule's backward through)."""
        result: Tensor = self.layer.forward(x)
        return result

    def conv_arguments(self) -> tuple[Any, Any, Any, Any]:
        """``(stride, padding, dilation, groups)`` of a direct convolution ``call`` (their defaults where not
        passed)."""
        assert self.call is not None
        _, values, kwargs = self.call
        stride, padding, dilation, groups = (_layer_argument(values, kwargs, key, position, default) for
                                             key, position, default in _CONV_ARGUMENTS)
        return stride, padding, dilation, groups

    def map(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The layer's map of ``x`` with ``weight`` and ``bias`` in its linear or convolution call."""
        if self.call is not None:
            func, values, kwargs = self.call
            kwargs = dict(kwargs)  # the call's own stay as they were
            return func(*_replaced(values, kwargs, (x, weight, bias)), **kwargs)
        seen = _one_layer_call(self.layer, x, (weight, bias))
        if seen is None:
            raise ExplanationError(
                f"{self!r} made other than one linear or convolution call with other weights, or returned something "
                "else than the call's result; it made one, whose result it returned, when it was checked"
            )
        result: Tensor = seen[0]
        return result


# the functions a Linear/ConvNd subclass's own forward computes its map with: F.linear(input, weight, bias) and
# F.convNd(input, weight, bias, stride, padding, dilation, groups)
_LAYER_FUNCTIONS = frozenset({"linear", "conv1d", "conv2d", "conv3d"})
_LAYER_SLOTS = (("input", 0), ("weight", 1), ("bias", 2))
_CONV_ARGUMENTS = (("stride", 3, 1), ("padding", 4, 0), ("dilation", 5, 1), ("groups", 6, 1))  # name, place, default


def _replaced(values: list[Any], kwargs: dict[str, Any], replacements: Sequence[Any]) -> list[Any]:
    """A layer function's positional arguments with ``replacements`` for (input, weight, bias), or for the last of
    them where there are fewer; a keyword argument among them is replaced in ``kwargs`` (in place)."""
    values = list(values)
    slots = _LAYER_SLOTS[len(_LAYER_SLOTS) - len(replacements):]
    for (key, position), value in zip(slots, replacements):
        if key in kwargs or len(values) <= position:
            kwargs[key] = value
        else:
            values[position] = value
    return values


def _layer_argument(values: list[Any], kwargs: dict[str, Any], key: str, position: int, default: Any = None) -> Any:
    return kwargs[key] if key in kwargs else values[position] if len(values) > position else default


def _one_layer_call(layer: nn.Module, x: Tensor, replace: tuple[Tensor, Tensor | None] | None = None,
                    ) -> tuple[Any, Any, list[Any], dict[str, Any]] | None:
    """``layer``'s own forward run on ``x`` (with ``replace`` for the weight and bias of its linear or convolution
    call): that call's (result, function, arguments, keyword arguments) where the forward made exactly one and
    returned its result, None otherwise."""
    with torch._C._EnableTorchFunction(), _LayerCalls(replace) as calls:
        result = type(layer).forward(layer, x)
    return calls.seen[0] if len(calls.seen) == 1 and calls.seen[0][0] is result else None


class _LayerCalls(TorchFunctionMode):
    """The ``F.linear``/``F.convNd`` calls of a layer's own forward: each one's (result, function, arguments,
    keyword arguments) is recorded in ``seen``, and with ``replace`` given, the call runs with that (weight, bias)
    instead of its own."""

    def __init__(self, replace: tuple[Tensor, Tensor | None] | None = None) -> None:
        super().__init__()
        self.replace = replace
        self.seen: list[tuple[Any, Any, list[Any], dict[str, Any]]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if ops.function_name(func) not in _LAYER_FUNCTIONS:
            return func(*args, **kwargs)
        values = list(args) if self.replace is None else _replaced(list(args), kwargs, self.replace)
        result = func(*values, **kwargs)
        self.seen.append((result, func, values, kwargs))
        return result


Site = nn.Module | OpCall | MergedBatchNorm | OwnForward


@runtime_checkable
class Rule(Protocol):
    """A relevance rule: maps the relevance of a site's output to relevance of its inputs.

    ``site`` is the module, or the :class:`~relprop.ops.OpCall` of a functional operation; ``inputs`` are the
    tensors it was called with (for an op, the ones on the relevance path), ``output`` its (detached) output and
    ``relevance_out`` the relevance arriving at the output. Return one entry per input (None for none).
    """

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]: ...


# Optional attributes of a rule, read by the engine:
# - ``route(site, inputs, output) -> int | None``: when it returns an index, all relevance of the output goes
#   unchanged to that input. The engine then writes ``output.detach() + (x - x.detach())``: the same value, an
#   identity backward, no Python in it.
# - ``gradient_is_relevance = True``: at an op site, the op's own backward carries the relevance (routing
#   operations, max pooling), so the op runs as it is.
# - ``merges_batch_norm = True``: a batch norm fed by a layer with this rule is explained with the layer
#   (:class:`MergedBatchNorm`).
# - ``constant_output = True``: at an op site, the result is a constant, off the relevance path.
# - ``decompose(func, args, kwargs)``: at an op site, computes the op from other ops, which then get their rules;
#   with ``decomposes(name) -> bool``, only the functions of that name (the others get ``relevance``); a call it
#   returns ``NotImplemented`` for gets ``relevance`` too (a form of the function it does not decompose), or runs
#   as it is with ``gradient_is_relevance``: it is asked first, so it may only check the call (DeepLIFT's top-k).


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Switch every sub-module to eval mode and restore each module's own flag afterwards, also after an error.

    Setting and restoring the flags run with Ctrl-C deferred (:func:`~relprop.safety.protected`); the body does
    not, so a long optimisation inside stays interruptible.
    """
    flags = [(module, module.training) for module in model.modules()]
    try:
        with protected():
            model.eval()
        yield
    finally:
        with protected():
            for module, flag in flags:
                module.training = flag


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """Shift ``z`` away from zero by ``epsilon`` in the direction of its sign (zero counts as positive).

    >>> stabilize(torch.tensor([-2.0, 0.0, 3.0]), 0.5)
    tensor([-2.5000,  0.5000,  3.5000])
    """
    # epsilon with the sign of z + 0.0 (which turns -0.0 into +0.0), then z added: three kernels
    return torch.copysign(_constant(epsilon, z.dtype), z + 0.0).add_(z)


_CONSTANTS: dict[tuple[float, torch.dtype], Tensor] = {}


def _constant(value: float, dtype: torch.dtype) -> Tensor:
    """A 0-dim CPU tensor of ``value`` in ``dtype``, made once (a 0-dim CPU tensor combines with tensors on any
    device, as a Python number does)."""
    constant = _CONSTANTS.get((value, dtype))
    if constant is None:
        with torch.inference_mode(False):
            constant = torch.tensor(value, dtype=dtype, device="cpu")
        if type(constant) is Tensor:  # not a fake or other subclass made under a mode (torch.compile's tracing)
            constant = _CONSTANTS.setdefault((value, dtype), constant)
    return constant


def _has(value: object, name: str) -> bool:
    """Whether ``value`` has the attribute ``name`` on its class or set on the instance; without the cost of
    ``hasattr`` on an ``nn.Module``, whose ``__getattr__`` raises for a missing name (a parameter, buffer or
    sub-module is not looked for)."""
    return hasattr(type(value), name) or name in getattr(value, "__dict__", ())


def _works_in_place(module: nn.Module) -> bool:
    """Whether ``module`` says it changes its input in place (``inplace``, which nn.ReLU sets on the instance and a
    class may define, e.g. as a property)."""
    return _has(module, "inplace") and bool(getattr(module, "inplace"))  # noqa: B009


def _not_a_tensor(name: str, module: nn.Module, rule: object, output: object) -> ExplanationError:
    """The error for a ruled module whose output is not a single tensor."""
    return ExplanationError(
        f"module '{name}' ({type(module).__name__}) returns {type(output).__name__}, but rule "
        f"{type(rule).__name__} needs a single Tensor output; wrap the module or apply a canonizer"
    )


def has_relprop_affine(site: object) -> bool:
    """Whether ``site`` has a ``relprop_affine()`` method (on its class or set on the instance)."""
    return _has(site, "relprop_affine")


def batched(relevance: Tensor) -> bool:
    """Whether ``relevance`` is batched by ``torch.func.vmap``: the relevance of several targets at once, one
    backward pass for all of them over a single forward pass (a rule must not branch on its values then)."""
    return bool(torch._C._functorch.is_batchedtensor(relevance))


def pullback(function: Callable[..., Tensor], inputs: Sequence[Tensor], cotangent: Tensor) -> tuple[Tensor, ...]:
    """``cotangent^T J`` of ``function`` at ``inputs`` for each input (zeros where an input is unused).

    Under ``torch.func.vmap`` (a batched ``cotangent``) through ``torch.func.vjp``, since a leaf cannot be made
    there; otherwise through ``torch.autograd.grad``.
    """
    if batched(cotangent):
        pull = torch.func.vjp(function, *inputs)[1]
        return tuple(pull(cotangent))
    leaves = tuple(x.detach().requires_grad_() for x in inputs)
    grads = torch.autograd.grad(function(*leaves), leaves, cotangent, allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads))


class Structure:
    """The module tree of a model as one walk found it: every module's name, type and children. Built by
    :func:`structure`, which returns the same object while the tree does not change, so anything derived from the
    tree alone (rule assignments, whether it has stock recurrent modules) can be cached on it."""

    def __init__(self, model: nn.Module) -> None:
        modules = list(model.named_modules())
        # the root itself is not kept (a cache keyed weakly on the model must not keep it alive)
        self._walk = tuple((name, None if module is model else module) for name, module in modules)
        self._shape = tuple((type(module), tuple(module._modules.items())) for _, module in modules)
        self.facts: dict[str, Any] = {}  # derived from the tree alone, e.g. "stock_recurrent"

    def current(self, model: nn.Module) -> bool:
        """Whether ``model``'s tree is still this one (no module's children or type changed)."""
        for (_, module), (kind, children) in zip(self._walk, self._shape):
            module = model if module is None else module
            if type(module) is not kind or tuple(module._modules.items()) != children:
                return False
        return True

    def named_modules(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """``list(model.named_modules())`` of the tree."""
        return [(name, model if module is None else module) for name, module in self._walk]


_STRUCTURES: weakref.WeakKeyDictionary[nn.Module, Structure] = weakref.WeakKeyDictionary()


def structure(model: nn.Module) -> Structure:
    """The :class:`Structure` of ``model``, cached per model and walked again only when a module's children or type
    changed (a module added, removed or replaced anywhere changes its parent's ``_modules``).

    >>> model = nn.Sequential(nn.Linear(2, 2))
    >>> structure(model) is structure(model), [name for name, _ in structure(model).named_modules(model)]
    (True, ['', '0'])
    >>> _ = model.append(nn.ReLU())
    >>> [name for name, _ in structure(model).named_modules(model)]
    ['', '0', '1']
    """
    cached = _STRUCTURES.get(model)
    if cached is not None and cached.current(model):
        return cached
    walked = Structure(model)
    _STRUCTURES[model] = walked
    return walked


def named_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``list(model.named_modules())`` through the cached :func:`structure`."""
    return structure(model).named_modules(model)


def root_module(model: nn.Module) -> nn.Module:
    """The module whose sub-modules get rules: the model itself, or the model a wrapper of relprop's runs (the
    explained input through a token embedding, the logits of a Hugging Face output)."""
    if not _has(model, "relprop_root"):
        return model  # called several times a call: without nn.Module.__getattr__'s miss
    root: nn.Module = getattr(model, "relprop_root")()  # noqa: B009  (typed access for mypy)
    return root


# ------------------------------------------------------------------------------------------------ the path tags
_PATH = "_relprop_path"  # derived from the explained input
_GATE = "_relprop_gate"  # output of a sigmoid-like gate
_BOUNDS = "_relprop_bounds"  # (low, high) of a bounded function's output (ops.BOUNDED) or a constant affine map of it
# (rule, layer, layer input, its tensor's address) of a Linear/Conv output, for batch-norm merging: the address
# (_cdata) tells whether an in-place op gave the input object another tensor (_rebind) since the layer ran
_PRODUCER = "_relprop_producer"
_PREVIOUS = "_relprop_previous"  # on a tensor object _rebind gave a new tensor: the object holding its old one
_STALE = "_relprop_stale"  # changed by an in-place op that relprop ran out of place: where that op ran
# made during the explained forward pass by a constructor (torch.zeros, h.new_zeros, zeros_like): a new tensor object
# that nothing outside holds, which an in-place op on the path may give a path value (a mixture of experts adds each
# expert's output into such zeros with index_add_)
_FRESH = "_relprop_fresh"
_CONSTRUCTORS = frozenset({torch.zeros, torch.ones, torch.empty, torch.full, torch.zeros_like, torch.ones_like,
                           torch.empty_like, torch.full_like, Tensor.new_zeros, Tensor.new_ones, Tensor.new_empty,
                           Tensor.new_full})
_CONSTRUCTOR_NAMES = frozenset({"zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones",
                                "new_empty", "new_full"})  # of the ops.CONSTANT names: those that make a tensor
_CONSTANT = "_relprop_constant"  # computed from the path by an op whose rule makes its result a constant: which op


def mark_path(value: Any) -> Any:
    """Tag the floating-point tensors in ``value`` (a tensor, tuple or list) as on the relevance path."""
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.is_complex():
            setattr(value, _PATH, True)
    elif isinstance(value, (tuple, list)):
        for item in value:
            mark_path(item)
    return value


def on_path(values: Iterable[Any]) -> bool:
    """Whether any of ``values`` (tensors, or lists/tuples of them) is on the relevance path."""
    for value in values:
        if isinstance(value, Tensor):
            if getattr(value, _PATH, False):
                return True
        elif isinstance(value, (tuple, list)) and on_path(value):
            return True
    return False


def _tag_of(values: Iterable[Any], tag: str, bases: bool = False) -> str | None:
    """The first value of ``tag`` on a tensor in ``values`` (tensors, or lists/tuples of them); with ``bases`` also
    on the tensor a view was taken of."""
    for value in values:
        if isinstance(value, Tensor):
            found = getattr(value, tag, None)
            if found is None and bases and value._base is not None:
                found = getattr(value._base, tag, None)
            if found is not None:
                return str(found)
        elif isinstance(value, (tuple, list)):
            found = _tag_of(value, tag, bases)
            if found is not None:
                return found
    return None


def _stale(values: Iterable[Any]) -> str | None:
    """Where an in-place op changed one of ``values`` (or the tensor it is a view of)."""
    return _tag_of(values, _STALE, bases=True)


def _constant_source(values: Iterable[Any]) -> str | None:
    """Which constant-output op (e.g. "'pow' at model.py:12") computed one of ``values`` from the relevance path."""
    return _tag_of(values, _CONSTANT)


def _tag_constant(value: Any, source: str) -> Any:
    """Tag the floating-point tensors in ``value`` as computed from the path by the constant-output op ``source``."""
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.is_complex():
            setattr(value, _CONSTANT, source)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _tag_constant(item, source)
    return value


def _stale_error(user: str, where: str) -> ExplanationError:
    return ExplanationError(
        f"{user} uses a tensor that the in-place operation at {where} changed in a way relprop cannot follow. "
        "relprop runs an in-place operation on the relevance path out of place and gives the result to the tensor "
        "it was called on, not to the tensors sharing its memory (a view of it, the tensor it is a view of), nor "
        "to a tensor subclass or a constant: write the change out of place, e.g. "
        "`h = torch.cat([2 * h[:, :3], h[:, 3:]], 1)` for `h[:, :3].mul_(2)`"
    )


_SWAP = getattr(torch._C, "_swap_tensor_impl", None)  # torch >= 2.3: what torch.utils.swap_tensors does inside


def _can_rebind(held: Any) -> bool:
    """Whether :func:`_rebind` can give the tensor object ``held`` a new value: a plain tensor without weak
    references that is on the relevance path with an autograd history (not the explained input itself, nor a
    parameter, buffer or constant), or that a constructor made in this forward pass (:data:`_FRESH`)."""
    if _SWAP is None or type(held) is not Tensor or weakref.getweakrefcount(held):
        return False
    if getattr(held, _FRESH, False):  # made in this forward pass, holding no gradient: nothing else holds it
        return not held.requires_grad
    return held.grad_fn is not None and getattr(held, _PATH, False)


def _rebind(held: Tensor, value: Tensor, touched: list[Tensor] | None, where: str, reshaped: bool = False) -> Tensor:
    """What an in-place op on ``held`` that relprop computed out of place as ``value`` returns.

    The model goes on with the object it holds, ``held`` (``out.mul_(gain)`` whose result is dropped,
    ``x[i] = y``, a module that works in place): where :func:`_can_rebind` allows, that object takes ``value``'s
    tensor, with its value and autograd history (the rule's relay), as the in-place op would have given it, and
    ``value``'s object the old tensor, which the rules saved for the backward pass keep intact. The old tensor and
    the tensor ``held`` is a view of (which the op would have changed too) are tagged stale: a later use of them
    (through another view) is refused. Where it cannot (a tensor subclass, no history), ``held`` is tagged stale and
    ``value`` returned, as before. ``touched``: the guard's list of tagged tensors (untagged on exit), None for no
    tags. ``reshaped``: an in-place view op (``h.unsqueeze_(1)``), which gives ``held`` another shape and changes no
    values (so the tensor ``held`` is a view of stays valid)."""
    base = None if reshaped else held._base
    stale: tuple[Tensor | None, ...]
    if (_can_rebind(held) and type(value) is Tensor and (reshaped or value.shape == held.shape)
            and value.dtype == held.dtype and value.device == held.device and not weakref.getweakrefcount(value)):
        assert _SWAP is not None
        _SWAP(held, value)
        held.__dict__, value.__dict__ = value.__dict__, held.__dict__  # the tags go with their values
        result, stale = held, (value, base)
        if touched is not None:
            setattr(held, _PREVIOUS, value)  # for a batch norm merged with a layer that ran on the old tensor
            touched.append(held)
    else:
        result, stale = value, (held, base)
    if touched is not None:
        for tensor in stale:
            if tensor is not None:
                setattr(tensor, _STALE, where)
                touched.append(tensor)
    return result


def _as_it_was(tensor: Tensor, address: int) -> Tensor | None:
    """The object holding the tensor at ``address`` (``_cdata``) that ``tensor``'s object held before in-place ops
    gave it new ones (:func:`_rebind`), None if it is not known."""
    found: Tensor | None = tensor
    while found is not None and found._cdata != address:
        found = getattr(found, _PREVIOUS, None)
    return found


# ops through which a constant computed from the path may act on the path: as a scale (x * rsqrt(var + eps),
# x / std) or as mixing weights (CP-LRP's attention @ v)
_SCALING_OPS = (ops.MUL, ops.DIV, ops.MATMUL)


def _constant_error(user: str, source: str) -> ExplanationError:
    return ExplanationError(
        f"{user} combines the relevance path with the result of {source}, which this rule map treats as a constant "
        "(no relevance flows through it), so the relevance of that term would be lost without a trace. Such a "
        "constant may only scale the path, as a normalisation's statistic does (x * rsqrt(var + eps), x / std) or "
        "attention weights do (weights @ v). If the op is a feature of the model here (e.g. an activation written "
        "as a formula, x + 0.044715 * x**3), put that computation in an nn.Module and give it a rule "
        "(rules.Pass() for an element-wise activation), or give the op another rule with rule_map.with_rules(...)"
    )


# ------------------------------------------------------------------------------------------------ the relay
class _RuleState(threading.local):
    """Per thread: how many rule backward passes are running (a rule that re-runs its module, ``site.forward(x)``,
    runs the module's own forward, not the engine's wrapper around it)."""

    running = 0


_RULES = _RuleState()


class _Relay(torch.autograd.Function):
    """Identity in the forward pass; in the backward pass, the site's rule turns relevance_out into relevance_in."""

    @staticmethod
    def forward(ctx: Any, rule: Rule, site: Site, output: Tensor, *inputs: Any) -> Tensor:
        ctx.rule, ctx.site = rule, site
        ctx.tensor_slots = [i for i, value in enumerate(inputs) if isinstance(value, Tensor)]
        ctx.n_inputs = len(inputs)
        ctx.save_for_backward(output, *(inputs[i] for i in ctx.tensor_slots))
        return output.view_as(output)

    @staticmethod
    def backward(ctx: Any, relevance_out: Tensor) -> tuple[Tensor | None, ...]:
        interruption_point()
        output, *saved = ctx.saved_tensors
        tensors = [t.detach() for t in saved]  # rules must not build a graph back into the forward pass
        _RULES.running += 1
        try:
            with torch.enable_grad():
                relevance_in = ctx.rule.relevance(ctx.site, tuple(tensors), output, relevance_out)
        finally:
            _RULES.running -= 1
        if len(relevance_in) != len(tensors):
            raise ExplanationError(
                f"rule {type(ctx.rule).__name__} returned {len(relevance_in)} relevances for {_describe(ctx.site)} "
                f"with {len(tensors)} tensor inputs"
            )
        grads: list[Tensor | None] = [None] * ctx.n_inputs
        for slot, value in zip(ctx.tensor_slots, relevance_in):
            grads[slot] = None if value is None else value.detach()
        return (None, None, None, *grads)


def _hidden_inputs(values: Iterable[Any]) -> Iterator[Tensor]:
    """The tensors in ``values`` (tensors, or lists/tuples of them) that are off the relevance path by their tags
    but have an autograd history: they may come from the path by a computation no guard saw."""
    for value in values:
        if isinstance(value, Tensor):
            if value.grad_fn is not None and not getattr(value, _PATH, False):
                yield value
        elif isinstance(value, (tuple, list)):
            yield from _hidden_inputs(value)


def _requires_grad(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.requires_grad
    return isinstance(value, (tuple, list)) and any(_requires_grad(item) for item in value)


def _path_node(node: Any) -> bool:
    """Whether the autograd node ``node`` belongs to the relevance path: a relay, a recurrent layer that carries
    relevance, or the explained input's own leaf."""
    function = getattr(node, "_forward_cls", None)
    if function is not None:
        return function in (_Relay, _Route) or getattr(function, "carries_relevance", False) is True
    return getattr(getattr(node, "variable", None), _PATH, False) is True  # AccumulateGrad: a leaf


def _hidden_path(tensor: Tensor, off_path: dict[int, Any]) -> bool:
    """Whether ``tensor``'s autograd history reaches the relevance path. ``off_path`` holds the nodes known to be
    off it (by id, with the node itself, so that no id is reused while it is held): they are not walked again.

    A tensor that a relay (or a recurrent layer's relevance Function) made itself is relprop's own output, not yet
    tagged: not hidden."""
    if _path_node(tensor.grad_fn):
        return False
    stack, walked = [tensor.grad_fn], {}
    while stack:
        node = stack.pop()
        if node is None or id(node) in off_path or id(node) in walked:
            continue
        if _path_node(node):
            return True
        walked[id(node)] = node
        stack.extend(following for following, _ in node.next_functions)
    off_path.update(walked)
    return False


def refuse_hidden(values: Iterable[Any], user: Callable[[], str], strict: bool = True,
                  off_path: dict[int, Any] | None = None) -> None:
    """Raise if a tensor in ``values`` untagged by the guard comes from the relevance path all the same, by code the
    guard could not see (a TorchScript function); ``user()`` names what takes it. ``off_path``: the autograd nodes
    already known to be off the path."""
    off_path = {} if off_path is None else off_path
    for tensor in _hidden_inputs(values):
        if _hidden_path(tensor, off_path):
            raise _hidden_error(user(), strict)


def _hidden_error(user: str, strict: bool) -> ExplanationError:
    consequence = ("its relevance would be a plain gradient, or lost" if strict else
                   "guided backprop cannot see the ReLUs in it, whose gradient would pass unguided")
    return ExplanationError(
        f"{user} is computed from the explained input by code that relprop cannot see: a TorchScript function "
        f"(torch.jit.script or torch.jit.trace), a C++ extension, or torch functions run with torch-function "
        f"handling disabled; {consequence}. Run that code as plain PyTorch (remove the @torch.jit.script, or set "
        "PYTORCH_JIT=0 before importing torch, which makes torch.jit.script return the function itself)"
    )


def _describe(site: Site | str) -> str:
    if isinstance(site, str):
        return site
    return repr(site) if not isinstance(site, nn.Module) else type(site).__name__


# route ops whose result holds its input's values in the same places, on the same device (a copy, another memory
# layout, a cast to the dtype it has)
_SAME_VALUES = frozenset({"contiguous", "clone", "float", "double", "half", "bfloat16"})


def _positive_integer_power(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a power call raises a path tensor to a positive integer (``torch.square``; ``x ** 2``, ``x.pow(3.0)``):
    ``ops.POWER``, a product of copies of the tensor, not a norm statistic."""
    if name.startswith("square"):
        return True
    exponent = args[1] if len(args) > 1 else kwargs.get("exponent")
    return (isinstance(exponent, (int, float)) and not isinstance(exponent, bool) and exponent >= 1
            and float(exponent).is_integer() and isinstance(args[0] if args else None, Tensor)
            and bool(getattr(args[0], _PATH, False)))


_AFFINE_BY_NAME = {
    **dict.fromkeys(ops.ADD.names, "add"), **dict.fromkeys(("sub", "sub_", "subtract", "subtract_", "__sub__",
                                                             "__isub__"), "sub"),
    **dict.fromkeys(("rsub", "__rsub__"), "rsub"), **dict.fromkeys(ops.MUL.names, "mul"),
    **dict.fromkeys(ops.DIV.names, "div"),
}


def _output_bounds(call: OpCall) -> tuple[float, float] | None:
    """The range of an op's output where the op is a bounded function (:data:`relprop.ops.BOUNDED`), or a constant
    affine map (a Python number added, subtracted, multiplied or divided by) of a bounded tensor; None otherwise."""
    name = call.name
    if name in ops.BOUNDED:
        return ops.BOUNDED[name]
    kind = _AFFINE_BY_NAME.get(name)
    if kind is None or call.kwargs or len(call.args) != 2 or len(call.keys) != 1:
        return None
    (key,) = call.keys
    if not isinstance(key, int):
        return None
    tensor, number = call.args[key], call.args[1 - key]
    bounds = _bounds_of(tensor)
    if bounds is None or isinstance(number, bool) or not isinstance(number, (int, float)):
        return None
    low, high = bounds
    if kind == "add":
        return low + number, high + number
    if kind == "sub" and key == 0:
        return low - number, high - number
    if kind == "rsub" or kind == "sub":  # number - tensor
        return number - high, number - low
    if kind == "mul":
        return min(low * number, high * number), max(low * number, high * number)
    if kind == "div" and key == 0 and number != 0:
        return min(low / number, high / number), max(low / number, high / number)
    return None


def _bounds_of(tensor: Any) -> tuple[float, float] | None:
    """The range a tag gives ``tensor``'s values: its bounds, (0, 1) for a gate module's output, else None."""
    return getattr(tensor, _BOUNDS, None) or ((0.0, 1.0) if getattr(tensor, _GATE, False) else None)


def _tag_bounds(tensor: Tensor, bounds: tuple[float, float] | None) -> None:
    """Give ``tensor`` the range of its values, where known; one that cannot be negative makes it a gate (a factor
    that can only scale the signal)."""
    if bounds is not None:
        setattr(tensor, _BOUNDS, bounds)
        if bounds[0] >= 0:
            setattr(tensor, _GATE, True)


def _bounds_after(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[float, float] | None:
    """The range of the values of a routing op's result whose first argument is bounded (:func:`_bounds_of`): the
    same for a view, reshape, copy or selection; widened by a number or a bounded tensor that ``masked_fill``,
    ``where``, ``x[i] = y``, ``pad``, ``index_fill`` or ``masked_scatter`` bring in (:data:`relprop.ops.NEW_VALUES`);
    None where what they bring in is unknown."""
    if name == "where" and ops.condition_first(args):
        # torch.where(condition, input, other): the input's range, widened by the other's
        args = (kwargs.get("input", args[1] if len(args) > 1 else None), args[0], *args[2:])
    bounds = _bounds_of(args[0])
    if bounds is None or name not in ops.NEW_VALUES:
        return bounds
    (position, keyword), default = ops.NEW_VALUES[name]
    if name == "pad" and kwargs.get("mode", args[2] if len(args) > 2 else "constant") != "constant":
        return bounds  # reflect, replicate, circular: the input's own values
    value = kwargs.get(keyword, args[position] if len(args) > position else default)
    if value is None:
        value = 0.0 if name == "pad" else None
    if isinstance(value, Tensor):
        value = _bounds_of(value) or (float(value) if value.numel() == 1 and not getattr(value, _PATH, False)
                                      else None)
    if isinstance(value, bool) or value is None:
        return None
    low, high = value if isinstance(value, tuple) else (float(value), float(value))
    return min(bounds[0], low), max(bounds[1], high)


class _Route(torch.autograd.Function):
    """``output`` in the forward pass; in the backward pass all relevance goes unchanged to ``source``.

    Saves no tensor: an element-wise layer under a pass-through rule keeps nothing alive for the backward pass.
    """

    @staticmethod
    def forward(ctx: Any, output: Tensor, source: Tensor) -> Tensor:
        return output.view_as(output)

    @staticmethod
    def backward(ctx: Any, relevance_out: Tensor) -> tuple[None, Tensor]:
        return None, relevance_out


# torch's Function.apply of these two, bound once: every ruled site calls one, and the explained forward pass's
# Function.apply (_CustomFunctions) would only hand them back, at a few microseconds a call
_relay_apply, _route_apply = _Relay.apply, _Route.apply

_ARITHMETIC_ROUTE_LIMIT = 1 << 16  # elements


def _foreign_function(site: Site | str, inputs: tuple[Any, ...]) -> None:
    """Raise if an input on the relevance path comes out of a custom ``torch.autograd.Function``: its own backward
    would carry a plain gradient (it is invisible to the op guard, which sees only the ops inside its forward)."""
    for value in inputs:
        if isinstance(value, (tuple, list)):  # torch.cat([a, b]), torch.stack(...)
            _foreign_function(site, tuple(value))
            continue
        function = getattr(getattr(value, "grad_fn", None), "_forward_cls", None)  # set on custom Functions' nodes
        if function is not None and function not in (_Relay, _Route) and not getattr(
                function, "carries_relevance", False):  # e.g. relprop.rules.recurrent.FusedRecurrent
            if function.__qualname__ == "BackwardHookFunction":  # torch's wrapper of a module's full backward hook
                raise ExplanationError(
                    f"{_describe(site) if isinstance(site, str) else 'the input of ' + _describe(site)} passes "
                    "through a module's full backward hook (register_full_backward_hook or "
                    "register_full_backward_pre_hook), which would see relevance as a gradient and whose wrapper "
                    "carries a plain gradient; remove the backward hooks while explaining with rules (the gradient "
                    "methods run them)"
                )
            if function.__module__.startswith("torch._functorch."):  # the Function torch.compile's AOT autograd makes
                raise ExplanationError(
                    f"{_describe(site) if isinstance(site, str) else 'the input of ' + _describe(site)} comes from "
                    "code compiled by torch.compile, whose backward would carry a plain gradient, not relevance, and "
                    "whose operations no rule can see; call the function uncompiled (torch.compile keeps it as "
                    "compiled._torchdynamo_orig_callable; a compiled module's as module._orig_mod)"
                )
            raise ExplanationError(
                f"{_describe(site) if isinstance(site, str) else 'the input of ' + _describe(site)} comes from the "
                "custom autograd.Function "
                f"{function.__module__}.{function.__qualname__}, whose backward would carry a plain gradient, not "
                "relevance; express it with torch operations or an nn.Module that has a rule"
            )


def check_model_output(model: nn.Module, output: Tensor) -> None:
    """Raise if the model's output itself comes out of a custom ``torch.autograd.Function`` (no later site sees it)."""
    _foreign_function(f"the output of {type(root_module(model)).__name__}", (output,))


def relay(rule: Rule, site: Site, output: Tensor, inputs: tuple[Any, ...]) -> Tensor:
    """``output`` (computed from ``inputs``) on the relevance path, with ``rule`` as its backward."""
    _foreign_function(site, inputs)
    check = getattr(rule, "check_inputs", None)  # what the rule assumes of its inputs (zB: inside its bounds)
    if check is not None:
        check(site, inputs)
    route = getattr(rule, "route", None)
    index = None if route is None else route(site, inputs, output)
    if index is not None:  # relevance passes one input unchanged
        source = inputs[index]
        if output.numel() <= _ARITHMETIC_ROUTE_LIMIT:  # autograd's identity: two cheap ops, no Python backward
            base = output.detach() if output.requires_grad else output  # the module ran on detached inputs
            return mark_path(base + (source - source.detach()))  # type: ignore[no-any-return]
        return mark_path(_route_apply(output.detach(), source))  # type: ignore[no-any-return]
    return mark_path(_relay_apply(rule, site, output.detach(), *inputs))  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------------ module sites
_GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
# library activation modules (ruled as a whole, their sigmoid unseen inside) that compute a gate: (module, class)
_LIBRARY_GATES = frozenset({("timm.layers.activations", "Sigmoid"), ("timm.layers.activations", "HardSigmoid"),
                            ("timm.layers.activations_me", "HardSigmoidMe")})


def _gate_module(module: nn.Module) -> bool:
    """Whether ``module``'s output is a gate: a sigmoid or hard sigmoid module, torch's or a library's."""
    kind = type(module)
    return isinstance(module, _GATE_MODULES) or (kind.__module__, kind.__name__) in _LIBRARY_GATES
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _plain(values: Sequence[Any]) -> bool:
    """Whether every tensor in ``values`` is a plain ``torch.Tensor``.

    A rule's wrapper runs inside a ruled module, where the guard passes every call through unchanged
    (``depth > 0``), so the wrapper's own calls (detach, the relay) may skip it. Only with torch-function handling
    off altogether, which would also skip a tensor subclass's ``__torch_function__``: hence for plain tensors only.
    """
    return all(type(value) is Tensor for value in values if isinstance(value, Tensor))


class _Attachment:
    """A rule on one module: the engine's wrapper around each call of the module.

    Installed as the module's ``forward`` (an instance attribute, removed on exit), it runs the module on detached
    inputs and relays the output, in one call and one ``try``; where that is not possible (a scripted module) the
    same steps run as a forward pre-hook and a forward hook. It acts only in the thread that attached it: another
    thread's plain forward pass of the same model runs as if it were not there, and so does a rule that re-runs the
    module in the backward pass.
    """

    def __init__(self, name: str, module: nn.Module, rule: Rule, guard: FunctionalGuard | None) -> None:
        self.name, self.module, self.rule, self.guard = name, module, rule, guard
        self.owner = threading.get_ident()
        self.forward: Callable[..., Any] | None = None  # the module's own forward, while installed
        self.stack: list[tuple[tuple[Any, ...], bool]] = []  # hook mode, per call: the inputs, whether carried
        self.suspended: list[bool] = []  # hook mode, per call: whether this call took the guard off the mode stack
        self.merges = (getattr(rule, "merges_batch_norm", False) and isinstance(module, _LAYERS)
                       and not has_relprop_affine(module))
        self.inplace = _works_in_place(module)  # read once per attachment, not per call
        self.gate = _gate_module(module)
        # a Linear/ConvNd subclass with a forward of its own, under a rule that computes with its weight: checked
        self.stock = _stock_layer(module) if getattr(rule, "reads_weights", False) else None
        # a z-rule whose relevance is x * J^T (R / d(z)) with z the module's own output: autograd's form (_carry)
        denominator = getattr(rule, "output_denominator", None)
        self.denominator: Callable[[Tensor], Tensor] | None = (
            None if denominator is None or self.inplace else denominator(module))

    # ----------------------------------------------------------------------------------------- the wrapper
    def install(self) -> bool:
        """Wrap the module's forward (False, and nothing done, where hooks must do: a scripted module, or a class
        with its own ``__call__``, which need not call ``forward`` the way ``nn.Module`` does)."""
        module = self.module
        if isinstance(module, torch.jit.ScriptModule) or type(module).__call__ is not nn.Module.__call__:
            return False
        previous = module.__dict__.get("forward")  # an instance-level forward set by someone else, kept
        self.forward = previous if previous is not None else module.forward
        module.__dict__["forward"] = self
        self.previous = previous
        return True

    def uninstall(self) -> None:
        if self.previous is None:
            self.module.__dict__.pop("forward", None)
        else:
            self.module.__dict__["forward"] = self.previous
        self.forward = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        forward = self.forward
        assert forward is not None
        if _RULES.running or threading.get_ident() != self.owner:
            return forward(*args, **kwargs)
        # A ruled module's rule accounts for everything inside it, where the guard passes every call through
        # (depth > 0): the outermost one runs with the guard off the mode stack.
        guard = self.guard
        suspended = guard is not None and guard.depth == 0 and guard.suspend()
        try:
            quiet = guard is not None and not suspended and _plain(args)
            if quiet:
                with torch._C.DisableTorchFunction():  # relprop's own calls here need not pass the guard (_plain)
                    call_args, carried = self._pre(args)
            else:
                call_args, carried = self._pre(args)
            try:
                output = forward(*call_args, **kwargs)
                if call_args is args:  # off the relevance path
                    return _off_path(guard, args, output)
                if quiet and type(output) is Tensor:
                    with torch._C.DisableTorchFunction():
                        return self._post(args, carried, output, call_args)
                return self._post(args, carried, output, call_args)
            finally:
                if guard is not None:
                    guard.depth -= 1
        finally:
            if suspended:
                assert guard is not None
                guard.resume()

    # ----------------------------------------------------------------------------------------- the hooks
    def pre(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if threading.get_ident() != self.owner:
            return None
        guard = self.guard
        suspended = guard is not None and guard.depth == 0 and guard.suspend()
        self.suspended.append(suspended)
        try:
            if guard is not None and not suspended and _plain(args):
                with torch._C.DisableTorchFunction():
                    call_args, carried = self._pre(args)
            else:
                call_args, carried = self._pre(args)
        except BaseException:
            if self.suspended.pop() and guard is not None:
                guard.resume()
            raise
        self.stack.append((args, carried))
        return None if call_args is args else call_args

    def post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if threading.get_ident() != self.owner:
            return None
        suspended = self.suspended.pop()
        original_args, carried = self.stack.pop()
        try:
            if not on_path(original_args):
                return _off_path(self.guard, original_args, output)
            if self.guard is not None and not suspended and type(output) is Tensor and _plain(original_args):
                with torch._C.DisableTorchFunction():
                    return self._post(original_args, carried, output, args)
            return self._post(original_args, carried, output, args)
        finally:
            if self.guard is not None:
                self.guard.depth -= 1
            if suspended and self.guard is not None:
                self.guard.resume()

    # ----------------------------------------------------------------------------------------- both
    def _pre(self, args: tuple[Any, ...]) -> tuple[tuple[Any, ...], bool]:
        """The inputs the module runs on (``args`` itself when off the relevance path), and whether in autograd's
        form. Counts the call into the guard's depth (the caller counts it out)."""
        interruption_point()
        guard = self.guard
        if guard is not None:
            guard.depth += 1
        try:
            if guard is not None and guard.depth == 1:  # the outermost ruled module: its inputs are the model's
                guard.check_hidden(args, lambda: f"an input of module '{self.name}' ({type(self.module).__name__})")
            if not on_path(args):
                return args, False
            where = _stale(args) if self.guard is not None and self.guard._touched else None  # marks exist only then
            if where is not None:
                raise _stale_error(f"module '{self.name}' ({type(self.module).__name__})", where)
            if self.denominator is not None and len(args) == 1 and type(args[0]) is Tensor \
                    and args[0].is_floating_point():
                return (_carry(args[0]),), True
            # the module runs on detached inputs (its own graph is never used: the relay replaces it); a module that
            # works in place gets copies, so the tensors kept for the backward pass stay intact
            inplace = self.inplace
            return tuple((a.detach().clone() if inplace else a.detach()) if isinstance(a, Tensor) else a
                         for a in args), False
        except BaseException:
            if self.guard is not None:
                self.guard.depth -= 1
            raise

    def _post(self, original_args: tuple[Any, ...], carried: bool, output: Any, ran: tuple[Any, ...]) -> Any:
        """The module's ``output`` on the relevance path, relayed with its rule; ``ran``: the inputs the module ran
        on (:meth:`_pre`)."""
        module = self.module
        if not isinstance(output, Tensor):
            raise _not_a_tensor(self.name, module, self.rule, output)
        site = module if self.stock is None else _layer_site(self.name, module, self.stock, original_args, output)
        if carried:
            assert self.denominator is not None
            _foreign_function(module, original_args)
            result = mark_path(_divided(output, self.denominator))
        else:
            result = relay(self.rule, site, output, original_args)
        if self.gate:
            setattr(result, _GATE, True)
        if self.merges:
            setattr(result, _PRODUCER, (self.rule, site, original_args[0], original_args[0]._cdata))
        if self.inplace and ran and output is ran[0] and getattr(original_args[0], _PATH, False):
            # it wrote its output into its input (nn.ReLU(inplace=True)), here a copy: the model's input tensor
            # takes the output, as it would have without relprop (a bare `self.relu(h)` goes on with h)
            guard = self.guard
            return _rebind(original_args[0], result, None if guard is None else guard._touched,
                           f"module '{self.name}' ({type(module).__name__})")
        return result


def _stock_layer(module: nn.Module) -> type[nn.Module] | None:
    """The stock class (``nn.Linear``, ``nn.ConvNd``) of a subclass with a ``forward`` of its own (and no
    ``relprop_affine()``): the z-rules compute with ``module.weight`` and that class's map, which need not be what
    the subclass computes (weight standardisation, "same" padding computed per call). None otherwise."""
    if not isinstance(module, _LAYERS) or has_relprop_affine(module) or type(module).__module__.startswith("relprop."):
        return None
    base: type[nn.Module] = next(c for c in type(module).__mro__ if c in _LAYERS)
    return None if type(module).forward is base.forward else base


def _layer_site(name: str, module: nn.Module, base: type[nn.Module], args: tuple[Any, ...],
                output: Tensor) -> Site:
    """The rule site of a Linear/ConvNd subclass with a forward of its own, checked on one call: the module itself
    where its output equals its stock class's map of its weight on the same input (timm's ``Linear``, which only
    adds TorchScript typing); an :class:`OwnForward` where its forward computes the map otherwise (timm's
    ``Conv2dSame`` pads per call, ``StdConv2d`` standardises its weight). Anything else raises."""
    value = output.detach()
    inputs = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
    with torch.no_grad():
        own = _own_forward(module, inputs[0], value) if len(inputs) == 1 and isinstance(inputs[0], Tensor) else None
        if own is not None:
            return module if _stock_call(own, module) else own
        try:  # a forward that computes the stock map without F.linear/F.convNd (x @ w.T + b, say)
            stock = base.forward(module, *inputs)
        except (RuntimeError, ValueError, TypeError):
            stock = None
        if stock is not None and _close(stock, value):
            return module
    raise ExplanationError(
        f"module '{name}' ({type(module).__name__}) is an nn.{base.__name__} whose own forward computes something "
        f"else than nn.{base.__name__}'s map of its weight, and not one F.linear/F.convNd call either, whose result "
        "it returns, on its input transformed linearly (padded, say), so no z-rule can explain it; replace it by an "
        f"nn.{base.__name__} holding the weight its forward uses (fixed in eval mode), or give it a rule of your own "
        "by name"
    )


def _stock_call(own: OwnForward, module: nn.Module) -> bool:
    """Whether ``own``'s one call is its stock class's: the layer's input, weight and bias as they are and, for a
    convolution, the layer's stride, padding, dilation and groups (timm's ``Linear``, which only adds TorchScript
    typing). Its stock map and fast transposes then serve."""
    if own.call is None:
        return False
    func, values, kwargs = own.call
    if _layer_argument(values, kwargs, "weight", 1) is not module.weight or _layer_argument(
            values, kwargs, "bias", 2) is not module.bias:
        return False
    if isinstance(module, nn.Linear):
        return ops.function_name(func) == "linear"
    dims = len(module.weight.shape) - 2
    return ops.function_name(func) == f"conv{dims}d" and getattr(module, "padding_mode", "zeros") == "zeros" and all(
        (tuple(value) if isinstance(value, (list, tuple)) else value if key == "groups" or isinstance(value, str)
         else (value,) * dims) == getattr(module, key)
        for (key, _, _), value in zip(_CONV_ARGUMENTS, own.conv_arguments()))


def _close(computed: Tensor, value: Tensor) -> bool:
    """Whether ``computed`` equals ``value`` to a few units of rounding (relative to the largest entry)."""
    scale = float(value.abs().max()) if value.numel() else 0.0
    tolerance = {torch.bfloat16: 1e-2, torch.float16: 1e-3}.get(value.dtype, 1e-5)
    return computed.shape == value.shape and bool(
        torch.allclose(computed, value, rtol=tolerance, atol=tolerance * scale))


def _own_forward(module: nn.Module, x: Tensor, output: Tensor) -> OwnForward | None:
    """``module``'s map as its own forward computes it at ``x``, or None where that is not one linear or convolution
    call whose result the forward returns, on the input as it is or transformed linearly: odd and homogeneous,
    ``pre(-2x) = -2 pre(x)``, which a ReLU or a square fails (:class:`OwnForward`)."""
    try:
        seen = _one_layer_call(module, x)
        if seen is None or not _close(seen[0], output):
            return None
        result, func, values, kwargs = seen
        weight, bias = (_layer_argument(values, kwargs, key, position) for key, position in _LAYER_SLOTS[1:])
        if not isinstance(weight, Tensor):
            return None
        weight, bias = weight.detach(), None if bias is None else bias.detach()
        if _layer_argument(values, kwargs, "input", 0) is x:  # the call itself is the map
            return OwnForward(module, weight, bias, (func, values, kwargs))
        own = OwnForward(module, weight, bias)
        plain = result if bias is None else result - bias.reshape(
            (-1,) if ops.function_name(func) == "linear" else (-1,) + (1,) * (result.dim() - 2))
        return own if _close(own.map(-2 * x, weight, None), -2 * plain) else None
    except (RuntimeError, ValueError, TypeError, ExplanationError):
        return None


def script_module_error(name: str) -> ExplanationError:
    """The refusal of a TorchScript module under a method with rules: it takes no hooks and no instance ``forward``,
    and the op guard cannot see the operations inside it."""
    return ExplanationError(
        f"module '{name}' is a TorchScript module (torch.jit.script): relprop can neither attach rules to it nor see "
        "the operations inside it, so their relevance would be lost or pass as a gradient; explain the original "
        "Python module (script it after explaining)"
    )


def _off_path(guard: FunctionalGuard | None, args: tuple[Any, ...], output: Any) -> Any:
    """A ruled module's output off the relevance path: tagged as a constant computed from the path (by a
    constant-output op, :func:`_constant_source`) where one of its inputs is one, so that a later op adding it to
    the path is refused."""
    if guard is not None and guard.constant_sites:
        source = _constant_source(args)
        if source is not None:
            return _tag_constant(output, source)
    return output


def _carry(x: Tensor) -> Tensor:
    """``x``'s value, with a backward that multiplies by ``x``: ``lerp(x, x, x) = x + x * (x - x)`` with the first
    and last ``x`` constants (the input side of a z-rule in autograd's form). One kernel each way: ``lerp``
    returns the constant exactly (its step ``x - x`` is zero), and its backward multiplies by the weight."""
    constant = x.detach()
    return torch.lerp(constant, x, constant)


def _divided(z: Tensor, denominator: Callable[[Tensor], Tensor]) -> Tensor:
    """``z``'s value, with a backward that divides by ``denominator(z)`` (a constant): ``z + (z - z) / d``.

    With :func:`_carry` on the input of a linear map, the backward pass computes ``x * W^T (R / d(z))``, a z-rule
    with the layer's own output as denominator (LRP-epsilon), in autograd's own kernels: the division, the layer's
    transposed map and the product with x, the same operations the rule's Python backward would run.
    """
    constant = z.detach()
    # (not addcdiv: its backward multiplies by value / d, a reciprocal, where the rule divides by d)
    return (z - constant).div(denominator(constant)).add(constant)


class _StrayModules:
    """Rules for leaf modules called in the explained forward pass that are not part of the model (an activation
    module made per call, a module kept in a plain list): the global forward hooks of :func:`attach_rules`.

    A call outside ruled modules (guard depth 0), in the thread that attached, of a module that ``stray`` gives a
    rule runs as an attached module's would (:meth:`_Attachment.pre` and :meth:`_Attachment.post`); any other call
    is left alone, and its functional operations meet the op guard as before.
    """

    def __init__(self, model: nn.Module, stray: Callable[[nn.Module], Rule | None], guard: FunctionalGuard) -> None:
        tree = structure(model)
        known = tree.facts.get("ids")
        if known is None:
            known = tree.facts["ids"] = frozenset(id(module) for _, module in tree.named_modules(model))
        self.known: frozenset[int] = known
        self.stray, self.guard = stray, guard
        self.owner = threading.get_ident()
        self.calls: list[tuple[nn.Module, _Attachment]] = []  # the handled calls under way, innermost last

    def pre(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if (threading.get_ident() != self.owner or self.guard.depth or _RULES.running or id(module) in self.known
                or next(iter(module.children()), None) is not None):
            return None
        rule = self.stray(module)
        if rule is None:
            return None
        attachment = _Attachment(f"{type(module).__name__} (called in forward, not a module of the model)", module,
                                 rule, self.guard)
        replaced = attachment.pre(module, args)
        self.calls.append((module, attachment))
        return replaced

    def post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if threading.get_ident() != self.owner or not self.calls or self.calls[-1][0] is not module:
            return None
        _, attachment = self.calls.pop()
        return attachment.post(module, args, output)


class _ForwardContext:
    """The ``ctx`` a custom ``autograd.Function``'s forward gets when relprop runs it as plain code
    (:class:`_CustomFunctions`): what it saves for its backward is dropped (its backward never runs), the outputs it
    marks non-differentiable are kept, and ``needs_input_grad`` says which inputs require a gradient."""

    def __init__(self, args: tuple[Any, ...]) -> None:
        self.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        self.non_differentiable: list[Tensor] = []

    def save_for_backward(self, *tensors: Any) -> None:
        pass

    def save_for_forward(self, *tensors: Any) -> None:
        pass

    def mark_dirty(self, *tensors: Any) -> None:
        pass  # the in-place ops that made them dirty met the op guard, which gave their results to these tensors

    def mark_non_differentiable(self, *tensors: Any) -> None:
        self.non_differentiable.extend(tensors)

    def set_materialize_grads(self, value: bool) -> None:
        pass

    def __getattr__(self, name: str) -> Any:  # what the forward reads but did not set
        raise AttributeError(
            f"the forward of a custom autograd.Function reads ctx.{name}, which the context relprop gives it while "
            "explaining does not have (it runs the forward as plain code, without the Function's node)"
        )


class _CustomFunctions:
    """A user's custom ``torch.autograd.Function`` on the relevance path, explained through its forward.

    Its backward is a gradient (often a hand-written one), never relevance, so relprop does not use it: while the
    model is explained (in the thread that attached, outside ruled modules), ``Function.apply`` runs the function's
    ``forward`` as plain code, whose operations meet the op guard and get their rules, and the custom node is never
    made (BLOOM's ``GeLUFunction``, whose forward is the tanh GELU written out). An output that the forward computed
    where the guard cannot follow (under ``torch.no_grad``, detached, in a C++ extension) raises. torch's own
    Functions (a full backward hook's wrapper, torch.compile's) and relprop's keep ``apply`` and meet the checks of
    :func:`_foreign_function`. ``Function.apply`` is one class attribute for all threads: it is replaced while any
    explanation runs and a per-thread stack says which guard, if any, acts on a call.
    """

    _lock = threading.Lock()
    _users = 0
    _original: dict[str, Any] = {}  # "apply": torch's own (a classmethod object), kept once read
    _active = threading.local()  # .handlers: this thread's instances, innermost last

    def __init__(self, guard: FunctionalGuard) -> None:
        self.guard = guard

    def install(self) -> Callable[[], None]:
        """Make ``Function.apply`` consult this thread's handlers; the returned function undoes it."""
        cls = type(self)
        with cls._lock:
            if cls._users == 0:
                # (kept after the last explanation ends: another thread may be inside _apply_function still)
                cls._original["apply"] = torch.autograd.Function.__dict__["apply"]
                torch.autograd.Function.apply = classmethod(_apply_function)
            cls._users += 1
        handlers = cls._active.__dict__.setdefault("handlers", [])
        handlers.append(self)

        def uninstall() -> None:
            handlers.remove(self)
            with cls._lock:
                cls._users -= 1
                if cls._users == 0:
                    torch.autograd.Function.apply = cls._original["apply"]

        return uninstall

    def apply(self, function: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        original = _CustomFunctions._original["apply"].__get__(None, function)
        if (self.guard.depth or _RULES.running or function.__module__.startswith(("torch.", "relprop."))
                or getattr(function, "carries_relevance", False) or torch._C._are_functorch_transforms_active()
                or not (on_path(args) or on_path(kwargs.values()))):
            return original(*args, **kwargs)
        name = f"{function.__module__}.{function.__qualname__}"
        where = ops.caller_location()
        context = _ForwardContext(args)
        if function.setup_context is not torch.autograd.Function.setup_context:  # type: ignore[attr-defined]
            output = function.forward(*args, **kwargs)  # type: ignore[attr-defined]
            function.setup_context(context, args, output)  # type: ignore[attr-defined]  # what it marks
        else:
            output = function.forward(context, *args, **kwargs)  # type: ignore[attr-defined]
        kept = {id(t) for t in context.non_differentiable}
        for value in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex()) and \
                    id(value) not in kept and not (getattr(value, _PATH, False) and value.requires_grad):
                raise ExplanationError(
                    f"the custom autograd.Function {name} at {where}: relprop explains such a function through the "
                    "operations of its forward (its backward is a gradient, not relevance), but this forward computes "
                    "an output where the op guard cannot follow (under torch.no_grad, detached, or in compiled code "
                    "such as a C++ extension); write the forward in torch operations, or put the function in an "
                    "nn.Module and give the module a rule (rules.Pass() for an element-wise activation)"
                )
        if not kept:
            return output
        if isinstance(output, Tensor):
            return output.detach() if id(output) in kept else output
        detached = [v.detach() if isinstance(v, Tensor) and id(v) in kept else v for v in output]
        return detached if isinstance(output, list) else tuple(detached)


def _apply_function(function: type, *args: Any, **kwargs: Any) -> Any:
    """``torch.autograd.Function.apply`` while relprop explains (:class:`_CustomFunctions`)."""
    handlers = getattr(_CustomFunctions._active, "handlers", None)
    if handlers:
        return handlers[-1].apply(function, args, kwargs)
    return _CustomFunctions._original["apply"].__get__(None, function)(*args, **kwargs)


def global_hooks() -> bool:
    """Whether a global module hook (``torch.nn.modules.module.register_module_forward_hook`` and the like) other
    than relprop's own for modules not in the model (:class:`_StrayModules`, which never acts on a model's modules)
    is registered."""
    hooks = torch.nn.modules.module
    return any(not isinstance(getattr(hook, "__self__", None), _StrayModules)
               for table in (hooks._global_forward_hooks, hooks._global_forward_pre_hooks,
                             hooks._global_backward_hooks, hooks._global_backward_pre_hooks)
               for hook in table.values())


class _Tripwire:
    """Forward pre-hook on a module that no rule covers: raises as soon as it runs on the relevance path."""

    def __init__(self, name: str, module: nn.Module, advice: str) -> None:
        self.name, self.module, self.advice = name, module, advice
        self.owner = threading.get_ident()

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if threading.get_ident() == self.owner and on_path(args):
            raise ExplanationError(
                f"no rule covers module '{self.name}' ({type(module).__name__}); {self.advice}"
            )


@contextlib.contextmanager
def attach_rules(
    model: nn.Module,
    assignments: Sequence[tuple[str, nn.Module, Rule]],
    uncovered: Sequence[tuple[str, nn.Module, str]] = (),
    guard: FunctionalGuard | None = None,
    *,
    in_region: bool = False,
    stray: Callable[[nn.Module], Rule | None] | None = None,
) -> Iterator[None]:
    """Attach ``(name, module, rule)`` assignments (wrappers, or hooks) and tripwires; remove all on exit, also on
    error.

    ``stray(module)``: the rule of a module that is not part of ``model`` but is called in its forward pass (made
    there: ``ACT2FN["gelu_new"](x)`` in Hugging Face heads), None for none; such calls get their rule through
    global module hooks (:class:`_StrayModules`), in this thread only. Needs ``guard``.

    They live in a :func:`~relprop.safety.protected` region: the model's lock is held until they are removed
    (explanations of one model from several threads run one after the other), and a Ctrl-C waits for a safe point.
    ``in_region``: the caller holds such a region of ``model`` around the whole ``with`` block already (as
    :meth:`relprop.composites.RuleMap.attached` does), so none is opened again.
    """
    undo: list[Callable[[], None]] = []
    with contextlib.nullcontext() if in_region else protected(root_module(model)):
        try:
            for name, module, rule in assignments:
                attachment = _Attachment(name, module, rule, guard)
                if attachment.install():
                    undo.append(attachment.uninstall)
                else:
                    undo.append(module.register_forward_pre_hook(attachment.pre).remove)
                    undo.append(module.register_forward_hook(attachment.post).remove)
            for name, module, advice in uncovered:
                undo.append(module.register_forward_pre_hook(_Tripwire(name, module, advice)).remove)
            if guard is not None:
                undo.append(_CustomFunctions(guard).install())
            if stray is not None and guard is not None:
                strays = _StrayModules(root_module(model), stray, guard)
                hooks = torch.nn.modules.module
                # (the stub says the hook returns None; torch uses a tuple it returns as the new input)
                undo.append(hooks.register_module_forward_pre_hook(strays.pre).remove)  # type: ignore[arg-type]
                undo.append(hooks.register_module_forward_hook(strays.post).remove)
            yield
        finally:
            while undo:
                undo[-1]()
                undo.pop()


# stock modules without a rule of their own that a SequentialPlan runs under the op guard (their functional ops get
# the op rules: routing, max pooling, dropout in eval mode, a batch norm merged into the layer before it)
_PLAN_OP_MODULES: tuple[type, ...] = (
    nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
)


class SequentialPlan:
    """The explained forward pass of an ``nn.Sequential`` of ruled modules, without wrappers: each ruled child runs
    through its rule's steps (:meth:`_Attachment._pre`, the module's own ``forward``, :meth:`_Attachment._post`)
    in order, as the installed wrappers would run them, with the op guard off; a stock child without a rule of its
    own (``Flatten``, ``Dropout``, a max pool, a batch norm: ``_PLAN_OP_MODULES``) runs under the op guard, which
    gives its functional ops their rules. Nothing is attached to the model. Built by
    :meth:`relprop.composites.RuleMap.plan` once per model structure.

    ``nn.Sequential.forward`` calls its children one after the other and nothing else, so every functional
    operation runs inside a child, and the relevance is bitwise that of the general path. A call that hooks, a
    user-set ``forward`` on a container, or an active torch-function mode could change that: :meth:`usable` sends
    such a call to the general path. Where every child has a rule or passes its input on (a reshape, dropout in eval
    mode), :meth:`trace` runs the plan without autograd.
    """

    def __init__(self, containers: Sequence[nn.Module], steps: Sequence[tuple[str, nn.Module, Rule | None]]
                 ) -> None:
        # the nested containers and the ruled modules, not the model itself: a cache keyed weakly on the model holds
        # plans, which must not keep it alive
        self.containers, self.steps = tuple(containers), tuple(steps)
        self._modules = (*self.containers, *(module for _, module, _ in self.steps))
        # every child has a rule or passes its input on (a reshape, dropout in eval mode): :meth:`trace` can run
        self.graph_free = all(rule is not None or type(module) in _PASS_ON_MODULES for _, module, rule in self.steps)

    def usable(self, model: nn.Module) -> bool:
        """Whether this call of ``model`` may run the plan: no forward or backward hook (global, or on the model, a
        nested container or a ruled module), no instance-level ``forward`` on one of them, no torch-function mode,
        no tracing, and not inside a rule's backward pass."""
        if _RULES.running or torch._C._len_torch_function_stack() or torch._C._get_tracing_state() is not None:
            return False
        if global_hooks():
            return False
        for module in (model, *self._modules):
            if (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                    or module._backward_pre_hooks or "forward" in module.__dict__):
                return False
        return True

    def __call__(self, x: Tensor, guard: FunctionalGuard) -> Tensor:
        """Run the plan on ``x``; ``guard`` (a fresh one per call) watches the children without a rule."""
        hidden = x
        with guard:  # entered once, as in the general path, and taken off the stack for the ruled children
            for name, module, rule in self.steps:
                if rule is None:
                    hidden = module(hidden)
                    continue
                # what the step reads of its module (bias, padding mode, inplace) is read again on every call, as
                # the general path attaches afresh on every call
                step = _Attachment(name, module, rule, None)
                args = (hidden,)
                suspended = guard.suspend()
                try:
                    call_args, carried = step._pre(args)
                    hidden = step._post(args, carried, module.forward(*call_args), call_args)
                finally:
                    if suspended:
                        guard.resume()
        return hidden

    def trace(self, x: Tensor) -> PlanTrace | None:
        """The forward pass of a graph-free plan on ``x``, without autograd, kept for :meth:`PlanTrace.relevance`;
        None where the plan cannot run that way on this call (see :class:`PlanTrace`): a child without a rule of its
        own that does not pass its input on, a dropout in training mode (the op guard refuses it on the other
        path), a non-float input, or a child that changed its input in place."""
        if not self.graph_free or not x.is_floating_point():
            return None
        records: list[tuple[Site, Rule | None, Tensor, Tensor]] = []
        hidden = x.detach()
        with torch.no_grad():
            for name, module, rule in self.steps:
                interruption_point()
                site: Site = module
                if rule is None:
                    if module.training and type(module) not in _RESHAPES:
                        return None
                    output = module.forward(hidden)
                else:
                    # a module that works in place gets a copy (as on the other path), so its input stays intact
                    inplace = _works_in_place(module)
                    check = getattr(rule, "check_inputs", None)  # what the rule assumes of its inputs
                    if check is not None:
                        check(module, (hidden,))
                    version = hidden._version
                    output = module.forward(hidden.clone() if inplace else hidden)
                    if hidden._version != version:  # the input, kept for the rule, changed (the other path copies)
                        return None
                    if not isinstance(output, Tensor):
                        raise _not_a_tensor(name, module, rule, output)
                    base = _stock_layer(module) if getattr(rule, "reads_weights", False) else None
                    if base is not None:  # as the other path checks it (_Attachment._post)
                        site = _layer_site(name, module, base, (hidden,), output)
                    route = getattr(rule, "route", None)
                    if route is not None and route(site, (hidden,), output) == 0:
                        rule = None  # relevance passes unchanged
                records.append((site, rule, hidden, output))
                hidden = output
        return PlanTrace(records, hidden)


# stock modules without a rule whose output is their input's values (reshaped), so that relevance passes them
# unchanged: a plan made of these and ruled modules runs graph-free (SequentialPlan.trace)
_RESHAPES: tuple[type, ...] = (nn.Flatten, nn.Unflatten, nn.Identity)
_PASS_ON_MODULES: tuple[type, ...] = (
    *_RESHAPES, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)


class PlanTrace:
    """A :class:`SequentialPlan`'s forward pass run without autograd, and its backward passes.

    With no op guard needed (every child has a rule, or passes its input on), the backward pass needs no graph:
    each ruled child's relevance is ``rule.relevance(module, (input,), output, relevance_out)``, called in reverse
    order as the relay's backward calls it, and a child that passes its input on (a reshape, dropout in eval mode,
    a rule's route) passes the relevance on, reshaped. A z-rule in autograd's form on the other path (Epsilon on a
    plain Linear or zero-padded Conv: :func:`_carry`, :func:`_divided`) runs the same operations here in its rule's
    kernel (the division by the stabilised output, the layer's transposed map, the product with the input), so the
    relevance is bitwise that of the other path; ``tests/unit/test_sequential_plan.py`` checks it. What autograd
    costs for each layer (its graph, its engine, the identity nodes of the relayed outputs) is not paid.
    """

    def __init__(self, records: Sequence[tuple[Site, Rule | None, Tensor, Tensor]], output: Tensor) -> None:
        self.records, self.output = tuple(records), output

    def relevance(self, start: Tensor) -> Tensor | None:
        """The relevance at the input for ``start``, the relevance at the output; None where a rule gives the
        input none. ``start`` may be batched by ``torch.func.vmap`` (several targets in one pass)."""
        relevance = start
        _RULES.running += 1  # as in the relay's backward: a rule that runs a module again runs it as it is
        try:
            with torch.enable_grad():
                for site, rule, x, output in reversed(self.records):
                    interruption_point()
                    if rule is None:
                        relevance = relevance.reshape(x.shape)
                        continue
                    given = rule.relevance(site, (x,), output, relevance)
                    if len(given) != 1:
                        raise ExplanationError(f"rule {type(rule).__name__} returned {len(given)} relevances for "
                                               f"{_describe(site)} with 1 tensor input")
                    (value,) = given
                    if value is None:
                        return None
                    if value.shape != x.shape:
                        raise ExplanationError(
                            f"rule {type(rule).__name__} returned relevance of shape {tuple(value.shape)} for the "
                            f"input of {_describe(site)}, which has shape {tuple(x.shape)}"
                        )
                    relevance = value.detach().to(x.dtype)  # autograd's cast of a gradient to its input's dtype
        finally:
            _RULES.running -= 1
        return relevance


def sequential_plan(model: nn.Module, assignments: Sequence[tuple[str, nn.Module, Rule]],
                    uncovered: Sequence[tuple[str, nn.Module, str]]) -> SequentialPlan | None:
    """The :class:`SequentialPlan` of ``model`` under ``assignments``, None where the model is not an
    ``nn.Sequential`` (nested ones included) of modules that each have a rule and are called the way
    ``nn.Module.__call__`` calls them, or are stock modules whose ops the op guard rules (``_PLAN_OP_MODULES``)."""
    if type(model) is not nn.Sequential or uncovered:
        return None
    ruled = {id(module): (name, rule) for name, module, rule in assignments}
    containers: list[nn.Module] = []
    steps: list[tuple[str, nn.Module, Rule | None]] = []

    def walk(sequential: nn.Module) -> bool:
        if sequential is not model:
            containers.append(sequential)
        for child in sequential._modules.values():
            if child is None:
                continue
            if id(child) in ruled:
                if isinstance(child, torch.jit.ScriptModule) or type(child).__call__ is not nn.Module.__call__:
                    return False
                name, rule = ruled[id(child)]
                steps.append((name, child, rule))
            elif type(child) in _PLAN_OP_MODULES:
                steps.append(("", child, None))
            elif type(child) is not nn.Sequential or not walk(child):
                return False
        return True

    return SequentialPlan(containers, steps) if walk(model) and any(rule for _, _, rule in steps) else None


def attached_rule(module: nn.Module) -> tuple[Rule | None, bool]:
    """The rule this thread's :func:`attach_rules` gave ``module`` (None for none), and whether any other hook is
    registered on it (a user's, a layer recorder's, a backward hook, this thread's tripwire).

    >>> layer = nn.Linear(2, 2)
    >>> attached_rule(layer)
    (None, False)
    """
    me = threading.get_ident()
    rule: Rule | None = None
    other = bool(module._backward_hooks or module._backward_pre_hooks)
    wrapper = module.__dict__.get("forward")
    while isinstance(wrapper, _Attachment):  # installed wrappers, the last one outermost
        if wrapper.owner == me and rule is None:
            rule = wrapper.rule
        wrapper = wrapper.forward
    for hook in (*module._forward_pre_hooks.values(), *module._forward_hooks.values()):
        owner = getattr(hook, "__self__", hook)
        if isinstance(owner, (_Attachment, _Tripwire)) and owner.owner != me:
            continue  # another thread's: acts only there
        if isinstance(owner, _Attachment):
            rule = owner.rule
        else:
            other = True
    return rule, other


# ------------------------------------------------------------------------------------------------ op sites
def ops_by_name(op_rules: Mapping[Op, Rule]) -> dict[str, Op]:
    """The op of each function name among the ops of ``op_rules`` (a :class:`FunctionalGuard` looks these up
    before :func:`relprop.ops.lookup`, so ops declared by the user come first). Where two ops claim a name, the
    first in ``op_rules`` has it: a rule map puts its own entries before its base map's.

    >>> own = ops.Op("own", frozenset({"max_pool2d"}))
    >>> ops_by_name({own: None, ops.MAX: None})["max_pool2d"]
    ops.OWN
    """
    by_name: dict[str, Op] = {}
    for op in op_rules:
        for name in op.names:
            by_name.setdefault(name, op)
    return by_name


def _operands_unpacked(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                       ) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """``torch.einsum(equation, [a, b])``, the old interface, as ``torch.einsum(equation, a, b)``: the operands
    where the rule sees them (CvT's attention)."""
    if len(args) == 2 and isinstance(args[1], (list, tuple)):
        return func, (args[0], *args[1]), kwargs
    return func, args, kwargs


def _templated(target: Any, attributes: Callable[[Tensor], dict[str, Any]]) -> Callable[..., Any]:
    """``x.type_as(t)``, ``x.view_as(t)`` ... as the op on ``x`` alone (``x.to(dtype=t.dtype, ...)``): ``t`` lends
    its dtype or shape, not its values, so it is no operand (a constant's template, or a path tensor as a constant's
    template, would otherwise read as an operand of the op)."""

    def rewrite(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        if len(args) != 2 or kwargs or not isinstance(args[1], Tensor):
            return func, args, kwargs
        return target, (args[0],), attributes(args[1])

    return rewrite


def _to_template(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                 ) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """``x.to(t)`` (``x.to(tensor=t, non_blocking=..., copy=...)``) as ``x.to(dtype=t.dtype, device=t.device, ...)``:
    as for ``type_as``, ``t`` lends its dtype and device, so a constant cast to a path tensor's stays a constant
    (it was an operand, and with it the constant went on the path: a product with it then read as two factors)."""
    other = args[1] if len(args) > 1 and isinstance(args[1], Tensor) else kwargs.get("tensor")
    if not isinstance(other, Tensor) or len(args) < 1:
        return func, args, kwargs
    rest = {key: value for key, value in kwargs.items() if key != "tensor"}
    flags = dict(zip(("non_blocking", "copy"), args[2:]))  # x.to(t, non_blocking, copy)
    return func, (args[0],), {"dtype": other.dtype, "device": other.device, **flags, **rest}


_REWRITES: dict[Any, Callable[..., tuple[Any, tuple[Any, ...], dict[str, Any]]]] = {
    torch.functional.einsum: _operands_unpacked,
    Tensor.to: _to_template,
    Tensor.type_as: _templated(Tensor.to, lambda t: {"dtype": t.dtype, "device": t.device}),
    Tensor.view_as: _templated(Tensor.view, lambda t: {"size": t.shape}),
    Tensor.reshape_as: _templated(Tensor.reshape, lambda t: {"shape": t.shape}),
    Tensor.expand_as: _templated(Tensor.expand, lambda t: {"size": t.shape}),
}


def remove_mode(mode: TorchFunctionMode) -> None:
    """Take ``mode`` off the torch-function mode stack wherever it is, every other mode kept in its place (nothing
    done if it is not there)."""
    above = []
    while torch._C._len_torch_function_stack():
        top = torch._C._pop_torch_function_stack()
        if top is mode:
            break
        above.append(top)
    for top in reversed(above):
        torch._C._push_on_torch_function_stack(top)


class FunctionalGuard(TorchFunctionMode):
    """Gives every functional operation on the relevance path outside ruled modules its rule, before it runs.

    ``op_rules`` maps each :class:`~relprop.ops.Op` to its rule. With ``strict`` (LRP), an op without a rule
    raises an ExplanationError naming it and the line that called it; otherwise (guided backprop) it runs as it is,
    so its plain gradient flows. ``depth > 0`` inside ruled modules, whose own rule accounts for their operations.
    """

    def __init__(self, op_rules: Mapping[Op, Rule], strict: bool = True, by_name: Mapping[str, Op] | None = None,
                 refusal: Callable[[str, Op | None], tuple[str, str]] | None = None) -> None:
        super().__init__()
        self.op_rules = op_rules
        self.strict = strict
        self.refusal = refusal  # (why, what to do) for an op without a rule, from a method other than LRP
        self.depth = 0
        self._by_name = ops_by_name(op_rules) if by_name is None else by_name  # ops declared by the user first
        self._touched: list[Tensor] = []  # tensors from before an in-place op that got a tag: untagged on exit
        self._fresh: list[Tensor] = []  # tensors made by a constructor in the forward pass (_FRESH): untagged on exit
        # the constant-output ops (CP-LRP's softmax, a norm statistic) that took a path tensor in: where they ran
        self.constant_sites: list[str] = []
        self._off_path: dict[int, Any] = {}  # autograd nodes known to be off the path (_hidden_path), by id

    def check_hidden(self, values: Iterable[Any], user: Callable[[], str]) -> None:
        """:func:`refuse_hidden`, with the nodes this guard has already found off the path."""
        refuse_hidden(values, user, self.strict, self._off_path)

    def __enter__(self) -> FunctionalGuard:
        _opaque_to_dynamo()
        return super().__enter__()  # type: ignore[no-untyped-call,no-any-return]

    def op_of(self, name: str) -> Op | None:
        """The op that a function called ``name`` counts as here (ops the user declared first).

        >>> FunctionalGuard({}).op_of("cat") is ops.ROUTE
        True
        """
        return self._by_name.get(name) or ops.lookup(name)

    @staticmethod
    def active() -> FunctionalGuard | None:
        """The innermost guard entered in this thread, None if none."""
        for mode in reversed(torch.overrides._get_current_function_mode_stack()):  # type: ignore[no-untyped-call]
            if isinstance(mode, FunctionalGuard):
                return mode
        return None

    def suspend(self) -> bool:
        """Take this guard off the top of the torch-function mode stack (False, and nothing done, if it is not
        there: another mode entered inside the model stays above it)."""
        size = torch._C._len_torch_function_stack()
        if size == 0 or torch._C._get_function_stack_at(size - 1) is not self:
            return False
        torch._C._pop_torch_function_stack()
        return True

    def resume(self) -> None:
        """Put this guard back on the mode stack after :meth:`suspend`."""
        torch._C._push_on_torch_function_stack(self)

    @contextlib.contextmanager
    def reentered(self) -> Iterator[None]:
        """This guard on the mode stack again for the ops computed inside a call it handles (a decomposition, the
        mean of ``var_mean``). Not ``with self``: leaving that ends the explained forward pass, which takes the
        tags off every tensor the pass tagged, and a tensor rebound before (``h += x``) would then leave the
        relevance path for the rest of the pass."""
        torch._C._push_on_torch_function_stack(self)
        try:
            yield
        finally:
            remove_mode(self)

    def __exit__(self, *exc_info: Any) -> None:
        # off the stack wherever it is (a module that failed while the guard was suspended left it off the stack; a
        # mode that failed to exit may sit above it)
        remove_mode(self)
        for tensor in self._touched + self._fresh:  # e.g. a buffer that an in-place op wrote path values into
            for tag in (_PATH, _STALE, _PREVIOUS, _FRESH):
                if hasattr(tensor, tag):
                    delattr(tensor, tag)
        self._touched.clear()
        self._fresh.clear()
        self._off_path.clear()

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if self.depth:
            return func(*args, **kwargs)
        rewrite = _REWRITES.get(func)
        if rewrite is not None:
            func, args, kwargs = rewrite(func, args, kwargs)
        if not (on_path(args) or (kwargs and on_path(kwargs.values()))):
            if self.constant_sites:  # a constant computed from the path stays one (var + eps)
                source = _constant_source(args) or (_constant_source(kwargs.values()) if kwargs else None)
                if source is not None:
                    return _tag_constant(func(*args, **kwargs), source)
            result = func(*args, **kwargs)
            if func in _CONSTRUCTORS:
                return self._made(result)
            if _requires_grad(result):  # a gradient flows through it: its inputs must not hide the path
                self._check_operands(func, args, kwargs)
            return result
        return self._dispatch(func, args, kwargs)

    def _made(self, result: Any) -> Any:
        """Tag a tensor that a constructor made in the forward pass as fresh (:data:`_FRESH`)."""
        if type(result) is Tensor and not result.requires_grad:
            setattr(result, _FRESH, True)
            self._fresh.append(result)
        return result

    def _check_operands(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.check_hidden((*args, *kwargs.values()),
                          lambda: f"an input of '{ops.function_name(func)}' at {ops.caller_location()}")

    def _dispatch(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        interruption_point()
        name = ops.function_name(func)
        where = (_stale(args) or _stale(kwargs.values())) if self._touched else None
        if where is not None:
            raise _stale_error(f"'{name}' at {ops.caller_location()}", where)
        op = self.op_of(name)
        if op is ops.NORM_STATISTIC and name in ops.POWER_NAMES and _positive_integer_power(name, args, kwargs):
            op = ops.POWER
        if op is ops.CONSTANT:
            result = func(*args, **kwargs)
            return self._made(result) if name in _CONSTRUCTOR_NAMES else result
        if name == "__get__" and getattr(getattr(func, "__self__", None), "__name__", "") == "data":
            raise ExplanationError(
                f"'.data' of a tensor on the relevance path at {ops.caller_location()} cuts the relevance; use the "
                "tensor itself (or .detach() where it is meant to be a constant)"
            )
        rule = None if op is None else self.op_rules.get(op)
        if rule is None or op is None:
            if not self.strict:
                self._check_operands(func, args, kwargs)
                result = mark_path(func(*args, **kwargs))
                if ops.is_inplace_name(name) and isinstance(args[0], Tensor):
                    self._written(args[0])
                return result
            return self._refuse(func, name, op, args, kwargs)
        self._check_operands(func, args, kwargs)  # the other operands of an op on the path
        if kwargs.get("out") is not None:
            raise ExplanationError(f"'{name}' with out= at {ops.caller_location()}: write the result to a new tensor")
        if self.constant_sites and op not in _SCALING_OPS:
            constant = _constant_source(args) or _constant_source(kwargs.values())
            if constant is not None:
                raise _constant_error(f"'{name}' at {ops.caller_location()}", constant)
        decompose = getattr(rule, "decompose", None)
        if decompose is not None and getattr(rule, "decomposes", lambda _: True)(name):
            # a composite function: its inner ops come through this guard again (a rule may also only look at the call
            # and return NotImplemented: DeepLIFT's check of a top-k selection)
            with self.reentered():
                decomposed = decompose(func, args, kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        if getattr(rule, "gradient_is_relevance", False):
            return self._run_as_is(func, name, args, kwargs)
        if getattr(rule, "constant_output", False):  # e.g. CP-LRP's softmax: the result leaves the path
            source = f"'{name}' at {ops.caller_location()} ({op!r}, rules.{type(rule).__name__})"
            self.constant_sites.append(source)
            # an in-place op (d.rsqrt_()) runs out of place: in place, the path tensor would take the constant's
            # value and stay on the path (a product with it then read as one of two path factors)
            twin = ops.out_of_place(func, args, kwargs)
            call_func, call_args, call_kwargs = twin if twin is not None else (func, args, kwargs)
            with torch.no_grad():
                result = _tag_constant(call_func(*call_args, **call_kwargs), source)
            if name in ("var_mean", "std_mean") and isinstance(args[0], Tensor):
                # the spread is the statistic, held constant; the mean is a linear map of x, on the path with the
                # mean's own rule (x - mean, as layer_norm centres), not a constant
                return result[0], self._mean_of(args, kwargs)
            if twin is not None and isinstance(args[0], Tensor) and isinstance(result, Tensor):
                return _rebind(args[0], result, self._touched, ops.caller_location())  # the model's object holds it
            return result
        twin = ops.out_of_place(func, args, kwargs)
        call_func, call_args, call_kwargs = twin if twin is not None else (func, args, kwargs)
        keys: tuple[int | str, ...] = (
            *(i for i, a in enumerate(call_args) if isinstance(a, Tensor) and getattr(a, _PATH, False)),
            *(k for k, a in call_kwargs.items() if isinstance(a, Tensor) and getattr(a, _PATH, False)),
        )
        if len(keys) == 0:
            raise self._error(name, op, "its relevance-path tensors sit inside a list, where this op's rule cannot "
                                        "see them", fix="pass them as separate arguments where the function takes "
                                        "them so (f(a, b), not f([a, b])), or give the op a rule that reads the list")
        call = OpCall(op, call_func, call_args, call_kwargs, keys, ops.caller_location())
        call.gates = tuple(bool(getattr(t, _GATE, False)) for t in call.inputs())  # tags are gone by the backward
        result = self._apply(rule, call)
        if twin is not None and isinstance(args[0], Tensor):  # an in-place op, run out of place
            return _rebind(args[0], result, self._touched, call.location, reshaped=name in ops.INPLACE_VIEWS)
        return result

    def _mean_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        """The mean of ``torch.var_mean`` / ``std_mean``'s call, run through this guard (the mean op's rule).

        Their signatures: ``(input, dim=None, *, correction, keepdim=False)``, ``(input, dim, unbiased,
        keepdim=False)`` and ``(input, unbiased)``."""
        x = args[0]
        dim = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], bool) else None)
        keepdim = bool(kwargs.get("keepdim", args[3] if len(args) > 3 else False))
        with self.reentered():
            return x.mean() if dim is None else x.mean(dim=dim, keepdim=keepdim)  # type: ignore[no-any-return]

    def _apply(self, rule: Rule, call: OpCall) -> Tensor:
        inputs = call.inputs()
        if call.op is ops.DIV and call.kwargs.get("rounding_mode") is not None:
            raise ExplanationError(
                f"'{call.name}' with rounding_mode={call.kwargs['rounding_mode']!r} at {call.location} rounds a tensor "
                "on the relevance path, a step function that no rule explains (as x // y and torch.floor are "
                "refused); if it computes an index or a count, compute it from x.detach()"
            )
        if call.op is ops.ADDCMUL and {1, "tensor1"} & set(call.keys) and {2, "tensor2"} & set(call.keys):
            raise ExplanationError(
                f"'addcmul' at {call.location} multiplies two tensors on the relevance path (tensor1 * tensor2), whose "
                "relevance a sum's rule would count twice; write it out, input + value * tensor1 * tensor2, so that "
                "the product gets the product rule"
            )
        if call.op is ops.DROPOUT and call.argument("training"):
            raise ExplanationError(
                f"dropout in training mode at {call.location} would randomise the explanation: call model.eval() "
                "or pass training=False"
            )
        with torch.no_grad():
            value = call.forward(*(t.detach() for t in inputs))
        if not isinstance(value, Tensor):
            raise ExplanationError(f"{call!r} returns {type(value).__name__}; its rule needs a single tensor")
        if call.op is ops.BATCH_NORM:
            if call.argument("training"):
                raise ExplanationError(
                    f"the batch norm at {call.location} normalises with batch statistics (training mode, or no "
                    "running statistics); call model.eval() on a model whose batch norms track running statistics"
                )
            producer = getattr(inputs[0], _PRODUCER, None)
            # fed by a Linear/Conv with a z-rule whose outputs are the norm's channels (dimension 1; a Linear's
            # are its last dimension, so only on 2-D input): explain the pair as one affine map
            layer_input = None if producer is None else _as_it_was(producer[2], producer[3])
            if producer is not None and layer_input is not None:
                layer_rule, layer = producer[:2]
                if not isinstance(layer.layer if isinstance(layer, OwnForward) else layer, nn.Linear) or \
                        value.dim() == 2:
                    return relay(layer_rule, MergedBatchNorm(layer, call), value, (layer_input,))
        result = relay(rule, call, value, inputs)
        _tag_bounds(result, _output_bounds(call))
        return result

    def _run_as_is(self, func: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # the op's own backward carries the relevance on: an input from a custom autograd.Function would bring
        # that Function's plain gradient along unseen (every other site checks its inputs in relay)
        _foreign_function(f"the input of '{name}' at {ops.caller_location()}", (*args, *kwargs.values()))
        # a gate reshaped or expanded (gate.view(-1, c, 1, 1)) is still a gate, with the same bounds; a value
        # brought in (gate.masked_fill(mask, -1.0)) widens them, and an unknown one leaves no bounds
        bounded = isinstance(args[0], Tensor) and (  # (torch.where's first argument is its condition)
            hasattr(args[0], _BOUNDS) or hasattr(args[0], _GATE) or name == "where")
        bounds = _bounds_after(name, args, kwargs) if bounded else None
        try:
            result = func(*args, **kwargs)
        except RuntimeError as error:
            if "inplace" not in str(error):
                raise
            if not (ops.is_inplace_name(name) and _can_rebind(args[0])):
                raise ExplanationError(
                    f"in-place '{name}' at {ops.caller_location()} modifies the output of a ruled module or op, "
                    "which autograd cannot rewrite; write it out of place (e.g. torch.where or a new tensor)"
                ) from error
            # the output of a ruled site (a view its relay made, which autograd keeps from in-place changes):
            # the op changes a copy, which the model's tensor object then holds (x[i] = y into attention scores)
            copy = mark_path(args[0].clone())
            result = func(copy, *args[1:], **kwargs)
            changed = _rebind(args[0], copy, self._touched, ops.caller_location(), reshaped=name in ops.INPLACE_VIEWS)
            result = changed if result is copy else result
        if ops.is_inplace_name(name) and isinstance(args[0], Tensor):
            self._written(args[0])
        if bounded:
            for target in {id(t): t for t in (result, args[0] if ops.is_inplace_name(name) else None)
                           if isinstance(t, Tensor)}.values():
                for tag in (_GATE, _BOUNDS):
                    if tag in target.__dict__:
                        delattr(target, tag)
                _tag_bounds(target, bounds)
        if isinstance(result, Tensor) and isinstance(args[0], Tensor):
            # a layer's output copied as it is (conv(x).contiguous()) still feeds its batch norm as the layer's
            if hasattr(args[0], _PRODUCER) and name in _SAME_VALUES and result.shape == args[0].shape \
                    and result.dtype == args[0].dtype:
                setattr(result, _PRODUCER, getattr(args[0], _PRODUCER))
        return mark_path(result)

    def _written(self, held: Tensor) -> None:
        """``held`` was written into in place with values of the path (``x[i] = y``, or ``y`` copied into a view of
        ``x``: ``x[..., :n].copy_(y)``): it, and the tensor it is a view of, now hold path values."""
        for tensor in (held, held._base):
            if tensor is not None and not getattr(tensor, _PATH, False):
                mark_path(tensor)
                self._touched.append(tensor)

    def _refuse(self, func: Any, name: str, op: Op | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if op is None and not ops.is_inplace_name(name) and ops.out_of_place(func, args, kwargs) is None:
            # an out-of-place op with an integer or boolean result (argmax, comparisons, size) leaves the path
            result = func(*args, **kwargs)
            if not _has_floating(result):
                return result
        if self.refusal is not None:
            raise self._error(name, op, *self.refusal(name, op))
        if op is None:
            raise self._error(name, op, "relprop has no rule for it")
        raise self._error(name, op, f"the RuleMap gives {op!r} no rule")

    def _error(self, name: str, op: Op | None, reason: str, fix: str | None = None) -> ExplanationError:
        return ExplanationError(
            f"functional operation '{name}' at {ops.caller_location()} is on the relevance path and {reason}: its "
            f"relevance would be a plain gradient; {fix or _fix(name, op)}"
        )


# why the guard is opaque to dynamo: in dynamo's error where fullgraph=True cannot break at the guard (and matched
# there by relprop.methods._common.explained_forward)
DYNAMO_REASON = "relprop's op guard runs compiled code op by op while it explains"


def _opaque_to_dynamo() -> None:
    """Once torch.compile is in use (``torch._dynamo`` imported; it is not imported for this, which would take a
    second and a half), make :meth:`FunctionalGuard.__torch_function__` a function that dynamo does not trace. A
    compiled function called in the explained forward pass then runs op by op through the guard, as plain code would
    (about 1% slower per op), instead of being traced with the guard inlined into a graph whose backward carries a
    plain gradient."""
    dynamo = sys.modules.get("torch._dynamo")
    function = FunctionalGuard.__torch_function__
    if dynamo is None or getattr(function, "_relprop_opaque", False):
        return
    opaque = dynamo.disable(function, reason=DYNAMO_REASON)
    opaque._relprop_opaque = True
    FunctionalGuard.__torch_function__ = opaque  # type: ignore[method-assign]


def _fix(name: str, op: Op | None) -> str:
    """What to do about the op ``name`` (``op`` if relprop knows it) that has no rule here."""
    if op is None and name in ("_pack_padded_sequence", "pack_padded_sequence", "pack_sequence"):
        return ("relprop explains recurrent modules on padded batches: pass the padded tensor to the recurrent module "
                "and select each sequence's last valid step, output[torch.arange(batch), lengths - 1]")
    if op is None and name in _FUSED_CELLS:
        return (f"it is the fused step of nn.{_FUSED_CELLS[name]}, whose gates no rule can see: build the model from "
                "relprop.models' cells (LSTMCell, GRUCell, RNNCell, with the LSTM-LRP rules of the presets) or use "
                "nn.LSTM, nn.GRU or nn.RNN, which the presets rewrite as explicit cells")
    if op is None:
        return ("express it as an nn.Module with a rule, or declare it: my_op = relprop.ops.Op('my_op', "
                f"frozenset({{'{name}'}})) and pass RuleMap([(my_op, a_rule)])")
    if op is ops.FOURIER:
        return ("preset='attnlrp' or 'cp_lrp' run it as its products with cosine and sine matrices (a decomposition "
                "with other rounding, which the CNN presets leave out); or add it to yours: "
                "rule_map.with_rules((ops.FOURIER, rules.Fourier()))")
    if op in (ops.SOFTMAX, ops.ATTENTION):
        return (f"for attention use preset='attnlrp' (AttnLRP) or preset='cp_lrp' (CP-LRP), or give {op!r} a rule "
                "with rule_map.with_rules(...)")
    if op is ops.NORM_STATISTIC:
        return ("if it computes the statistic of a normalisation (x * rsqrt(mean(x**2) + eps), as in RMSNorm), "
                "preset='attnlrp' or 'cp_lrp' hold it constant; if it is a feature of the model (e.g. an "
                "activation written as a formula), put it in an nn.Module with a rule (rules.Pass() for an "
                "element-wise activation)")
    return f"give it one: RuleMap([({op!r}, rules.Proportional())]) or another rule from relprop.rules"


# the functions torch's recurrent cell modules call for one step (their gates inside one kernel)
_FUSED_CELLS = {"lstm_cell": "LSTMCell", "gru_cell": "GRUCell", "rnn_tanh_cell": "RNNCell", "rnn_relu_cell": "RNNCell"}


def _has_floating(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.is_floating_point() or value.is_complex()
    if isinstance(value, (tuple, list)):
        return any(_has_floating(v) for v in value)
    return False
