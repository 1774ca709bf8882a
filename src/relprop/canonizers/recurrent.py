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
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..errors import ExplanationError
from ..models.cells import GRUCell, LSTMCell, RNNCell
from ..models.recurrent import Recurrent
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
    cell, options = _cell_of(module)
    weight = cast(Tensor, module.weight_ih_l0)
    twin = Recurrent(
        cell,
        module.input_size,
        module.hidden_size,
        num_layers=module.num_layers,
        bidirectional=module.bidirectional,
        batch_first=module.batch_first,
        layer_dropout=module.dropout,
        **options,
    ).to(device=weight.device, dtype=weight.dtype)
    for layer, cells in enumerate(twin.layers):
        for direction, explicit in enumerate(cast(nn.ModuleList, cells)):
            _copy_weights(explicit, module, f"_l{layer}" + ("_reverse" if direction else ""))
    return twin.train(module.training)


def _redirect(module: nn.RNNBase) -> Callable[[], None]:
    if _CHILD in module._modules:
        raise ExplanationError(
            f"{type(module).__name__} is already redirected by ExplicitRecurrent (applied twice?)"
        )
    twin = explicit_twin(module)
    previous = module.__dict__.get("forward")  # an instance-level forward set by someone else, kept
    owner = threading.get_ident()

    def forward(x: Any, hx: Any = None) -> tuple[Tensor, Any]:
        if threading.get_ident() != owner:  # another thread's plain forward pass: the stock computation
            return previous(x, hx) if previous is not None else type(module).forward(module, x, hx)  # type: ignore
        if isinstance(x, PackedSequence):
            raise ExplanationError(
                f"ExplicitRecurrent cannot run {type(module).__name__} on a PackedSequence; pass a padded "
                "tensor (torch.nn.utils.rnn.pad_packed_sequence) and select each sequence's last valid step "
                "yourself"
            )
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

    >>> model = nn.Sequential(nn.LSTM(3, 4, batch_first=True))
    >>> undo = ExplicitRecurrent().apply(model)
    >>> [name for name, _ in model.named_children()], hasattr(model[0], "relprop_explicit")
    (['0'], True)
    >>> undo(); hasattr(model[0], "relprop_explicit")
    False
    """

    def apply(self, model: nn.Module) -> Callable[[], None]:
        stock = [m for m in model.modules() if isinstance(m, _STOCK)]
        return apply_all(model, [functools.partial(_redirect, module) for module in stock])
