"""Fused LRP through stock ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``: the relevance their explicit cells give under
LSTM-LRP (with any of relprop's z-rules on the linear maps), computed with plain tensor code over all steps, layers
and directions.

Under :class:`~relprop.canonizers.ExplicitRecurrent` a stock LSTM runs as explicit cells
(:class:`relprop.models.cells.LSTMCell`), one rule per module. With the rules of ``lstm_epsilon`` (Arras et al.
2017) -- epsilon on the candidate ``z = [x_t, h_{t-1}] W_c^T + b_c``, tanh passing, the products ``f c_{t-1}``,
``i g`` and ``o tanh(c_t)`` signal-take-all (the gates get nothing) and ``c_t = f c_{t-1} + i g`` proportional --
one step backward in time is::

    r              = R(c_t) + R(h_t)                       o * tanh(c_t): tanh(c_t) takes all, tanh passes
    R(c_{t-1})     = f c_{t-1} / stab(c_t) * r             the sum splits in proportion
    s              = i g / stab(c_t) / stab_eps(z) * r     i g takes its share, tanh passes, epsilon divides by z
    R([x_t, h_{t-1}]) = [x_t, h_{t-1}] * (s W_c)

where ``R(h_t)`` collects the relevance of the step's output and of the next step's use of ``h_t``, and ``stab``
is :func:`~relprop.core.stabilize` with the sum's stabiliser. :class:`FusedRecurrent` runs each layer through
PyTorch's own kernel; with every ``h_t`` known, the gates of all steps (both directions) are two matrix products,
and only ``c_t = f c_{t-1} + i g`` is a loop of one operation per step. Its backward pass runs the recursion above,
both directions at once, four tensor operations per step: no autograd graph, no hooks. The input part
``x_t * (s W_c)`` of all steps is one product after the recursion.

The GRU cell (:class:`relprop.models.cells.GRUCell`, ``nn.GRU``'s reset-after form) computes
``h_t = (1 - u) n + u h_{t-1}``, ``n = tanh(pre)``, ``pre = a + g b`` with the candidate maps
``a = x_t W_n^T + b_n`` and ``b = h_{t-1} W_hn^T + b_hn``, reset gate ``g`` and update gate ``u``. With both sums
proportional, the products signal-take-all and epsilon on both maps, from ``r = R(h_t)``::

    q          = (1 - u) n / stab(h_t) / stab(pre) * r
    R(h_{t-1}) = u h_{t-1} / stab(h_t) * r + h_{t-1} * ((q g b / stab_eps(b)) W_hn)
    R(x_t)     = x_t * ((q a / stab_eps(a)) W_n)

The plain RNN cell ``h_t = act(z)``, ``z = [x_t, h_{t-1}] W^T + b``, gives
``R([x_t, h_{t-1}]) = [x_t, h_{t-1}] * ((r / stab_eps(z)) W)``. Neither needs a loop in the forward pass.

Other z-rules on the candidate maps (:data:`Z_RULES`: z+, alpha-beta, gamma, zB, flat, w^2, as ``thesis_lrp`` and
``thesis_dtd`` use them) replace ``x * ((R / stab_eps(z)) W)`` by the rule's own groups and terms
(:meth:`~relprop.rules.ZRule.groups`), each ``x' * ((R m_g / stab(z_g)) W')``; their denominators are computed
for all steps at once, and the recursion runs one direction at a time, one product per term and step.

:mod:`relprop.canonizers.recurrent` uses it only where the rules attached to the explicit twin are exactly these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from ..core import mark_path, stabilize
from ..safety import interruption_point
from .elementwise import Proportional
from .linear import AlphaBeta, Epsilon, Flat, Gamma, WSquare, ZBox, ZPlus, ZRule

__all__ = ["Z_RULES", "CellRules", "GRURules", "RNNRules", "FusedRecurrent", "fused_recurrent"]

# The z-rules the fused pass reproduces: relprop's own, whose relevance is their definition (ZRule.reference);
# epsilon has a faster path of its own
Z_RULES: tuple[type[ZRule], ...] = (Epsilon, ZPlus, AlphaBeta, Gamma, ZBox, Flat, WSquare)


@dataclass(frozen=True)
class CellRules:
    """The rules of one direction of one LSTM layer that the fused pass reproduces."""

    candidate: ZRule
    cell_sum: Proportional


@dataclass(frozen=True)
class GRURules:
    """The rules of one direction of one GRU layer: z-rules on both candidate maps, proportional sums."""

    candidate_input: ZRule
    candidate_state: ZRule
    candidate_sum: Proportional
    state_sum: Proportional


@dataclass(frozen=True)
class RNNRules:
    """The rule of one direction of one RNN layer: a z-rule on its linear map."""

    linear: ZRule


Rules = CellRules | GRURules | RNNRules


@dataclass(frozen=True, eq=False)
class _Layer:
    """One layer's weights: the stock ones for its kernel, and stacked over its directions (``D`` = 1 or 2; ``G``
    gate blocks of ``H`` rows each, in the stock order)."""

    flat: list[Tensor]  # the stock kernel's weights of this layer (w_ih, w_hh[, b_ih, b_hh] per direction)
    ih: Tensor  # (D, G H, features)
    hh_t: Tensor  # (D, H, G H): W_hh transposed, for h @ W_hh^T
    bias_ih: Tensor | None  # (D, 1, G H)
    bias_hh: Tensor | None  # (D, 1, G H)
    rules: tuple[Any, ...]  # one per direction
    candidate: ClassVar[int] = 0  # the gate block of the candidate map

    @property
    def hidden(self) -> int:
        return self.hh_t.shape[1]

    def candidate_weight(self, transposed: Tensor) -> Tensor:
        """(D, H, n): the candidate's rows of a weight given transposed (D, n, G H)."""
        return self.block(transposed, self.candidate).transpose(1, 2)

    @property
    def directions(self) -> int:
        return len(self.rules)

    def block(self, t: Tensor, k: int) -> Tensor:
        """Gate block ``k`` of the last dimension."""
        return t[..., k * self.hidden : (k + 1) * self.hidden]

    def kernel(self, x: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        """The stock kernel on this layer alone: ``(output, *finals)``."""
        raise NotImplementedError

    def forward(self, x: Tensor, states: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Any]:
        """The kernel's result and the record of what :meth:`relevance` needs."""
        raise NotImplementedError

    def relevance(self, record: Any, relevance_out: Tensor, finals: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Relevance of the layer's input and initial states, from that of its output and final states."""
        raise NotImplementedError

    def inputs(self, x: Tensor, h_previous: Tensor) -> tuple[Tensor, Tensor]:
        """``x W_ih^T`` and ``h_{t-1} W_hh^T`` of all steps, (T, D, batch, G H) in processing order, no biases."""
        directions, (batch, steps) = self.directions, x.shape[:2]
        from_x = torch.matmul(x.reshape(1, batch * steps, -1), self.ih.transpose(1, 2))  # (D, batch T, G H)
        from_x = _to_steps(from_x.view(directions, batch, steps, -1))
        from_h = torch.bmm(h_previous.transpose(0, 1).reshape(directions, steps * batch, self.hidden), self.hh_t)
        return from_x, from_h.view(directions, steps, batch, -1).transpose(0, 1)

    def input_relevance(self, x: Tensor, s_all: Tensor, weight: Tensor) -> Tensor:
        """``x * (s W)`` of all steps, summed over the directions: (batch, T, features)."""
        directions, (batch, length) = self.directions, x.shape[:2]
        s_x = torch.bmm(_to_time(s_all).reshape(directions, batch * length, -1), weight)  # (D, batch T, features)
        return (s_x.view(directions, batch, length, -1) * x).sum(0)


def _layers(kind: type[_Layer], module: nn.RNNBase, rules: Sequence[Any]) -> tuple[_Layer, ...]:
    directions = 2 if module.bidirectional else 1
    per_layer = len(module._flat_weights) // module.num_layers
    layers = []
    for index in range(module.num_layers):
        suffixes = [f"_l{index}", f"_l{index}_reverse"][:directions]
        flat = [cast(Tensor, w).detach() for w in module._flat_weights[index * per_layer : (index + 1) * per_layer]]
        ih, hh = _stacked(module, "weight_ih", suffixes), _stacked(module, "weight_hh", suffixes)
        bias_ih = _stacked(module, "bias_ih", suffixes).unsqueeze(1) if module.bias else None
        bias_hh = _stacked(module, "bias_hh", suffixes).unsqueeze(1) if module.bias else None
        layers.append(kind(flat, ih, hh.transpose(1, 2), bias_ih, bias_hh,
                           tuple(rules[index * directions : (index + 1) * directions])))
    return tuple(layers)


def _stacked(module: nn.RNNBase, name: str, suffixes: list[str]) -> Tensor:
    return torch.stack([cast(Tensor, getattr(module, name + suffix)).detach() for suffix in suffixes])


def _to_steps(t: Tensor) -> Tensor:
    """(D, batch, T, n) in time order -> (T, D, batch, n) in each direction's processing order."""
    if t.shape[0] == 2:
        t = torch.stack([t[0], t[1].flip(1)])
    return t.permute(2, 0, 1, 3).contiguous()


def _to_time(t: Tensor) -> Tensor:
    """(T, D, batch, n) in processing order -> (D, batch, T, n) in time order."""
    t = t.permute(1, 2, 0, 3)
    return torch.stack([t[0], t[1].flip(1)]) if t.shape[0] == 2 else t


def _directions(t: Tensor, directions: int) -> Tensor:
    """(batch, T, D H) -> (T, D, batch, H) in processing order."""
    return _to_steps(t.reshape(*t.shape[:2], directions, -1).permute(2, 0, 1, 3))


def _previous(first: Tensor, sequence: Tensor) -> Tensor:
    """The state before each step: ``first`` (D, batch, H), then ``sequence`` (T, D, batch, H) but its last step."""
    return torch.cat([first.unsqueeze(0), sequence[:-1]])


def _recursion(steps: Tensor, finals: Tensor, keep: Tensor, share: Tensor, weight: Tensor,
               h_previous: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Backward in time: ``r_t = R(out_t) + r_{t+1} keep_{t+1} + ((r_{t+1} share_{t+1}) W) h_t``.

    All (T, D, batch, H) in processing order, ``weight`` (D, H, H), ``finals`` the relevance of the last state.
    Returns ``r_t`` of every step, ``r_0 keep_0`` and ``((r_0 share_0) W) h_{-1}`` (the initial states' relevance).
    Four tensor operations per step, both directions at once.
    """
    r_all = torch.empty_like(share)
    out, share_t, keep_t, h_t, relevance_t = (
        r_all.unbind(0), share.unbind(0), keep.unbind(0), h_previous.unbind(0), steps.unbind(0))  # views
    r = torch.add(relevance_t[-1], finals, out=out[-1])
    for t in range(len(steps) - 1, 0, -1):
        recurrent = torch.bmm(r * share_t[t], weight)
        r = torch.addcmul(relevance_t[t - 1], r, keep_t[t], out=out[t - 1]).addcmul_(recurrent, h_t[t])
    return r_all, r * keep_t[0], torch.bmm(r * share_t[0], weight).mul_(h_t[0])


Term = tuple[Tensor, Tensor, Tensor]  # (share, x', W'): R(input) = x' * ((r share) W'), of one direction


def _terms(rule: ZRule, x: Tensor, weight: Tensor, bias: Tensor | None, output: Tensor, scale: Tensor) -> list[Term]:
    """A z-rule on a linear map of all steps of one direction as terms: its relevance is ``sum x' * ((R / z'_g)
    W')`` over its groups and terms (:meth:`~relprop.rules.ZRule.reference`), for ``R = r scale``.

    x (T, batch, n) and output (T, batch, H) in processing order; weight (H, n); bias (H,).
    """
    flat_x, flat_output = x.reshape(-1, x.shape[-1]), output.reshape(-1, output.shape[-1])
    terms = []
    for group in rule.groups(flat_x, weight, bias, flat_output):
        z = sum(term.sign * torch.nn.functional.linear(term.x[:1] if rule.uniform_inputs else term.x, term.weight,
                                                       term.bias) for term in group.terms)
        denominator = rule.stabilize(cast(Tensor, z))  # (T batch, H), or (1, H) for uniform inputs
        share = scale / (denominator if len(denominator) == 1 else denominator.reshape(scale.shape))
        if group.mask is not None:
            share = share * group.mask.reshape(scale.shape)
        terms += [(share, term.x.reshape(x.shape) * (group.coefficient * term.sign), term.weight)
                  for term in group.terms]
    return terms


def _term_recursion(steps: Tensor, finals: Tensor, keep: Tensor | None, terms: list[Term],
                    split: int) -> tuple[Tensor, Tensor | None, Tensor]:
    """:func:`_recursion` for one direction, the state map given as terms whose inputs from ``split`` on are the
    state ``h_{t-1}``. Returns ``r_t`` of every step and the relevance of the initial states (c, h)."""
    parts = [(share.unbind(0), x[..., split:].unbind(0), w[:, split:]) for share, x, w in terms]
    r_all = torch.empty_like(steps)
    out, relevance_t = r_all.unbind(0), steps.unbind(0)
    keep_t = None if keep is None else keep.unbind(0)
    r = torch.add(relevance_t[-1], finals, out=out[-1])
    for t in range(len(steps) - 1, 0, -1):
        following = torch.add(relevance_t[t - 1], 0, out=out[t - 1]) if keep_t is None else \
            torch.addcmul(relevance_t[t - 1], r, keep_t[t], out=out[t - 1])
        for share_t, x_t, weight in parts:
            following.addcmul_(torch.mm(r * share_t[t], weight), x_t[t])
        r = following
    initial_h = sum((torch.mm(r * share_t[0], weight) * x_t[0] for share_t, x_t, weight in parts),
                    torch.zeros_like(r))
    return r_all, None if keep_t is None else r * keep_t[0], initial_h


def _term_inputs(r_all: Tensor, terms: list[Term], split: int) -> Tensor:
    """The relevance of the map's inputs before ``split`` of all steps: (T, batch, split)."""
    return cast(Tensor, sum(x[..., :split] * torch.matmul(r_all * share, w[:, :split]) for share, x, w in terms))


def _step_order(x: Tensor, direction: int) -> Tensor:
    """(batch, T, n) in time order -> (T, batch, n) in the processing order of ``direction``."""
    x = x.transpose(0, 1)
    return x.flip(0) if direction == 1 else x


def _time_sum(per_direction: list[Tensor]) -> Tensor:
    """(T, batch, n) per direction, in processing order -> their sum (batch, T, n) in time order."""
    return cast(Tensor, sum((t.flip(0) if d == 1 else t).transpose(0, 1) for d, t in enumerate(per_direction)))


@dataclass(frozen=True, eq=False)
class _Record:
    """What the backward pass of one layer needs; (T, D, batch, H) in each direction's processing order."""

    x: Tensor  # (batch, T, features): the layer's input, in time order
    h_previous: Tensor  # h_{t-1}
    terms: tuple[Tensor, ...]  # per kind


class _LSTMLayer(_Layer):
    candidate = 2  # blocks i, f, g, o

    def kernel(self, x: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        return tuple(torch.lstm(x, states, self.flat, self.bias_ih is not None, 1, 0.0, False,
                                self.directions == 2, True))

    def forward(self, x: Tensor, states: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], _Record]:
        """With all h_t known (the stock kernel's), the gates of all steps are two products; only
        ``c_t = f c_{t-1} + i g`` remains a loop."""
        h0, c0 = states
        result = self.kernel(x, h0, c0)
        h_previous = _previous(h0, _directions(result[0], self.directions))
        from_x, from_h = self.inputs(x, h_previous)
        pre = from_x + from_h
        summed = None if self.bias_ih is None or self.bias_hh is None else self.bias_ih + self.bias_hh
        gates = torch.sigmoid(pre if summed is None else pre + summed)
        z = self.block(pre, 2)  # without bias
        bias = self.candidate_bias()
        write = self.block(gates, 0) * torch.tanh(z if bias is None else z + bias)
        forget_gate = self.block(gates, 1)
        c = torch.empty_like(write)
        state = c0
        for c_t, write_t, forget_t in zip(c.unbind(0), write.unbind(0), forget_gate.unbind(0)):  # views
            state = torch.addcmul(write_t, forget_t, state, out=c_t)
        forget = forget_gate * _previous(c0, c)
        return result, _Record(x, h_previous, (c, z, forget, write))

    def candidate_bias(self) -> Tensor | None:
        """(D, 1, H): the candidate's bias, b_ih + b_hh, as the explicit cell sums them."""
        if self.bias_ih is None or self.bias_hh is None:
            return None
        return self.block(self.bias_ih + self.bias_hh, 2)

    def relevance(self, record: Any, relevance_out: Tensor, finals: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        if any(type(rules.candidate) is not Epsilon for rules in self.rules):
            return self._any_rule(record, relevance_out, finals)
        c, z_all, forget, write = record.terms
        bias = self.candidate_bias()
        keep, share = [], []  # R(c_{t-1}) = r keep, s = r share
        for d, rules in enumerate(self.rules):
            z = z_all[:, d] if bias is None or not rules.candidate.bias else z_all[:, d] + bias[d]
            denominator = stabilize(c[:, d], rules.cell_sum.stabilizer)
            keep.append(forget[:, d] / denominator)
            share.append(write[:, d] / denominator / rules.candidate.stabilize(z))
        share_all = torch.stack(share, 1)
        steps = _directions(relevance_out, self.directions)
        r_all, relevance_c, relevance_h = _recursion(steps, finals[0] + finals[1], torch.stack(keep, 1), share_all,
                                                     self.candidate_weight(self.hh_t), record.h_previous)
        return self.input_relevance(record.x, r_all * share_all, self.candidate_weight(self.ih.transpose(1, 2))), \
            relevance_h, relevance_c

    def _any_rule(self, record: Any, relevance_out: Tensor, finals: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Any z-rule on the candidate: one direction at a time, the rule's terms over ``[x_t, h_{t-1}]``."""
        c, z_all, forget, write = record.terms
        bias = self.candidate_bias()
        steps = _directions(relevance_out, self.directions)
        w_ih, w_hh = self.candidate_weight(self.ih.transpose(1, 2)), self.candidate_weight(self.hh_t)
        features = w_ih.shape[-1]
        xs, hs, cs = [], [], []
        for d, rules in enumerate(self.rules):
            denominator = stabilize(c[:, d], rules.cell_sum.stabilizer)
            b = None if bias is None else bias[d, 0]
            xh = torch.cat([_step_order(record.x, d), record.h_previous[:, d]], -1)
            terms = _terms(rules.candidate, xh, torch.cat([w_ih[d], w_hh[d]], 1), b,
                           z_all[:, d] if b is None else z_all[:, d] + b, write[:, d] / denominator)
            r_all, c0, h0 = _term_recursion(steps[:, d], finals[0][d] + finals[1][d], forget[:, d] / denominator,
                                            terms, features)
            xs.append(_term_inputs(r_all, terms, features))
            hs.append(h0)
            cs.append(cast(Tensor, c0))
        return _time_sum(xs), torch.stack(hs), torch.stack(cs)


class _GRULayer(_Layer):
    candidate = 2  # blocks r, z, n

    def kernel(self, x: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        return tuple(torch.gru(x, states[0], self.flat, self.bias_ih is not None, 1, 0.0, False,
                               self.directions == 2, True))

    def forward(self, x: Tensor, states: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], _Record]:
        """With all h_t known (the stock kernel's), every term of all steps is a product: no loop."""
        (h0,) = states
        result = self.kernel(x, h0)
        h_previous = _previous(h0, _directions(result[0], self.directions))
        from_x, from_h = self.inputs(x, h_previous)
        if self.bias_ih is not None and self.bias_hh is not None:
            from_x, from_h = from_x + self.bias_ih, from_h + self.bias_hh
        reset_pre = self.block(from_x, 0) + self.block(from_h, 0)
        update_pre = self.block(from_x, 1) + self.block(from_h, 1)
        c_x, c_h = self.block(from_x, 2), self.block(from_h, 2)  # the two candidate maps, biases included
        reset = torch.sigmoid(reset_pre) * c_h
        pre = c_x + reset
        write = torch.sigmoid(-update_pre) * torch.tanh(pre)  # (1 - z) n, as the explicit cell computes 1 - z
        keep = torch.sigmoid(update_pre) * h_previous
        return result, _Record(x, h_previous, (write + keep, pre, c_x, c_h, reset, write, keep))

    def relevance(self, record: Any, relevance_out: Tensor, finals: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        if any(type(r.candidate_input) is not Epsilon or type(r.candidate_state) is not Epsilon for r in self.rules):
            return self._any_rule(record, relevance_out, finals)
        h, pre, c_x, c_h, reset, write, keep = record.terms
        bias_in = None if self.bias_ih is None else self.block(self.bias_ih, 2)
        bias_hn = None if self.bias_hh is None else self.block(self.bias_hh, 2)
        keeps, shares, inputs = [], [], []
        for d, rules in enumerate(self.rules):
            z_x = c_x[:, d] if bias_in is None or rules.candidate_input.bias else c_x[:, d] - bias_in[d]
            z_h = c_h[:, d] if bias_hn is None or rules.candidate_state.bias else c_h[:, d] - bias_hn[d]
            to_pre = write[:, d] / stabilize(h[:, d], rules.state_sum.stabilizer) \
                / stabilize(pre[:, d], rules.candidate_sum.stabilizer)
            keeps.append(keep[:, d] / stabilize(h[:, d], rules.state_sum.stabilizer))
            shares.append(to_pre * reset[:, d] / rules.candidate_state.stabilize(z_h))
            inputs.append(to_pre * c_x[:, d] / rules.candidate_input.stabilize(z_x))
        steps = _directions(relevance_out, self.directions)
        r_all, relevance_keep, relevance_h = _recursion(steps, finals[0], torch.stack(keeps, 1),
                                                        torch.stack(shares, 1), self.candidate_weight(self.hh_t),
                                                        record.h_previous)
        relevance_x = self.input_relevance(record.x, r_all * torch.stack(inputs, 1),
                                           self.candidate_weight(self.ih.transpose(1, 2)))
        return relevance_x, relevance_h + relevance_keep

    def _any_rule(self, record: Any, relevance_out: Tensor, finals: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Any z-rules on the candidate maps: one direction at a time, each rule's terms."""
        h, pre, c_x, c_h, reset, write, keep = record.terms
        bias_in = None if self.bias_ih is None else self.block(self.bias_ih, 2)
        bias_hn = None if self.bias_hh is None else self.block(self.bias_hh, 2)
        steps = _directions(relevance_out, self.directions)
        w_in, w_hn = self.candidate_weight(self.ih.transpose(1, 2)), self.candidate_weight(self.hh_t)
        xs, hs = [], []
        for d, rules in enumerate(self.rules):
            total = stabilize(h[:, d], rules.state_sum.stabilizer)
            to_pre = write[:, d] / total / stabilize(pre[:, d], rules.candidate_sum.stabilizer)
            state = _terms(rules.candidate_state, record.h_previous[:, d], w_hn[d],
                           None if bias_hn is None else bias_hn[d, 0], c_h[:, d], to_pre * reset[:, d])
            r_all, kept, h0 = _term_recursion(steps[:, d], finals[0][d], keep[:, d] / total, state, 0)
            inputs = _terms(rules.candidate_input, _step_order(record.x, d), w_in[d],
                            None if bias_in is None else bias_in[d, 0], c_x[:, d], to_pre * c_x[:, d])
            xs.append(_term_inputs(r_all, inputs, w_in.shape[-1]))
            hs.append(h0 + cast(Tensor, kept))
        return _time_sum(xs), torch.stack(hs)


class _RNNLayer(_Layer):
    relu: ClassVar[bool] = False

    def kernel(self, x: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        run = torch.rnn_relu if self.relu else torch.rnn_tanh
        return tuple(run(x, states[0], self.flat, self.bias_ih is not None, 1, 0.0, False, self.directions == 2,
                         True))

    def forward(self, x: Tensor, states: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], _Record]:
        (h0,) = states
        result = self.kernel(x, h0)
        h_previous = _previous(h0, _directions(result[0], self.directions))
        from_x, from_h = self.inputs(x, h_previous)
        return result, _Record(x, h_previous, (from_x + from_h,))

    def relevance(self, record: Any, relevance_out: Tensor, finals: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        (z_all,) = record.terms  # without bias
        bias = None if self.bias_ih is None or self.bias_hh is None else self.bias_ih + self.bias_hh
        if any(type(rules.linear) is not Epsilon for rules in self.rules):
            return self._any_rule(record, relevance_out, finals[0], z_all, bias)
        share = torch.stack([rules.linear.stabilize(z_all[:, d] if bias is None or not rules.linear.bias
                                                    else z_all[:, d] + bias[d]).reciprocal()
                             for d, rules in enumerate(self.rules)], 1)
        steps = _directions(relevance_out, self.directions)
        r_all, _, relevance_h = _recursion(steps, finals[0], torch.zeros_like(share), share,
                                           self.candidate_weight(self.hh_t), record.h_previous)
        relevance_x = self.input_relevance(record.x, r_all * share, self.candidate_weight(self.ih.transpose(1, 2)))
        return relevance_x, relevance_h

    def _any_rule(self, record: Any, relevance_out: Tensor, final: Tensor, z_all: Tensor,
                  bias: Tensor | None) -> tuple[Tensor, ...]:
        """Any z-rule on the linear map: one direction at a time, the rule's terms over ``[x_t, h_{t-1}]``."""
        steps = _directions(relevance_out, self.directions)
        features = self.ih.shape[-1]
        xs, hs = [], []
        for d, rules in enumerate(self.rules):
            b = None if bias is None else bias[d, 0]
            xh = torch.cat([_step_order(record.x, d), record.h_previous[:, d]], -1)
            z = z_all[:, d] if b is None else z_all[:, d] + b
            terms = _terms(rules.linear, xh, torch.cat([self.ih[d], self.hh_t[d].t()], 1), b, z, torch.ones_like(z))
            r_all, _, h0 = _term_recursion(steps[:, d], final[d], None, terms, features)
            xs.append(_term_inputs(r_all, terms, features))
            hs.append(h0)
        return _time_sum(xs), torch.stack(hs)


class _ReLURNNLayer(_RNNLayer):
    relu = True


_KINDS: dict[str, type[_Layer]] = {"LSTM": _LSTMLayer, "GRU": _GRULayer, "RNN_TANH": _RNNLayer,
                                   "RNN_RELU": _ReLURNNLayer}


class FusedRecurrent(torch.autograd.Function):
    """A stock recurrent module's forward pass ``(x, *states) -> (output, *finals)`` (x batch-first, 3-D; states
    (h0, c0) or (h0,)), whose backward pass carries the relevance of its explicit cells under LSTM-LRP (see the
    module's docstring)."""

    carries_relevance = True  # its backward carries relevance: relprop's engine accepts its outputs

    @staticmethod
    def forward(ctx: Any, layers: tuple[_Layer, ...], x: Tensor, *states: Tensor) -> Any:
        directions = layers[0].directions
        records, finals = [], []
        output = x.detach()
        for index, layer in enumerate(layers):
            slots = slice(index * directions, (index + 1) * directions)
            (output, *last), record = layer.forward(output, tuple(s[slots].detach() for s in states))
            records.append(record)
            finals.append(last)
        ctx.layers, ctx.records = layers, records  # no output of this function: that would be a reference cycle
        return (output, *(torch.cat(parts) for parts in zip(*finals, strict=True)))

    @staticmethod
    def backward(ctx: Any, relevance_out: Tensor, *relevance_finals: Tensor) -> Any:
        layers: tuple[_Layer, ...] = ctx.layers
        directions = layers[0].directions
        initial: list[tuple[Tensor, ...]] = []
        relevance = relevance_out
        for index in range(len(layers) - 1, -1, -1):
            interruption_point()
            slots = slice(index * directions, (index + 1) * directions)
            relevance, *states = layers[index].relevance(ctx.records[index], relevance,
                                                         tuple(r[slots] for r in relevance_finals))
            initial.insert(0, tuple(states))
        return (None, relevance, *(torch.cat(parts) for parts in zip(*initial, strict=True)))


_fused_apply = FusedRecurrent.apply  # torch's, bound once (the explained forward pass's would hand it back)


def fused_recurrent(module: nn.RNNBase, x: Tensor, hx: Any, rules: Sequence[Rules]) -> tuple[Tensor, Any]:
    """``module(x, hx)`` as the stock module returns it, with :class:`FusedRecurrent`'s relevance in the backward
    pass.

    ``rules`` has one entry per layer and direction (stock order), of the module's kind (:class:`CellRules` for an
    LSTM, :class:`GRURules`, :class:`RNNRules`). The caller checks the arguments (a padded tensor of 2 or 3
    dimensions, ``hx`` of the stock shapes); functional-op modes are off inside, so no guard sees the tensor code,
    and the results are on the relevance path.
    """
    lstm = isinstance(module, nn.LSTM)
    with torch._C.DisableTorchFunction():
        unbatched = x.dim() == 2
        states: tuple[Tensor, ...] = () if hx is None else tuple(hx) if lstm else (hx,)
        if unbatched:
            x, states = x.unsqueeze(0), tuple(s.unsqueeze(1) for s in states)
        elif not module.batch_first:
            x = x.transpose(0, 1)
        if hx is None:
            zeros = x.new_zeros(module.num_layers * (2 if module.bidirectional else 1), x.shape[0],
                                module.hidden_size)
            states = (zeros, zeros) if lstm else (zeros,)
        output, *finals = _fused_apply(_layers(_KINDS[module.mode], module, rules), x, *states)
        if unbatched:
            output, finals = output.squeeze(0), [f.squeeze(1) for f in finals]
        elif not module.batch_first:
            output = output.transpose(0, 1)
    marked = [mark_path(f) for f in finals]
    return mark_path(output), (tuple(marked) if lstm else marked[0])
