"""Fused LRP through a stock ``nn.LSTM``: the relevance its explicit cells give under LSTM-LRP, computed with plain
tensor code over all steps, layers and directions.

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
is :func:`~relprop.core.stabilize` with the sum's stabiliser. :class:`FusedLSTM` runs each layer through PyTorch's
own LSTM kernel; with every ``h_t`` known, the gates of all steps (both directions) are two matrix products, and
only ``c_t = f c_{t-1} + i g`` is a loop of one operation per step. Its backward pass runs the recursion above,
both directions at once, four tensor operations per step: no autograd graph, no hooks. The input part
``x_t * (s W_c)`` of all steps is one product after the recursion.

:mod:`relprop.canonizers.recurrent` uses it only where the rules attached to the explicit twin are exactly these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..core import mark_path, stabilize
from ..safety import interruption_point
from .elementwise import Proportional
from .linear import Epsilon

__all__ = ["CellRules", "FusedLSTM", "fused_lstm"]


@dataclass(frozen=True)
class CellRules:
    """The rules of one direction of one layer that the fused pass reproduces."""

    candidate: Epsilon
    cell_sum: Proportional


@dataclass(frozen=True, eq=False)
class _Layer:
    """One layer's weights: the stock ones for its kernel, and stacked over its directions (``D`` = 1 or 2; gate
    blocks i, f, g, o of ``H`` rows each)."""

    flat: list[Tensor]  # the stock kernel's weights of this layer (w_ih, w_hh[, b_ih, b_hh] per direction)
    ih: Tensor  # (D, 4H, features)
    hh_t: Tensor  # (D, H, 4H): W_hh transposed, for h @ W_hh^T
    bias: Tensor | None  # (D, 1, 4H): b_ih + b_hh
    rules: tuple[CellRules, ...]  # one per direction

    @property
    def hidden(self) -> int:
        return self.hh_t.shape[1]

    @property
    def candidate_bias(self) -> Tensor:
        """(D, 1, H): the candidate's bias (the model has one)."""
        assert self.bias is not None
        return self.bias[..., 2 * self.hidden : 3 * self.hidden]

    def candidate(self, weight: Tensor) -> Tensor:
        """The candidate block (rows 2H:3H) of a stacked (D, 4H, ...) weight."""
        return weight[:, 2 * self.hidden : 3 * self.hidden]


@dataclass(frozen=True, eq=False)
class _Record:
    """What the backward pass of one layer needs; (T, D, batch, H) in each direction's processing order."""

    x: Tensor  # (batch, T, features): the layer's input, in time order
    h_previous: Tensor  # h_{t-1}
    c: Tensor  # c_t
    z: Tensor  # the candidate's pre-activation without its bias
    forget: Tensor  # f c_{t-1}
    write: Tensor  # i g


def _layers(module: nn.LSTM, rules: Sequence[CellRules]) -> tuple[_Layer, ...]:
    directions = 2 if module.bidirectional else 1
    per_layer = len(module._flat_weights) // module.num_layers
    layers = []
    for index in range(module.num_layers):
        suffixes = [f"_l{index}", f"_l{index}_reverse"][:directions]
        flat = [cast(Tensor, w).detach() for w in module._flat_weights[index * per_layer : (index + 1) * per_layer]]
        ih, hh = _stacked(module, "weight_ih", suffixes), _stacked(module, "weight_hh", suffixes)
        bias = None
        if module.bias:
            bias = (_stacked(module, "bias_ih", suffixes) + _stacked(module, "bias_hh", suffixes)).unsqueeze(1)
        layers.append(_Layer(flat, ih, hh.transpose(1, 2), bias,
                             tuple(rules[index * directions : (index + 1) * directions])))
    return tuple(layers)


def _stacked(module: nn.LSTM, name: str, suffixes: list[str]) -> Tensor:
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


def _forward_layer(layer: _Layer, x: Tensor, h0: Tensor, c0: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], _Record]:
    """One layer over x (batch, T, features) from (h0, c0) (D, batch, H): the stock kernel's (output, h_n, c_n)
    and what the backward pass needs. With all h_t known, the gates of all steps are two products; only
    ``c_t = f c_{t-1} + i g`` remains a loop."""
    hidden, directions = layer.hidden, len(layer.rules)
    result = torch.lstm(x, (h0, c0), layer.flat, layer.bias is not None, 1, 0.0, False, directions == 2, True)
    h_previous = torch.cat([h0.unsqueeze(0), _directions(result[0], directions)[:-1]])  # (T, D, batch, H)
    batch, steps = x.shape[:2]
    pre = torch.matmul(x.reshape(1, batch * steps, -1), layer.ih.transpose(1, 2))  # x W_ih^T: (D, batch T, 4H)
    pre = _to_steps(pre.view(directions, batch, steps, -1))
    recurrent = torch.bmm(h_previous.transpose(0, 1).reshape(directions, steps * batch, hidden), layer.hh_t)
    pre = pre + recurrent.view(directions, steps, batch, -1).transpose(0, 1)  # + h_{t-1} W_hh^T: (T, D, batch, 4H)
    gates = torch.sigmoid(pre if layer.bias is None else pre + layer.bias)
    z = pre[..., 2 * hidden : 3 * hidden]
    write = gates[..., :hidden] * torch.tanh(z if layer.bias is None else z + layer.candidate_bias)
    forget_gate = gates[..., hidden : 2 * hidden]
    c = torch.empty_like(write)
    state = c0
    for c_t, write_t, forget_t in zip(c.unbind(0), write.unbind(0), forget_gate.unbind(0)):  # views, one call each
        state = torch.addcmul(write_t, forget_t, state, out=c_t)
    forget = forget_gate * torch.cat([c0.unsqueeze(0), c[:-1]])
    return result, _Record(x, h_previous, c, z, forget, write)


def _relevance_layer(
    layer: _Layer, record: _Record, relevance_out: Tensor, relevance_h: Tensor, relevance_c: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Relevance of one layer's input (batch, T, features), h0 and c0 (D, batch, H), from that of its output
    (batch, T, D H) and of its final h and c (D, batch, H)."""
    steps = _directions(relevance_out, len(layer.rules))  # (T, D, batch, H)
    w_hh = layer.candidate(layer.hh_t.transpose(1, 2))  # (D, H, H)
    w_ih = layer.candidate(layer.ih)  # (D, H, features)
    keep, share = [], []  # R(c_{t-1}) = r keep, s = r share
    for d, rules in enumerate(layer.rules):
        z = record.z[:, d]
        if layer.bias is not None and rules.candidate.bias:
            z = z + layer.candidate_bias[d]
        denominator = stabilize(record.c[:, d], rules.cell_sum.stabilizer)
        keep.append(record.forget[:, d] / denominator)
        share.append(record.write[:, d] / denominator / rules.candidate.stabilize(z))
    keep_all, share_all = torch.stack(keep, 1), torch.stack(share, 1)  # (T, D, batch, H)
    s_all = torch.empty_like(share_all)
    out, share_t, keep_t, h_t = s_all.unbind(0), share_all.unbind(0), keep_all.unbind(0), record.h_previous.unbind(0)
    relevance_t = steps.unbind(0)
    r = relevance_t[-1] + relevance_h + relevance_c  # r = R(c_t) + R(h_t) at the last step
    for t in range(len(steps) - 1, 0, -1):
        s = torch.mul(r, share_t[t], out=out[t])
        r = torch.addcmul(relevance_t[t - 1], r, keep_t[t]).addcmul_(torch.bmm(s, w_hh), h_t[t])
    s = torch.mul(r, share_t[0], out=out[0])
    relevance_h, relevance_c = torch.bmm(s, w_hh).mul_(h_t[0]), r * keep_t[0]
    directions, (batch, length) = s_all.shape[1], record.x.shape[:2]
    s_x = torch.bmm(_to_time(s_all).reshape(directions, batch * length, -1), w_ih)  # (D, batch T, features)
    relevance_x = (s_x.view(directions, batch, length, -1) * record.x).sum(0)  # (batch, T, features)
    return relevance_x, relevance_h, relevance_c


class FusedLSTM(torch.autograd.Function):
    """A stock LSTM's forward pass ``(x, h0, c0) -> (output, h_n, c_n)`` (x batch-first, 3-D), whose backward pass
    carries the relevance of its explicit cells under LSTM-LRP (see the module's docstring)."""

    carries_relevance = True  # its backward carries relevance: relprop's engine accepts its outputs

    @staticmethod
    def forward(ctx: Any, layers: tuple[_Layer, ...], x: Tensor, h0: Tensor, c0: Tensor) -> Any:
        directions = len(layers[0].rules)
        records, h_n, c_n = [], [], []
        output = x.detach()
        for index, layer in enumerate(layers):
            slots = slice(index * directions, (index + 1) * directions)
            (output, h, c), record = _forward_layer(layer, output, h0[slots].detach(), c0[slots].detach())
            records.append(record)
            h_n.append(h)
            c_n.append(c)
        ctx.layers, ctx.records = layers, records  # no output of this function: that would be a reference cycle
        return output, torch.cat(h_n), torch.cat(c_n)

    @staticmethod
    def backward(ctx: Any, relevance_out: Tensor, relevance_h: Tensor, relevance_c: Tensor) -> Any:
        layers: tuple[_Layer, ...] = ctx.layers
        directions = len(layers[0].rules)
        h0: list[Tensor] = []
        c0: list[Tensor] = []
        relevance = relevance_out
        for index in range(len(layers) - 1, -1, -1):
            interruption_point()
            slots = slice(index * directions, (index + 1) * directions)
            relevance, h, c = _relevance_layer(layers[index], ctx.records[index], relevance,
                                               relevance_h[slots], relevance_c[slots])
            h0.insert(0, h)
            c0.insert(0, c)
        return None, relevance, torch.cat(h0), torch.cat(c0)


def fused_lstm(
    module: nn.LSTM, x: Tensor, hx: tuple[Tensor, Tensor] | None, rules: Sequence[CellRules]
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``module(x, hx)`` as a stock LSTM returns it, with :class:`FusedLSTM`'s relevance in the backward pass.

    ``rules`` has one entry per layer and direction (stock order). The caller checks the arguments (a padded
    tensor of 2 or 3 dimensions, ``hx`` of the stock shapes); functional-op modes are off inside, so no guard sees
    the tensor code, and the results are on the relevance path.
    """
    with torch._C.DisableTorchFunction():
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0)
            hx = None if hx is None else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        elif not module.batch_first:
            x = x.transpose(0, 1)
        if hx is None:
            zeros = x.new_zeros(module.num_layers * (2 if module.bidirectional else 1), x.shape[0],
                                module.hidden_size)
            hx = (zeros, zeros)
        output, h_n, c_n = FusedLSTM.apply(_layers(module, rules), x, *hx)
        if unbatched:
            output, h_n, c_n = output.squeeze(0), h_n.squeeze(1), c_n.squeeze(1)
        elif not module.batch_first:
            output = output.transpose(0, 1)
    return mark_path(output), (mark_path(h_n), mark_path(c_n))
