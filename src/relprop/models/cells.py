"""Explicit recurrent cells: every operation is a named sub-module, so LRP rules attach by module type.

A cell maps one step ``(x_t, state) -> (output_t, state')``; :class:`relprop.models.recurrent.Recurrent` runs
it over a sequence. Linear maps are ``nn.Linear`` (any z-rule), products are
:class:`~relprop.layers.GatedProduct` ``(gate, signal)`` (signal-take-all), sums are
:class:`~relprop.layers.Sum` (proportional) and activations are ``nn.Sigmoid`` / ``nn.Tanh`` / ``nn.ReLU``
modules (pass). During training they are plain products and sums.

Shapes: ``x_t`` (batch, input_size); every state tensor (batch, hidden_size).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..layers import GatedProduct, Sum

__all__ = [
    "CellOptions",
    "StationaryDropout",
    "ComplementSigmoid",
    "new_sequence",
    "RNNCell",
    "LSTMCell",
    "RLSTMCell",
    "GRUCell",
    "RGRUCell",
    "CELLS",
]

State = tuple[Tensor, ...]


class StationaryDropout(nn.Dropout):
    """Dropout with one Bernoulli mask per sequence, drawn at the first step and reused at every later step.

    Gal & Ghahramani (2016) "variational" dropout, the thesis's "stationary dropout". ``stationary=False``
    gives ordinary dropout (a new mask at every call). The mask lives until :func:`new_sequence` clears it,
    which :class:`~relprop.models.recurrent.Recurrent` and the thesis models do at the start of every forward
    pass. In eval mode it is the identity (and, as an ``nn.Dropout``, a routing module for LRP).

    >>> drop = StationaryDropout(0.5).train()
    >>> a, b = drop(torch.ones(2, 4)), drop(torch.ones(2, 4))
    >>> torch.equal(a, b)
    True
    """

    def __init__(self, p: float = 0.0, stationary: bool = True) -> None:
        super().__init__(p)
        self.stationary = stationary
        self._mask: Tensor | None = None

    def reset(self) -> None:
        """Forget the mask: the next call in training mode draws a new one."""
        self._mask = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if not self.stationary:
            return super().forward(x)
        if self._mask is None or self._mask.shape != x.shape or self._mask.device != x.device:
            keep = 1.0 - self.p
            self._mask = torch.bernoulli(torch.full_like(x, keep)) / keep
        return x * self._mask.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, stationary={self.stationary}"


def new_sequence(module: nn.Module) -> None:
    """Clear the masks of every :class:`StationaryDropout` in ``module`` (once per new batch of sequences)."""
    for child in module.modules():
        if isinstance(child, StationaryDropout):
            child.reset()


class ComplementSigmoid(nn.Sigmoid):
    """``1 - sigmoid(x) = sigmoid(-x)``: the complementary gate of a GRU as an activation module.

    A subclass of ``nn.Sigmoid`` so that every preset covers it (a gate gets no relevance anyway).

    >>> ComplementSigmoid()(torch.tensor([0.0]))
    tensor([0.5000])
    """

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(torch.neg(x))


def _activation(name: str) -> nn.Module:
    if name == "tanh":
        return nn.Tanh()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation '{name}'; use 'tanh' or 'relu'")


@dataclass(frozen=True)
class CellOptions:
    """How an explicit cell behaves; a cell refuses a field that does not apply to it.

    ``bias`` on the gates (and on the candidate unless ``candidate_bias`` says otherwise); ``activation`` of the
    RNN's state or of the LSTM's / GRU's candidate ("tanh" or "relu"); ``output_tanh`` (LSTM): tanh on the cell
    state before the output gate; ``reset_after`` (GRU): the reset gate after the state map (``nn.GRU``) or before
    it (the thesis's rgru); ``dropout`` on ``x_t`` and ``h_t``, ``stationary`` for one mask per sequence;
    ``gate_dropout`` (LSTM, GRU): ordinary dropout on the gates after their sigmoid (the thesis's R-LSTM and
    R-GRU); ``candidate_dropout`` (LSTM, GRU): ordinary dropout on the candidate after its activation (the
    thesis's R-GRU). All dropout is the identity in eval mode.

    >>> LSTMCell(3, 4, CellOptions(activation="relu", output_tanh=False)).candidate_activation
    ReLU()
    """

    bias: bool = True
    candidate_bias: bool | None = None
    activation: str = "tanh"
    output_tanh: bool = True
    reset_after: bool = True
    dropout: float = 0.0
    stationary: bool = True
    gate_dropout: float = 0.0
    candidate_dropout: float = 0.0

    @property
    def candidate_has_bias(self) -> bool:
        return self.bias if self.candidate_bias is None else self.candidate_bias


class _Cell(nn.Module):
    """Shared parts: options, sizes, zero initial state, input and output dropout.

    A cell takes ``(input_size, hidden_size, options=None, **changes)``: ``options`` (default: the cell's
    :attr:`defaults`) with ``changes`` applied field by field, e.g. ``LSTMCell(3, 4, dropout=0.2)``.
    """

    state_size = 1
    defaults: ClassVar[CellOptions] = CellOptions()
    fixed: ClassVar[tuple[str, ...]] = ()  # fields of CellOptions that do not apply to this cell

    def __init__(self, input_size: int, hidden_size: int, options: CellOptions | None = None, **changes: Any) -> None:
        super().__init__()
        try:
            self.options = dataclasses.replace(options or self.defaults, **changes)
        except TypeError:
            valid = [f.name for f in dataclasses.fields(CellOptions)]
            raise ValueError(f"{type(self).__name__}: unknown options {sorted(changes)}; valid: {valid}") from None
        misplaced = [name for name in self.fixed
                     if getattr(self.options, name) != getattr(CellOptions(), name)]
        if misplaced:
            raise ValueError(f"{type(self).__name__} has no option {misplaced}: it applies to other cells")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.input_dropout = StationaryDropout(self.options.dropout, self.options.stationary)
        self.output_dropout = StationaryDropout(self.options.dropout, self.options.stationary)

    def initial_state(self, x: Tensor) -> State:
        """Zero state for a batch ``x`` (batch, input_size): ``state_size`` tensors (batch, hidden_size)."""
        zero = x.new_zeros(x.shape[0], self.hidden_size)
        return (zero,) * self.state_size


class RNNCell(_Cell):
    """Vanilla RNN: ``h_t = act([x_t, h_{t-1}] W^T + b)`` with ``act`` tanh or ReLU (as ``nn.RNN``).

    >>> cell = RNNCell(3, 4, activation="relu")
    >>> h, (state,) = cell(torch.ones(2, 3), cell.initial_state(torch.ones(2, 3)))
    >>> h.shape
    torch.Size([2, 4])
    """

    fixed = ("candidate_bias", "output_tanh", "reset_after", "gate_dropout", "candidate_dropout")

    def __init__(self, input_size: int, hidden_size: int, options: CellOptions | None = None, **changes: Any) -> None:
        super().__init__(input_size, hidden_size, options, **changes)
        self.linear = nn.Linear(input_size + hidden_size, hidden_size, bias=self.options.bias)
        self.activation = _activation(self.options.activation)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        (h,) = state
        xh = torch.cat([self.input_dropout(x), h], dim=-1)  # (batch, input + hidden)
        h = self.output_dropout(self.activation(self.linear(xh)))
        return h, (h,)


class LSTMCell(_Cell):
    """LSTM (Hochreiter & Schmidhuber 1997) as ``nn.LSTM`` computes it, with state ``(h, c)``::

        i, f, o = sigmoid([x_t, h_{t-1}] W_g^T + b_g)      (self.gates, self.gate_activation)
        g = tanh([x_t, h_{t-1}] W_c^T + b_c)               (self.candidate, self.candidate_activation)
        c_t = f * c_{t-1} + i * g                          (self.forget, self.write, self.cell_sum)
        h_t = o * tanh(c_t)                                (self.cell_activation, self.emit)

    Options (:class:`CellOptions`): ``activation="relu"`` with ``output_tanh=False`` is the R-LSTM
    (:class:`RLSTMCell`); ``bias`` applies to the gates, ``candidate_bias`` (default: ``bias``) to the candidate;
    ``gate_dropout`` is ordinary dropout on the three gates, ``candidate_dropout`` on ``g``; ``dropout`` acts on
    ``x_t`` and ``h_t``.
    """

    state_size = 2
    fixed = ("reset_after",)

    def __init__(self, input_size: int, hidden_size: int, options: CellOptions | None = None, **changes: Any) -> None:
        super().__init__(input_size, hidden_size, options, **changes)
        both, opts = input_size + hidden_size, self.options
        # the candidate is registered first: it is the map that carries relevance from the input
        self.candidate = nn.Linear(both, hidden_size, bias=opts.candidate_has_bias)
        self.candidate_activation = _activation(opts.activation)
        self.candidate_dropout = nn.Dropout(opts.candidate_dropout)
        self.gates = nn.Linear(both, 3 * hidden_size, bias=opts.bias)  # rows: input, forget, output gate
        self.gate_activation = nn.Sigmoid()
        self.gate_dropout = nn.Dropout(opts.gate_dropout)
        self.forget = GatedProduct()
        self.write = GatedProduct()
        self.cell_sum = Sum()
        self.cell_activation = nn.Tanh() if opts.output_tanh else nn.Identity()
        self.emit = GatedProduct()

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        xh = torch.cat([self.input_dropout(x), h], dim=-1)  # (batch, input + hidden)
        gates = self.gate_dropout(self.gate_activation(self.gates(xh)))  # (batch, 3 * hidden)
        i, f, o = gates.chunk(3, dim=-1)  # 3 x (batch, hidden)
        g = self.candidate_dropout(self.candidate_activation(self.candidate(xh)))
        c = self.cell_sum(self.forget(f, c), self.write(i, g))
        h = self.output_dropout(self.emit(o, self.cell_activation(c)))
        return h, (h, c)


class RLSTMCell(LSTMCell):
    """R-LSTM of the thesis (Chormai 2018): ReLU candidate without bias, no tanh on the cell output.

    ``c^ = relu([x_t, h_{t-1}] W_c)``, ``c_t = f * c_{t-1} + i * c^``, ``h_t = o * c_t``; gates keep biases.
    """

    defaults = CellOptions(activation="relu", output_tanh=False, candidate_bias=False)


class GRUCell(_Cell):
    """GRU (Cho et al. 2014) as ``nn.GRU`` computes it::

        r, z = sigmoid([x_t, h_{t-1}] W_g^T + b_g)                      (self.gates, self.gate_activation)
        n = tanh(x_t W_x^T + b_x + r * (h_{t-1} W_h^T + b_h))           reset_after=True (nn.GRU)
        n = act([x_t, r * h_{t-1}] W_c^T + b_c)                         reset_after=False (thesis rgru)
        h_t = (1 - z) * n + z * h_{t-1}                    (self.write, self.keep, self.state_sum)

    ``1 - z`` comes from :class:`ComplementSigmoid` on the same pre-activation. Options (:class:`CellOptions`):
    ``bias`` applies to the gates, ``candidate_bias`` (default: ``bias``) to the candidate maps; ``dropout`` acts
    on ``x_t`` and ``h_t``, ``candidate_dropout`` on ``n``. ``gate_dropout`` drops out ``r`` and the write gate
    ``1 - z`` (the thesis's "input gate"), and during training the keep gate is one minus the dropped-out write
    gate, as in the thesis's R-GRU: where the write gate is dropped the step keeps ``h_{t-1}`` whole, elsewhere the
    keep gate is ``1 - (1 - z) / keep_prob``, which can be negative. In eval mode every dropout is the identity and
    ``z`` is the sigmoid again, so explanations see the same modules with or without these options.
    """

    fixed = ("output_tanh",)

    def __init__(self, input_size: int, hidden_size: int, options: CellOptions | None = None, **changes: Any) -> None:
        super().__init__(input_size, hidden_size, options, **changes)
        opts = self.options
        self.reset_after = opts.reset_after
        cbias = opts.candidate_has_bias
        if opts.reset_after:
            self.candidate_input = nn.Linear(input_size, hidden_size, bias=cbias)
            self.candidate_state = nn.Linear(hidden_size, hidden_size, bias=cbias)
            self.candidate_sum = Sum()
        else:
            self.candidate = nn.Linear(input_size + hidden_size, hidden_size, bias=cbias)
        self.reset = GatedProduct()
        self.candidate_activation = _activation(opts.activation)
        self.candidate_dropout = nn.Dropout(opts.candidate_dropout)
        self.gates = nn.Linear(input_size + hidden_size, 2 * hidden_size, bias=opts.bias)  # rows: reset, update
        self.gate_activation = nn.Sigmoid()
        self.gate_complement = ComplementSigmoid()
        self.gate_dropout = nn.Dropout(opts.gate_dropout)
        self.write = GatedProduct()
        self.keep = GatedProduct()
        self.state_sum = Sum()

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        (h,) = state
        x = self.input_dropout(x)
        xh = torch.cat([x, h], dim=-1)  # (batch, input + hidden)
        reset_pre, update_pre = self.gates(xh).chunk(2, dim=-1)  # 2 x (batch, hidden)
        r = self.gate_dropout(self.gate_activation(reset_pre))
        z_complement = self.gate_dropout(self.gate_complement(update_pre))  # the write gate 1 - z
        if self.training and self.gate_dropout.p > 0:
            z = torch.sub(1.0, z_complement)  # the keep gate: one minus the dropped-out write gate
        else:
            z = self.gate_activation(update_pre)
        if self.reset_after:
            pre = self.candidate_sum(self.candidate_input(x), self.reset(r, self.candidate_state(h)))
        else:
            pre = self.candidate(
                torch.cat([x, self.reset(r, h)], dim=-1)
            )  # (batch, input + hidden) -> hidden
        n = self.candidate_dropout(self.candidate_activation(pre))
        h = self.output_dropout(self.state_sum(self.write(z_complement, n), self.keep(z, h)))
        return h, (h,)


class RGRUCell(GRUCell):
    """ReLU GRU of the thesis ("rgru"): reset gate before the map, ReLU candidate without bias.

    ``n = relu([x_t, r * h_{t-1}] W_c)``, ``h_t = (1 - z) * n + z * h_{t-1}``; the gates keep biases. The thesis
    writes it with an input gate ``i = 1 - z``: ``h_t = i * n + (1 - i) * h_{t-1}``. Its dropout (on ``x_t``,
    ``r``, ``i``, ``n`` and ``h_t``) is set by :class:`~relprop.models.rgru.RGRU`, not by these defaults.
    """

    defaults = CellOptions(activation="relu", reset_after=False, candidate_bias=False)


CELLS: dict[str, type[nn.Module]] = {
    "rnn": RNNCell,
    "lstm": LSTMCell,
    "rlstm": RLSTMCell,
    "gru": GRUCell,
    "rgru": RGRUCell,
}
