"""Core plumbing: the Rule protocol, the relay that carries relevance backward, and the attach context.

The convention (as in zennit) is that **the backward pass carries relevance**: while rules are attached to a
model, the gradient that arrives at the input *is* the relevance. A forward hook on every ruled module sends the
module's output through :class:`_Relay`, whose backward calls ``rule.relevance``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["ExplanationError", "Rule", "stabilize", "attach_rules", "FunctionalGuard", "eval_mode"]


class ExplanationError(ValueError):
    """Raised when relprop cannot explain a model or input correctly (never silently wrong)."""


@runtime_checkable
class Rule(Protocol):
    """A relevance rule: maps the relevance of a module's output to relevance of its inputs.

    ``inputs`` are the tensors the module was called with, ``output`` its (detached) output and
    ``relevance_out`` the relevance arriving at the output. Return one entry per input (None for none).
    """

    def relevance(
        self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]: ...


# A rule may also define ``route(module, inputs, output) -> int | None``: when it returns an index, all relevance
# of the output goes unchanged to that input (and none to the others). The attachment then expresses this in the
# forward pass as ``output.detach() + (x - x.detach())``: the same value, an identity backward, no Python in it.


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Switch every sub-module to eval mode and restore each module's own flag afterwards, also after an error."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """Shift ``z`` away from zero by ``epsilon`` in the direction of its sign (zero counts as positive).

    >>> stabilize(torch.tensor([-2.0, 0.0, 3.0]), 0.5)
    tensor([-2.5000,  0.5000,  3.5000])
    """
    return z.sign().add_(0.5).sign_().mul_(epsilon).add_(z)  # sign with 0 -> +1, arithmetic kernels only


class _Relay(torch.autograd.Function):
    """Identity in the forward pass; in the backward pass, the module's rule turns relevance_out into relevance_in."""

    @staticmethod
    def forward(ctx: Any, rule: Rule, module: nn.Module, output: Tensor, *inputs: Any) -> Tensor:
        ctx.rule, ctx.module = rule, module
        ctx.tensor_slots = [i for i, value in enumerate(inputs) if isinstance(value, Tensor)]
        ctx.n_inputs = len(inputs)
        ctx.save_for_backward(output, *(inputs[i] for i in ctx.tensor_slots))
        return output.view_as(output)

    @staticmethod
    def backward(ctx: Any, relevance_out: Tensor) -> tuple[Tensor | None, ...]:
        output, *saved = ctx.saved_tensors
        tensors = [t.detach() for t in saved]  # rules must not build a graph back into the forward pass
        with torch.enable_grad():
            relevance_in = ctx.rule.relevance(ctx.module, tuple(tensors), output, relevance_out)
        if len(relevance_in) != len(tensors):
            raise ExplanationError(
                f"rule {type(ctx.rule).__name__} returned {len(relevance_in)} relevances for "
                f"{type(ctx.module).__name__} with {len(tensors)} tensor inputs"
            )
        grads: list[Tensor | None] = [None] * ctx.n_inputs
        for slot, value in zip(ctx.tensor_slots, relevance_in):
            grads[slot] = None if value is None else value.detach()
        return (None, None, None, *grads)


_ROUTE_LIMIT = 1 << 16  # elements


def _needs_relevance(args: tuple[Any, ...]) -> bool:
    return any(isinstance(a, Tensor) and a.requires_grad for a in args)


class _Attachment:
    """Hooks of one module: capture the inputs before the call, relay the output after it."""

    def __init__(self, name: str, module: nn.Module, rule: Rule, guard: FunctionalGuard | None) -> None:
        self.name, self.module, self.rule, self.guard = name, module, rule, guard
        self.stack: list[tuple[Any, ...]] = []

    def pre(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if self.guard is not None:
            self.guard.depth += 1
        self.stack.append(args)
        if getattr(module, "inplace", False):  # the module would overwrite the tensors we keep for backward
            return tuple(a.clone() if isinstance(a, Tensor) else a for a in args)
        return None

    def post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        original_args = self.stack.pop()
        try:
            if not _needs_relevance(original_args):
                return None
            if not isinstance(output, Tensor):
                raise ExplanationError(
                    f"module '{self.name}' ({type(module).__name__}) returns {type(output).__name__}, but rule "
                    f"{type(self.rule).__name__} needs a single Tensor output; wrap the module or apply a canonizer"
                )
            route = getattr(self.rule, "route", None)
            if route is not None and output.numel() <= _ROUTE_LIMIT:
                # relevance passes one input unchanged: autograd's identity carries it (two cheap element-wise
                # operations instead of a Python backward; for large tensors the relay is the cheaper of the two)
                index = route(module, original_args, output)
                if index is not None:
                    source = original_args[index]
                    return output.detach() + (source - source.detach())  # exact value, identity backward
            return _Relay.apply(self.rule, module, output.detach(), *original_args)
        finally:
            if self.guard is not None:
                self.guard.depth -= 1


class _Tripwire:
    """Forward pre-hook on a module that no rule covers: raises as soon as it runs in an explained forward."""

    def __init__(self, name: str, module: nn.Module, advice: str) -> None:
        self.name, self.module, self.advice = name, module, advice

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if _needs_relevance(args) or any(p.requires_grad for p in module.parameters(recurse=False)):
            raise ExplanationError(
                f"no rule covers module '{self.name}' ({type(module).__name__}); {self.advice}"
            )


@contextlib.contextmanager
def attach_rules(
    model: nn.Module,
    assignments: Sequence[tuple[str, nn.Module, Rule]],
    uncovered: Sequence[tuple[str, nn.Module, str]] = (),
    guard: FunctionalGuard | None = None,
    trusted: Sequence[nn.Module] = (),
) -> Iterator[None]:
    """Attach ``(name, module, rule)`` assignments and tripwires; remove every hook on exit, also on error.

    ``trusted`` modules (routing layers such as Flatten or Embedding) need no rule; the guard lets their
    internal operations pass.
    """
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        if guard is not None:
            for module in trusted:
                handles.append(module.register_forward_pre_hook(guard.enter))
                handles.append(module.register_forward_hook(guard.leave))
        for name, module, rule in assignments:
            attachment = _Attachment(name, module, rule, guard)
            handles.append(module.register_forward_pre_hook(attachment.pre))
            handles.append(module.register_forward_hook(attachment.post))
        for name, module, advice in uncovered:
            handles.append(module.register_forward_pre_hook(_Tripwire(name, module, advice)))
        yield
    finally:
        for handle in handles:
            handle.remove()


# Functions whose backward only routes values (selects, copies, permutes, concatenates): relevance is conserved.
_ROUTING = frozenset(
    """view view_as reshape reshape_as flatten unflatten permute transpose t squeeze unsqueeze contiguous clone
    expand expand_as repeat cat concat concatenate stack hstack vstack split split_with_sizes tensor_split chunk
    unbind __getitem__ __setitem__ narrow select index_select gather flip roll movedim moveaxis swapaxes swapdims
    to float double half bfloat16 type type_as cpu cuda detach requires_grad_ __get__ unfold""".split()
)


class FunctionalGuard(TorchFunctionMode):
    """Flags functional operations on the relevance path that run outside any ruled module.

    An LRP forward allows only routing operations (reshape, indexing, ``torch.cat`` ...) between ruled modules:
    ``x + y``, ``torch.matmul`` or ``softmax`` outside a module would make the backward a plain gradient (or
    double the relevance on a residual sum), so they raise with advice instead.
    ``check`` decides per call; it returns an error message or None.
    """

    def __init__(self, check: Callable[[str, tuple[Any, ...], dict[str, Any]], str | None]) -> None:
        super().__init__()
        self.check = check
        self.depth = 0

    def enter(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.depth += 1

    def leave(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.depth -= 1

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        # note: self.depth > 0 inside ruled or trusted modules, whose operations the rules account for
        if self.depth == 0 and _on_path(result):
            name = getattr(func, "__name__", repr(func))
            message = self.check(name, args, kwargs)
            if message is not None:
                raise ExplanationError(message)
        return result


def _on_path(result: Any) -> bool:
    if isinstance(result, Tensor):
        return result.requires_grad
    if isinstance(result, (tuple, list)):
        return any(isinstance(r, Tensor) and r.requires_grad for r in result)
    return False


def lrp_check(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Policy of :class:`FunctionalGuard` for LRP: only routing operations may run outside ruled modules."""
    if name in _ROUTING:
        return None
    if name == "pad" and kwargs.get("mode", args[2] if len(args) > 2 else "constant") == "constant":
        return None
    if name == "dropout" and not kwargs.get("training", args[2] if len(args) > 2 else True):
        return None
    advice = {
        "add": "use relprop.layers.Sum() as a module (relevance splits in proportion to the terms)",
        "__add__": "use relprop.layers.Sum() as a module (relevance splits in proportion to the terms)",
        "__iadd__": "use relprop.layers.Sum() as a module (relevance splits in proportion to the terms)",
        "mul": "use relprop.layers.GatedProduct()(gate, signal) for gating (the signal takes all relevance)",
        "__mul__": "use relprop.layers.GatedProduct()(gate, signal) for gating (the signal takes all relevance)",
    }.get(name, "express it as an nn.Module and give that module a rule in the composite")
    return (
        f"functional operation '{name}' runs on the relevance path outside any module that has an LRP rule, "
        f"so its relevance would be a plain gradient; {advice}"
    )
