"""Reversible canonizer for stock recurrent modules: ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` -> explicit cells.

The stock modules run fused kernels whose gates, products and sums no rule can see. While
:class:`ExplicitRecurrent` is applied, each stock module computes its forward pass through an explicit twin
(:class:`relprop.models.recurrent.Recurrent` with the same weights), so the rules attach to the twin's linear
maps, gated products and sums.

How: the twin is registered as the stock module's child ``relprop_explicit`` and the module's ``forward`` is
redirected to it (an instance attribute). The stock module stays where it is, as the same object with the same
parameters, so user code holding a reference to it, and hooks registered on it, keep working; the result has
the stock structure ``(output, (h_n, c_n))`` / ``(output, h_n)``. Undoing removes the child and the attribute;
the stock parameters are never written (the twin holds copies).

**Fused LSTM-LRP.** Running the twin costs a Python call per module, step, layer and direction. When a stock
module is explained by LRP and the rules attached to its twin are those of LSTM-LRP (signal-take-all products,
proportional sums, activations passing, as in every preset) with one of relprop's z-rules on each candidate map
(``lstm_epsilon``, ``thesis_lrp``, ``thesis_dtd``, ``zplus`` ...), the redirected forward runs
:func:`relprop.rules.recurrent.fused_recurrent` instead, which gives the same relevance with plain tensor code. It
is decided at each call from the rules actually attached to the twin's modules; any other rule (a user's own, a
product not signal-take-all), a hook of anyone else on a module of the twin (e.g. ``layers=`` naming one),
training mode or a non-LRP method runs the twin.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .. import ops
from ..core import FunctionalGuard, attached_rule, global_hooks, on_path
from ..errors import ExplanationError
from ..models.cells import GRUCell, LSTMCell, RNNCell
from ..models.recurrent import Recurrent
from ..rules import Pass, Proportional, Route, Rule, SignalTakeAll, ZRule
from ..rules.recurrent import Z_RULES, CellRules, GRURules, RNNRules, Rules, fused_recurrent
from .base import apply_all

__all__ = ["ExplicitRecurrent", "explicit_twin"]

_STOCK = (nn.LSTM, nn.GRU, nn.RNN)
_CHILD = "relprop_explicit"


def _cell_of(module: nn.RNNBase) -> tuple[type[nn.Module], dict[str, Any]]:
    if isinstance(module, nn.LSTM):
        if module.proj_size:
            raise ExplanationError(
                f"ExplicitRecurrent does not support nn.LSTM with proj_size={module.proj_size} ({module})"
            )
        return LSTMCell, {"bias": module.bias}
    if isinstance(module, nn.GRU):
        return GRUCell, {"bias": module.bias, "reset_after": True}
    if isinstance(module, nn.RNN):
        return RNNCell, {"bias": module.bias, "activation": module.nonlinearity}
    raise ExplanationError(
        f"ExplicitRecurrent handles nn.LSTM, nn.GRU and nn.RNN, got {type(module).__name__}"
    )


def _copy_weights(cell: nn.Module, module: nn.RNNBase, suffix: str) -> None:
    """Copy layer/direction ``suffix`` (e.g. ``_l0_reverse``) of a stock module into an explicit cell."""
    hidden = module.hidden_size
    w_ih, w_hh = getattr(module, f"weight_ih{suffix}"), getattr(module, f"weight_hh{suffix}")
    b_ih = getattr(module, f"bias_ih{suffix}") if module.bias else None
    b_hh = getattr(module, f"bias_hh{suffix}") if module.bias else None

    def rows(t: Tensor, blocks: list[int]) -> Tensor:  # stacked gate blocks of `hidden` rows each
        return torch.cat([t[k * hidden : (k + 1) * hidden] for k in blocks])

    def both(blocks: list[int]) -> Tensor:  # (rows, input + hidden): the map of [x_t, h_{t-1}]
        return torch.cat([rows(w_ih, blocks), rows(w_hh, blocks)], dim=1)

    def summed(blocks: list[int]) -> Tensor | None:
        return None if b_ih is None or b_hh is None else rows(b_ih, blocks) + rows(b_hh, blocks)

    pairs: list[tuple[Any, Tensor, Tensor | None]]
    if isinstance(cell, LSTMCell):  # stock rows: input, forget, candidate, output
        pairs = [(cell.gates, both([0, 1, 3]), summed([0, 1, 3])), (cell.candidate, both([2]), summed([2]))]
    elif isinstance(cell, GRUCell):  # stock rows: reset, update, new
        pairs = [
            (cell.gates, both([0, 1]), summed([0, 1])),
            (cell.candidate_input, rows(w_ih, [2]), None if b_ih is None else rows(b_ih, [2])),
            (cell.candidate_state, rows(w_hh, [2]), None if b_hh is None else rows(b_hh, [2])),
        ]
    else:
        pairs = [(cell.linear, both([0]), summed([0]))]
    with torch.no_grad():
        for linear, weight, bias in pairs:
            assert isinstance(linear, nn.Linear)
            linear.weight.copy_(weight)
            linear.weight.requires_grad_(w_ih.requires_grad)
            if bias is not None:
                linear.bias.copy_(bias)
                linear.bias.requires_grad_(w_ih.requires_grad)


def explicit_twin(module: nn.RNNBase) -> Recurrent:
    """An explicit :class:`~relprop.models.recurrent.Recurrent` computing the same function as a stock module.

    Same layers, directions, ``batch_first`` and weights (copied), on the module's device and dtype.

    >>> lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    >>> x = torch.randn(2, 5, 3)
    >>> torch.allclose(explicit_twin(lstm)(x)[0], lstm(x)[0], atol=1e-6)
    True
    """
    twin = _structure(module)
    _load_weights(twin, module)
    return twin.train(module.training)


def _structure(module: nn.RNNBase) -> Recurrent:
    """The twin's modules, on the module's device and dtype, without the module's weights."""
    cell, options = _cell_of(module)
    weight = cast(Tensor, module.weight_ih_l0)
    return Recurrent(
        cell,
        module.input_size,
        module.hidden_size,
        num_layers=module.num_layers,
        bidirectional=module.bidirectional,
        batch_first=module.batch_first,
        layer_dropout=module.dropout,
        **options,
    ).to(device=weight.device, dtype=weight.dtype)


def _load_weights(twin: Recurrent, module: nn.RNNBase) -> None:
    for layer, cells in enumerate(twin.layers):
        for direction, explicit in enumerate(cast(nn.ModuleList, cells)):
            _copy_weights(explicit, module, f"_l{layer}" + ("_reverse" if direction else ""))


# One twin per stock module, kept while the module lives and rebuilt when its configuration, dtype or device
# changes: building ~15 modules per cell costs more than a fused explanation. Its weights are copied from the
# module each time the twin runs (never stale); the fused path does not use them.
_TWINS: weakref.WeakKeyDictionary[nn.RNNBase, tuple[tuple[Any, ...], Recurrent]] = weakref.WeakKeyDictionary()


def _kept_twin(module: nn.RNNBase) -> Recurrent:
    weight = cast(Tensor, module.weight_ih_l0)
    key = (type(module), module.input_size, module.hidden_size, module.num_layers, module.bidirectional,
           module.batch_first, module.dropout, module.bias, getattr(module, "nonlinearity", None),
           weight.dtype, weight.device)
    kept = _TWINS.get(module)
    if kept is None or kept[0] != key:
        kept = (key, _structure(module))
        _TWINS[module] = kept
    twin = kept[1]
    if twin.training != module.training:  # train() sets every sub-module: the twin's flags are all the same
        twin.train(module.training)
    return twin


def _identity(rule: Rule | None) -> bool:
    """No rule (an identity module, or a dropout whose op passes), or Pass."""
    return rule is None or type(rule) is Pass


# The rule each module of an explicit LSTM cell must have for the fused pass
_FUSED_LSTM: dict[str, Callable[[Rule | None], bool]] = {
    "candidate": lambda rule: type(rule) in Z_RULES,
    "candidate_activation": lambda rule: type(rule) is Pass,
    "candidate_dropout": _identity,
    "gates": lambda rule: isinstance(rule, ZRule),  # never reached: the products give the gates no relevance
    "gate_activation": lambda rule: type(rule) is Pass,
    "gate_dropout": _identity,
    "forget": lambda rule: type(rule) is SignalTakeAll,
    "write": lambda rule: type(rule) is SignalTakeAll,
    "emit": lambda rule: type(rule) is SignalTakeAll,
    "cell_sum": lambda rule: type(rule) is Proportional,
    "cell_activation": lambda rule: type(rule) is Pass,
    "input_dropout": _identity,
    "output_dropout": _identity,
}
_FUSED_GRU: dict[str, Callable[[Rule | None], bool]] = {
    "candidate_input": lambda rule: type(rule) in Z_RULES,
    "candidate_state": lambda rule: type(rule) in Z_RULES,
    "candidate_sum": lambda rule: type(rule) is Proportional,
    "reset": lambda rule: type(rule) is SignalTakeAll,
    "candidate_activation": lambda rule: type(rule) is Pass,
    "candidate_dropout": _identity,
    "gates": lambda rule: isinstance(rule, ZRule),  # never reached: the products give the gates no relevance
    "gate_activation": lambda rule: type(rule) is Pass,
    "gate_complement": lambda rule: type(rule) is Pass,
    "gate_dropout": _identity,
    "write": lambda rule: type(rule) is SignalTakeAll,
    "keep": lambda rule: type(rule) is SignalTakeAll,
    "state_sum": lambda rule: type(rule) is Proportional,
    "input_dropout": _identity,
    "output_dropout": _identity,
}
_FUSED_RNN: dict[str, Callable[[Rule | None], bool]] = {
    "linear": lambda rule: type(rule) in Z_RULES,
    "activation": lambda rule: type(rule) is Pass,
    "input_dropout": _identity,
    "output_dropout": _identity,
}


def _cell_rules(cell: nn.Module, rule_of: Callable[[nn.Module], Rule | None]) -> Rules | None:
    """The rules of one explicit cell for the fused pass, None if the pass cannot reproduce them."""
    tables: dict[type[nn.Module], dict[str, Callable[[Rule | None], bool]]] = {
        LSTMCell: _FUSED_LSTM, GRUCell: _FUSED_GRU, RNNCell: _FUSED_RNN}
    table = tables.get(type(cell))
    children = dict(cell.named_children())
    if table is None or set(children) != set(table) or getattr(cell, "reset_after", True) is not True:
        return None
    found = {name: rule_of(children[name]) for name in table}
    if not all(accepts(found[name]) for name, accepts in table.items()):
        return None
    if isinstance(cell, LSTMCell):
        return CellRules(cast(ZRule, found["candidate"]), cast(Proportional, found["cell_sum"]))
    if isinstance(cell, GRUCell):
        return GRURules(*(cast(Any, found[name]) for name in
                          ("candidate_input", "candidate_state", "candidate_sum", "state_sum")))
    return RNNRules(cast(ZRule, found["linear"]))


# The functional ops the twin calls on the relevance path: their own backward routes relevance
_TWIN_ROUTES = ("__getitem__", "unbind", "stack", "cat", "chunk", "transpose", "unsqueeze", "squeeze")


def _stock_arguments(module: nn.RNNBase, x: Tensor, hx: Any) -> bool:
    """A padded input (2-D unbatched or 3-D, float32 or float64, not empty) and an initial state (``(h0, c0)``,
    or ``h0``) of the stock shapes and dtype."""
    weight = cast(Tensor, module.weight_ih_l0)
    if x.dim() not in (2, 3) or x.shape[-1] != module.input_size or x.dtype != weight.dtype \
            or x.dtype not in (torch.float32, torch.float64) or x.device != weight.device or x.numel() == 0:
        return False
    if hx is None:
        return True
    states = module.num_layers * (2 if module.bidirectional else 1)
    shape = (states, module.hidden_size) if x.dim() == 2 else \
        (states, x.shape[0 if module.batch_first else 1], module.hidden_size)
    if not isinstance(module, nn.LSTM):
        hx = (hx,)
    return (isinstance(hx, tuple) and len(hx) == (2 if isinstance(module, nn.LSTM) else 1)
            and all(isinstance(s, Tensor) and tuple(s.shape) == shape and s.dtype == x.dtype for s in hx))


def _fused_rules(module: nn.RNNBase, twin: Recurrent, x: Any, hx: Any) -> list[Rules] | None:
    """The rules of the twin's cells (stock order: layer, direction) when :func:`fused_recurrent` computes what the
    twin would: a stock module in eval mode on a padded tensor on the relevance path, explained by LRP (a strict
    guard), with the LSTM-LRP rules and z-rules of :data:`~relprop.rules.recurrent.Z_RULES` on the twin's modules
    and no other hook on any of them. Else None."""
    if module.training or not isinstance(x, Tensor) or module.proj_size > 0:
        return None
    guard = FunctionalGuard.active()
    if guard is None or not guard.strict or guard.depth or global_hooks() or not on_path((x, hx)) \
            or not _stock_arguments(module, x, hx):
        return None
    if (any(type(guard.op_rules.get(guard.op_of(name))) is not Route for name in _TWIN_ROUTES)  # type: ignore[arg-type]
            or type(guard.op_rules.get(ops.DROPOUT)) is not Pass or guard.op_of("new_zeros") is not ops.CONSTANT):
        return None
    attached = {id(m): attached_rule(m) for m in twin.modules()}
    if any(other for _, other in attached.values()):
        return None
    cells = [cell for layer in twin.layers for cell in cast(nn.ModuleList, layer)]
    containers = [twin, twin.layers, *twin.layers, *cells]
    if any(attached[id(m)][0] is not None for m in containers) or not _identity(attached[id(twin.between)][0]):
        return None
    found = []
    for cell in cells:
        rules = _cell_rules(cell, lambda child: attached[id(child)][0])
        if rules is None:
            return None
        found.append(rules)
    return found


def _redirect(module: nn.RNNBase) -> Callable[[], None]:
    if _CHILD in module._modules:
        raise ExplanationError(
            f"{type(module).__name__} is already redirected by ExplicitRecurrent (applied twice?)"
        )
    twin = _kept_twin(module)
    previous = module.__dict__.get("forward")  # an instance-level forward set by someone else, kept
    owner = threading.get_ident()
    loaded = False

    def forward(input: Any, hx: Any = None) -> tuple[Tensor, Any]:  # torch's names: module(input=x, hx=h) works
        x = input
        if threading.get_ident() != owner:  # another thread's plain forward pass: the stock computation
            return previous(x, hx) if previous is not None else type(module).forward(module, x, hx)  # type: ignore
        if isinstance(x, PackedSequence):
            raise ExplanationError(
                f"ExplicitRecurrent cannot run {type(module).__name__} on a PackedSequence; pass a padded "
                "tensor (torch.nn.utils.rnn.pad_packed_sequence) and select each sequence's last valid step "
                "yourself"
            )
        nonlocal loaded
        fused = _fused_rules(module, twin, x, hx)
        if fused is not None:
            return fused_recurrent(module, x, hx, fused)
        if not loaded:  # the module's current weights, once per application
            _load_weights(twin, module)
            loaded = True
        return twin(x, hx)  # type: ignore[no-any-return]

    def restore() -> None:
        module._modules.pop(_CHILD, None)
        if previous is None:
            module.__dict__.pop("forward", None)
        else:
            module.__dict__["forward"] = previous

    module.add_module(_CHILD, twin)
    module.forward = forward
    return restore


class ExplicitRecurrent:
    """While applied, every stock ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` runs through an explicit twin.

    Outputs stay equal (up to float rounding); ``apply`` returns the function that restores the stock modules
    exactly. Packed sequences and ``nn.LSTM(proj_size > 0)`` raise :class:`~relprop.errors.ExplanationError`.
    A module explained under LSTM-LRP's rules takes the fused path instead of its cells (module docstring).

    >>> model = nn.Sequential(nn.LSTM(3, 4, batch_first=True))
    >>> undo = ExplicitRecurrent().apply(model)
    >>> [name for name, _ in model.named_children()], hasattr(model[0], "relprop_explicit")
    (['0'], True)
    >>> undo(); hasattr(model[0], "relprop_explicit")
    False
    """

    child_name = _CHILD  # the name of the explicit twin, a child of the stock module while applied

    def apply(self, model: nn.Module) -> Callable[[], None]:
        stock = []
        for name, module in model.named_modules():
            base = next((kind for kind in _STOCK if isinstance(module, kind)), None)
            if base is None:
                continue
            stock.append(module)
            if type(module).forward is not base.forward:
                raise ExplanationError(
                    f"{name or 'the model'} is a {type(module).__name__}, a subclass of nn.{base.__name__} with a "
                    f"forward of its own, which the explicit cells that explain nn.{base.__name__} would replace: "
                    f"hold a plain nn.{base.__name__} in a module and do the rest of that forward around it"
                )
        return apply_all(model, [functools.partial(_redirect, module) for module in stock])
