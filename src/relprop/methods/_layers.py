"""Relevance at intermediate layers: record the tensors at named modules' outputs (or inputs) during the forward
pass, and take the backward pass's values there in the same ``autograd.grad`` call as the input's.

While LRP rules are attached the backward pass carries relevance, so the value arriving at a module's output *is*
its relevance; gradient methods multiply it by the activation (:func:`gradient_x_input`) or integrate it along
the path (integrated gradients: the conductance of Dhamdhere et al. 2018).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core import root_module
from ..errors import ConfigError, ExplanationError

__all__ = ["recorded_layers", "backward", "backward_batched", "stacked", "gap_by_layer", "no_path_error"]

Records = dict[str, list[Tensor]]


def _hooks(name: str, records: Records, at: str, copies: bool = False) -> Any:
    """The hook that records layer ``name``'s output (or input) in ``records``, in this thread only: a plain forward
    pass of the model in another thread is not recorded. ``copies``: the model goes on with a copy (see
    :func:`recorded_layers`) instead of an alias."""
    owner = threading.get_ident()
    go_on = _copy if copies else _alias

    def keep(value: Any, module: nn.Module) -> None:
        if threading.get_ident() != owner:
            return
        if not isinstance(value, Tensor):
            raise ExplanationError(
                f"layer '{name}' ({type(module).__name__}) has {at} of type {type(value).__name__}; relevance at a "
                "layer needs a single tensor there"
            )
        records[name].append(value)

    def output_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        keep(output, module)
        return go_on(output) if threading.get_ident() == owner else None

    def input_hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
        keep(args[0] if args else None, module)
        return (go_on(args[0]), *args[1:]) if threading.get_ident() == owner else None

    return output_hook if at == "output" else input_hook


def _alias(value: Tensor) -> Tensor:
    """A new tensor object for the model to go on with in place of the recorded ``value``: the same values and tags,
    a view whose backward passes into ``value`` unchanged. An in-place operation later in the forward pass gives its
    result to the object the model holds (``out += identity`` after a recorded batch norm), which then is not the
    recorded one, whose relevance stays that of the layer's own output."""
    if type(value) is not Tensor or not value.requires_grad:
        return value
    with torch._C.DisableTorchFunction():
        alias = value.view_as(value)
    alias.__dict__.update(value.__dict__)
    return alias


def _copy(value: Tensor) -> Tensor:
    """A copy of the recorded ``value`` for the model to go on with, without relprop's op guard: an in-place
    operation later in the forward pass (``F.relu(features, inplace=True)`` after DenseNet's last batch norm)
    changes the copy, and the recorded tensor keeps the layer's values and its own gradient (also without
    gradients: integrated gradients records the layers at the baseline under ``torch.no_grad()``)."""
    return value.clone()


@contextlib.contextmanager
def recorded_layers(model: nn.Module, layers: Sequence[str], at: str = "output", copies: bool = False
                    ) -> Iterator[Records]:
    """Record the tensor at the output (``at="output"``) or first input (``"input"``) of each named module.

    Enter it *after* attaching rules: the output hook then sees the relayed output, and the input pre-hook runs
    before the rule's own. A module called several times (a recurrent cell) gets one record per call. With
    ``copies`` (for a plain forward pass, which runs in-place operations in place) the model goes on with a copy
    of each recorded tensor, so that the record keeps the values the layer gave.
    """
    if isinstance(layers, str):
        raise ConfigError(f"layers must be a list of module names, got the string {layers!r}; write [{layers!r}]")
    if at not in ("output", "input"):
        raise ConfigError(f"layer_at must be 'output' or 'input', got {at!r}")
    if not layers:
        yield {}
        return
    modules = dict(root_module(model).named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ConfigError(
            f"layers {missing} name no module of {type(root_module(model)).__name__}; its modules are named like "
            f"{[n for n in modules if n][:8]}"
        )
    records: Records = {name: [] for name in layers}
    handles = []
    try:
        for name in layers:
            hook = _hooks(name, records, at, copies)
            module = modules[name]
            handles.append(module.register_forward_hook(hook) if at == "output"
                           else module.register_forward_pre_hook(hook, prepend=True))
        yield records
    finally:
        for handle in handles:
            handle.remove()


def backward(
    output: Tensor, x: Tensor, start: Tensor, records: Records, retain_graph: bool = False
) -> tuple[Tensor, Records]:
    """The backward pass from ``start`` at ``output``: its value at ``x`` and at every recorded tensor."""
    recorded = [t for values in records.values() for t in values]
    if not output.requires_grad:
        raise no_path_error()
    if not recorded:
        (at_x,) = torch.autograd.grad(output, x, start, allow_unused=True, retain_graph=retain_graph)
        if at_x is None:
            raise no_path_error()
        return at_x, {name: [] for name in records}
    at_x, *flat = torch.autograd.grad(output, [x, *recorded], start, allow_unused=True, retain_graph=retain_graph)
    if at_x is None:
        raise no_path_error()
    grads: Records = {}
    for name, values in records.items():
        got, flat = flat[:len(values)], flat[len(values):]
        if all(value is None for value in got):  # not one call of the layer is on the way back: no value, not 0
            raise ExplanationError(
                f"layer '{name}' receives nothing in the backward pass: its output is not on the way from the "
                "explained output to the input. Under the LRP presets a convolution or linear layer that feeds a "
                "batch norm is explained together with it, as one map: ask for the batch norm's output instead "
                "(e.g. 'bn1' for 'conv1')"
            )
        grads[name] = [torch.zeros_like(value) if grad is None else grad for grad, value in zip(got, values)]
    return at_x, grads


def backward_batched(output: Tensor, x: Tensor, starts: Tensor, records: Records) -> tuple[Tensor, Records]:
    """:func:`backward` from k starts at once (``starts`` (k, *output.shape)): every value with a leading k.

    One backward pass batched by ``torch.func.vmap`` where every function on the way has a batching rule; otherwise
    (a custom ``autograd.Function`` without one, a backward that branches on values) k passes over the same graph,
    kept for them. Either way the forward pass ran once.
    """
    try:
        with warnings.catch_warnings():  # an op without a batching rule runs in vmap's own loop: slower, not wrong
            warnings.filterwarnings("ignore", "There is a performance drop", UserWarning)
            return torch.func.vmap(lambda start: backward(output, x, start, records, retain_graph=True))(starts)
    except RuntimeError:  # vmap's refusal (an error of the backward pass itself comes again below)
        pass
    passes = [backward(output, x, start, records, retain_graph=True) for start in starts.unbind(0)]
    at_x = torch.stack([at for at, _ in passes])
    return at_x, {name: [torch.stack([grads[name][i] for _, grads in passes]) for i in range(len(values))]
                  for name, values in records.items()}


def no_path_error() -> ExplanationError:
    return ExplanationError(
        "no relevance can reach the input: the rules cut every path from the output to x (e.g. Pass on a module "
        "whose several inputs are all on the relevance path sends everything to the first one; give such a module "
        "a rule that splits, e.g. rules.Proportional() for a sum)"
    )


def stacked(records: Records) -> dict[str, Tensor]:
    """One tensor per layer: the record itself, or the records of several calls stacked at dimension 1."""
    result = {}
    for name, values in records.items():
        if not values:
            raise ExplanationError(f"layer '{name}' did not run on the explained input")
        result[name] = values[0] if len(values) == 1 else torch.stack(values, 1)  # (batch, calls, ...)
    return result


def gap_by_layer(layers: dict[str, Tensor], total: Tensor) -> Tensor:
    """``sum R_layer - total`` per sample and layer, (batch, layers), in the order of ``layers``."""
    return torch.stack([value.reshape(len(total), -1).sum(1) - total for value in layers.values()], 1)
