"""Run explicit cells over a sequence (stacked, bidirectional, batch_first) with the interface of nn.LSTM."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from ..errors import ExplanationError
from .cells import CELLS, new_sequence

__all__ = ["Recurrent"]

State = tuple[Tensor, ...]
Final = Tensor | tuple[Tensor, ...]


class Recurrent(nn.Module):
    """A stack of explicit cells run over (batch, time, features) (``batch_first``) or (time, batch, ...).

    ``cell`` is a name from :data:`relprop.models.cells.CELLS` (``"rnn"``, ``"lstm"``, ``"rlstm"``, ``"gru"``,
    ``"rgru"``) or a cell class ``cls(input_size, hidden_size, **cell_options)``. With ``bidirectional`` each
    layer also runs a second cell of the same class over the reversed sequence and concatenates both outputs.
    ``layer_dropout`` is ordinary dropout between layers (``nn.LSTM``'s ``dropout``); ``cell_options`` go to
    every cell (e.g. ``dropout=0.2, stationary=True`` for stationary dropout on each cell's input and output).
    Returns ``(output, final)`` like the stock modules: ``output`` (batch, time, directions * hidden) and
    ``final`` (layers * directions, batch, hidden), a tuple ``(h, c)`` for cells with two state tensors.
    The initial state is zero unless ``state`` is given (same layout as ``final``).

    >>> lstm = Recurrent("lstm", 3, 5, num_layers=2, bidirectional=True)
    >>> output, (h, c) = lstm(torch.randn(2, 7, 3))
    >>> output.shape, h.shape
    (torch.Size([2, 7, 10]), torch.Size([4, 2, 5]))
    """

    def __init__(
        self,
        cell: str | type[nn.Module],
        input_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        batch_first: bool = True,
        layer_dropout: float = 0.0,
        **cell_options: Any,
    ) -> None:
        super().__init__()
        if isinstance(cell, str):
            if cell not in CELLS:
                raise ValueError(f"unknown cell '{cell}'; valid cells: {', '.join(sorted(CELLS))}")
            cell = CELLS[cell]
        if num_layers < 1:
            raise ValueError(f"Recurrent needs num_layers >= 1, got {num_layers}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bidirectional, self.batch_first = bidirectional, batch_first
        directions = 2 if bidirectional else 1
        self.layers = nn.ModuleList(
            nn.ModuleList(
                cell(input_size if layer == 0 else directions * hidden_size, hidden_size, **cell_options)
                for _ in range(directions)
            )
            for layer in range(num_layers)
        )
        self.between = nn.Dropout(layer_dropout)

    def forward(self, x: Tensor, state: Final | None = None) -> tuple[Tensor, Final]:
        unbatched = x.dim() == 2
        if unbatched:  # (time, features) -> (batch=1, time, features)
            x = x.unsqueeze(0)
            state = None if state is None else _map(state, lambda s: s.unsqueeze(1))
        elif x.dim() != 3:
            raise ExplanationError(
                f"Recurrent expects (batch, time, features) or (time, features), got shape {tuple(x.shape)}"
            )
        elif not self.batch_first:
            x = x.transpose(0, 1)  # (time, batch, features) -> (batch, time, features)
        if x.shape[-1] != self.input_size:
            raise ExplanationError(
                f"Recurrent expects {self.input_size} input features, got shape {tuple(x.shape)}"
            )
        new_sequence(self)
        initial = None if state is None else (state if isinstance(state, tuple) else (state,))
        finals: list[State] = []
        for index, cells in enumerate(self.layers):
            outputs = []
            for direction, cell in enumerate(cast(nn.ModuleList, cells)):
                slot = index * (2 if self.bidirectional else 1) + direction
                if initial is None:
                    start = cell.initial_state(x[:, 0])  # type: ignore[operator]
                else:
                    start = tuple(s[slot] for s in initial)  # (batch, hidden) each
                output, last = _run(cell, x, start, reverse=direction == 1)
                outputs.append(output)
                finals.append(last)
            x = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]  # (batch, time, dirs * hidden)
            if index < len(self.layers) - 1:
                x = self.between(x)
        # each final state: (layers * directions, batch, hidden)
        final = tuple(torch.stack(parts) for parts in zip(*finals, strict=True))
        if unbatched:
            return x.squeeze(0), _map(_single(final), lambda s: s.squeeze(1))
        output = x if self.batch_first else x.transpose(0, 1)
        return output, _single(final)

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, num_layers={self.num_layers}, "
            f"bidirectional={self.bidirectional}, batch_first={self.batch_first}"
        )


def _run(cell: nn.Module, x: Tensor, state: State, reverse: bool) -> tuple[Tensor, State]:
    """Run ``cell`` over x (batch, time, features) forward or backward in time; outputs stay in time order."""
    steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    inputs = x.unbind(1)  # one backward node for all steps (indexing would zero-fill a full gradient per step)
    outputs: list[Tensor] = list(inputs)
    for t in steps:
        outputs[t], state = cell(inputs[t], state)
    return torch.stack(outputs, dim=1), state  # (batch, time, hidden)


def _single(final: tuple[Tensor, ...]) -> Final:
    return final[0] if len(final) == 1 else final


def _map(state: Final, function: Any) -> Final:
    return tuple(function(s) for s in state) if isinstance(state, tuple) else function(state)
