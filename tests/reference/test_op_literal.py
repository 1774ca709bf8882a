"""relprop's rules at functional-op sites against literal twins (tests/reference/op_literal.py) in float64.

Every model below computes its forward with FUNCTIONAL operations (``x + y``, ``x.mean(2)``, ``F.avg_pool2d``,
``x * torch.sigmoid(g)``, ``F.layer_norm``, ``torch.cat`` ...) between a few Linear/Conv layers, and has a
``literal`` method: the same network evaluated with explicit matrices and the rules' formulas, relevance starting
at the target logit. ``relprop.explain(..., method="lrp", rule_map=...)`` must agree with it to 1e-12 (max |diff| /
max |R|). The stabilizers differ on purpose (z-rules EPS, RuleMap STAB, Uniform UNI) so a rule that took the wrong
one would show. The bias-free variants check conservation: with every epsilon 1e-12 the input relevance sums to the
target logit (relative 1e-9). Then the refusals (ExplanationError): products that no product rule explains, and
unknown ops (naming the op and the line of this file that called it). A bare in-place op whose result is dropped
(``h.relu_()``, ``h[:, 0] = y``) has its twin too: the model goes on with the tensor it holds. The last three cases
were engine bugs when these tests were written: a gate reshaped after its sigmoid (was refused), a batch norm after
a Linear on a sequence (was merged on the wrong axis) and an in-place op on a view (its base went on unchanged).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import literal
import op_literal
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relprop
from relprop import ops, rules
from relprop.composites import LINEAR_TYPES, RuleMap

_TIMM = importlib.util.find_spec("timm") is not None  # library gate modules (timm's Sigmoid, HardSigmoid)
TOLERANCE = 1e-12
EPS = 0.01  # epsilon of the z-rules on Linear/Conv layers
STAB = 0.05  # the RuleMap stabilizer: Proportional, DetachedNorm and the Epsilon of a batch norm's diagonal map
UNI = 0.03  # Uniform's stabilizer
TINY = 1e-12  # every epsilon in the conservation checks
BATCH = 3
TARGET = torch.tensor([0, 1, 2])

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Setting:
    """The rules of one run: a z-rule for Linear/Conv layers, the RuleMap stabilizer and optionally a product rule."""

    linear: Any
    stabilizer: float
    mul: Any = None
    div: Any = None

    def rule_map(self) -> RuleMap:
        entries: list[tuple[Any, Any]] = [(LINEAR_TYPES, self.linear)]
        if self.mul is not None:
            entries.append((ops.MUL, self.mul))
        if self.div is not None:
            entries.append((ops.DIV, self.div))
        return RuleMap(entries, stabilizer=self.stabilizer)


def make_setting(linear: str = "epsilon", mul: str | None = None, tiny: bool = False) -> Setting:
    eps = TINY if tiny else EPS
    stabilizer = TINY if tiny else 1e-6
    z_rules = {
        "epsilon": rules.Epsilon(epsilon=eps),
        "zplus": rules.ZPlus(stabilizer),
        "gamma": rules.Gamma(stabilizer, gamma=0.25),
        "alphabeta": rules.AlphaBeta(stabilizer, alpha=2.0, beta=1.0),
    }
    product = None if mul is None else rules.Uniform(TINY if tiny else UNI)
    return Setting(z_rules[linear], TINY if tiny else STAB, product)


# ------------------------------------------------------------------------------------------------ twin helpers
def _p(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()


def lin(layer: nn.Linear, x: Tensor) -> Tensor:
    """``x W^T + b`` written out."""
    out = x @ layer.weight.detach().T
    return out if layer.bias is None else out + layer.bias.detach()


def relu(t: Tensor) -> Tensor:
    return torch.where(t > 0, t, torch.zeros_like(t))


def sigmoid(t: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-t))


def hardsigmoid(t: Tensor) -> Tensor:
    return torch.clamp(t / 6.0 + 0.5, 0.0, 1.0)


def z_rule(rule: Any, x: Tensor, weight: Tensor, bias: Tensor | None, relevance: Tensor) -> Tensor:
    """The literal z-rule (tests/reference/literal.py) of a dense layer (out, in) on flat x (batch, in)."""
    bias = bias if rule.bias else None
    if isinstance(rule, rules.Epsilon):
        return literal.epsilon(x, weight, bias, relevance, rule.epsilon)
    if isinstance(rule, rules.ZPlus):
        return literal.zplus(x, weight, bias, relevance, rule.stabilizer)
    if isinstance(rule, rules.AlphaBeta):
        return literal.alpha_beta(x, weight, bias, relevance, rule.alpha, rule.beta, rule.stabilizer)
    if isinstance(rule, rules.Gamma):
        return literal.gamma(x, weight, bias, relevance, rule.gamma, rule.stabilizer)
    raise AssertionError(f"no twin for {rule}")


def back(layer: nn.Linear, x: Tensor, relevance: Tensor, setting: Setting) -> Tensor:
    return z_rule(setting.linear, x, layer.weight.detach(), _p(layer.bias), relevance)


def start(logits: Tensor, target: Tensor) -> Tensor:
    """Relevance at the output: the target logit, zero elsewhere."""
    relevance = torch.zeros_like(logits)
    for b, t in enumerate(target.tolist()):
        relevance[b, t] = logits[b, t]
    return relevance


def eye(n: int, scale: float = 1.0) -> Tensor:
    return op_literal.identity(n, scale)


class Net(nn.Module):
    """A model whose forward uses functional ops; ``literal(x, target, setting)`` is its relevance from the formulas."""

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------ Proportional
class Residual(Net):
    """``r + l2(r)`` with ``r = F.relu(l1(x))``: a functional residual sum."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.l1, self.l2, self.head = nn.Linear(5, 6, bias=bias), nn.Linear(6, 6, bias=bias), nn.Linear(6, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        r = F.relu(self.l1(x))
        return self.head(r + self.l2(r))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        r = relu(lin(self.l1, x))
        u = lin(self.l2, r)
        y = r + u
        relevance = back(self.head, y, start(lin(self.head, y), target), setting)
        r_direct, r_u = op_literal.proportional([(r, eye(6)), (u, eye(6))], 0.0, relevance, setting.stabilizer)
        return back(self.l1, x, r_direct + back(self.l2, r, r_u, setting), setting)  # ReLU passes


class TwoBranch(Net):
    """``op(la(x), lb(x))`` for a binary op with Jacobians ``(J_a, J_b)``."""

    KINDS = {  # kind: (output size of lb, J_a, J_b)
        "sub": (6, eye(6), eye(6, -1.0)),
        "add-alpha": (6, eye(6), eye(6, 2.0)),
        "sub-alpha": (6, eye(6), eye(6, -0.5)),
        "add-method": (6, eye(6), eye(6)),
        "add-broadcast": (2, eye(6), op_literal.broadcast_jacobian((2, 1), (2, 3))),
    }

    def __init__(self, kind: str, bias: bool) -> None:
        super().__init__()
        self.kind = kind
        self.la = nn.Linear(5, 6, bias=bias)
        self.lb = nn.Linear(5, self.KINDS[kind][0], bias=bias)
        self.head = nn.Linear(6, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.la(x), self.lb(x)
        if self.kind == "sub":
            y = a - b
        elif self.kind == "add-alpha":
            y = torch.add(a, b, alpha=2.0)
        elif self.kind == "sub-alpha":
            y = torch.sub(a, b, alpha=0.5)
        elif self.kind == "add-method":
            y = a.add(b)
        else:
            y = a.view(-1, 2, 3) + b.view(-1, 2, 1)
        return self.head(y.flatten(1))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        _, j_a, j_b = self.KINDS[self.kind]
        a, b = lin(self.la, x), lin(self.lb, x)
        y = a @ j_a.T + b @ j_b.T
        relevance = back(self.head, y, start(lin(self.head, y), target), setting)
        r_a, r_b = op_literal.proportional([(a, j_a), (b, j_b)], 0.0, relevance, setting.stabilizer)
        return back(self.la, x, r_a, setting) + back(self.lb, x, r_b, setting)


class Offset(Net):
    """``x + const`` (a buffer) and ``0.5 - la(u)``: the constants absorb their share."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.la, self.head = nn.Linear(5, 6, bias=bias), nn.Linear(6, 3, bias=bias)
        self.register_buffer("offset", torch.linspace(-1.0, 1.5, 5, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        u = x + self.offset
        return self.head(0.5 - self.la(u))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        u = x + self.offset
        a = lin(self.la, u)
        v = 0.5 - a
        relevance = back(self.head, v, start(lin(self.head, v), target), setting)
        (r_a,) = op_literal.proportional([(a, eye(6, -1.0))], 0.5, relevance, setting.stabilizer)
        (r_x,) = op_literal.proportional([(x, eye(5))], self.offset, back(self.la, u, r_a, setting),
                                         setting.stabilizer)
        return r_x


class Reduce(Net):
    """A sum or mean over dimensions of the input itself (channels, height, width) = (3, 4, 2)."""

    SHAPE = (3, 4, 2)

    def __init__(self, kind: str, dims: tuple[int, ...], keepdim: bool, bias: bool) -> None:
        super().__init__()
        self.kind, self.dims, self.keepdim = kind, dims, keepdim
        kept = math.prod(n for d, n in enumerate(self.SHAPE) if d not in [d % 3 for d in dims])
        self.head = nn.Linear(kept, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x.view(-1, *self.SHAPE)
        shifted = tuple(d + 1 if d >= 0 else d for d in self.dims)  # the sample's dimensions behind the batch
        dims = shifted[0] if len(shifted) == 1 else shifted
        if self.kind == "sum":
            y = x.sum(dims, keepdim=self.keepdim)
        elif self.kind == "torch.sum":
            y = torch.sum(x, dims, keepdim=self.keepdim)
        elif self.kind == "mean":
            y = x.mean(dims, keepdim=self.keepdim)
        else:
            y = torch.mean(x, dims, keepdim=self.keepdim)
        return self.head(y.flatten(1))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        jacobian = op_literal.reduction_jacobian(self.SHAPE, self.dims, mean="mean" in self.kind)
        y = x @ jacobian.T
        relevance = back(self.head, y, start(lin(self.head, y), target), setting)
        return op_literal.proportional([(x, jacobian)], 0.0, relevance, setting.stabilizer)[0]


class Fold(Net):
    """``F.fold`` of nine overlapping 2x2 patches (stride 1) of two channels into a 4x4 image: a sum where the
    patches overlap, so its relevance is proportional (a route would copy it to each patch, and double it)."""

    CHANNELS, KERNEL, SIZE = 2, 2, 4

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.head = nn.Linear(self.CHANNELS * self.SIZE**2, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        patches = x.view(-1, self.CHANNELS * self.KERNEL**2, 9)  # (channel, kernel row, kernel column) x block
        return self.head(F.fold(patches, self.SIZE, self.KERNEL).flatten(1))

    @classmethod
    def jacobian(cls) -> Tensor:
        """(output, input) 0/1 matrix: block (i, j) puts its kernel entry (a, b) of channel c at (c, i + a, j + b)."""
        k, size, blocks = cls.KERNEL, cls.SIZE, cls.SIZE - cls.KERNEL + 1
        jacobian = torch.zeros(cls.CHANNELS * size**2, cls.CHANNELS * k * k * blocks**2, dtype=torch.float64)
        for c in range(cls.CHANNELS):
            for a in range(k):
                for b in range(k):
                    for i in range(blocks):
                        for j in range(blocks):
                            row = (c * k + a) * k + b  # the patch tensor's (channel, a, b) row
                            jacobian[(c * size + i + a) * size + j + b, row * blocks**2 + i * blocks + j] = 1.0
        return jacobian

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        jacobian = self.jacobian()
        y = x @ jacobian.T
        relevance = back(self.head, y, start(lin(self.head, y), target), setting)
        return op_literal.proportional([(x, jacobian)], 0.0, relevance, setting.stabilizer)[0]


class Pool(Net):
    """Functional average pooling of the input (2, 5, 6)."""

    SHAPE = (2, 5, 6)
    KINDS = {  # kind: (call, Jacobian)
        "avg_pool2d-2": (lambda x: F.avg_pool2d(x, 2), lambda: op_literal.avg_pool2d_jacobian((2, 5, 6), 2, 2)),
        "avg_pool2d-3s2p1": (lambda x: F.avg_pool2d(x, 3, stride=2, padding=1),
                             lambda: op_literal.avg_pool2d_jacobian((2, 5, 6), 3, 2, 1)),
        "avg_pool2d-exclude-pad": (lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
                                   lambda: op_literal.avg_pool2d_jacobian((2, 5, 6), 3, 2, 1, False)),
        "adaptive-3x2": (lambda x: F.adaptive_avg_pool2d(x, (3, 2)),
                         lambda: op_literal.adaptive_avg_pool2d_jacobian((2, 5, 6), (3, 2))),
        "adaptive-4x4": (lambda x: F.adaptive_avg_pool2d(x, 4),
                         lambda: op_literal.adaptive_avg_pool2d_jacobian((2, 5, 6), (4, 4))),
    }

    def __init__(self, kind: str, bias: bool) -> None:
        super().__init__()
        self.kind = kind
        self.jacobian = self.KINDS[kind][1]()
        self.head = nn.Linear(self.jacobian.shape[0], 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.KINDS[self.kind][0](x.view(-1, *self.SHAPE)).flatten(1))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        y = x @ self.jacobian.T
        relevance = back(self.head, y, start(lin(self.head, y), target), setting)
        return op_literal.proportional([(x, self.jacobian)], 0.0, relevance, setting.stabilizer)[0]


# ------------------------------------------------------------------------------------------------ SignalTakeAll
class Excite(Net):
    """Squeeze-excitation: ``h * gate(fc(h.mean(2, keepdim=True)))`` with ``h = l1(x).view(-1, 3, 4)``."""

    def __init__(self, gate: str, gate_first: bool, bias: bool) -> None:
        super().__init__()
        self.gate, self.gate_first = gate, gate_first
        self.l1, self.head = nn.Linear(5, 12, bias=bias), nn.Linear(12, 3, bias=bias)
        self.fc = nn.Conv1d(3, 3, 1, bias=bias)
        if gate.startswith("timm."):  # a library's activation module: ruled as a whole, its sigmoid unseen
            from timm.layers import activations

            self.gate_module = getattr(activations, gate.split(".")[1])()
        else:
            self.gate_module = nn.Hardsigmoid() if gate == "nn.Hardsigmoid" else nn.Sigmoid()

    def _gate(self, t: Tensor) -> Tensor:
        if self.gate == "torch.sigmoid":
            return torch.sigmoid(t)
        if self.gate == "Tensor.sigmoid":
            return t.sigmoid()
        if self.gate == "F.hardsigmoid":
            return F.hardsigmoid(t)
        return self.gate_module(t)

    def forward(self, x: Tensor) -> Tensor:
        h = self.l1(x).view(-1, 3, 4)
        g = self._gate(self.fc(h.mean(2, keepdim=True)))
        y = g * h if self.gate_first else h * g
        return self.head(y.flatten(1))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        h = lin(self.l1, x)  # (batch, 12) = (3, 4) per sample
        q = h @ op_literal.reduction_jacobian((3, 4), (1,), mean=True).T  # (batch, 3)
        t = q @ self.fc.weight.detach()[:, :, 0].T + (0.0 if self.fc.bias is None else self.fc.bias.detach())
        g = hardsigmoid(t) if "hardsigmoid" in self.gate.lower() else sigmoid(t)
        y = h * (g @ op_literal.broadcast_jacobian((3, 1), (3, 4)).T)
        relevance = back(self.head, y, start(lin(self.head, y), target), setting)
        r_h = op_literal.signal_take_all(relevance, (3, 4), (3, 4))  # the gate gets nothing
        return back(self.l1, x, r_h, setting)


class WideGate(Net):
    """The signal ``h.mean(2, keepdim=True)`` (3, 1) times a gate ``torch.sigmoid(l2(x))`` (3, 4): the signal's
    relevance is summed over the broadcast dimension."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(5, 12, bias=bias), nn.Linear(5, 12, bias=bias)
        self.head = nn.Linear(12, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        q = self.l1(x).view(-1, 3, 4).mean(2, keepdim=True)
        return self.head((q * torch.sigmoid(self.l2(x).view(-1, 3, 4))).flatten(1))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        h = lin(self.l1, x)
        mean = op_literal.reduction_jacobian((3, 4), (1,), mean=True)
        q = h @ mean.T
        y = (q @ op_literal.broadcast_jacobian((3, 1), (3, 4)).T) * sigmoid(lin(self.l2, x))
        relevance = back(self.head, y, start(lin(self.head, y), target), setting)
        r_q = op_literal.signal_take_all(relevance, (3, 1), (3, 4))
        (r_h,) = op_literal.proportional([(h, mean)], 0.0, r_q, setting.stabilizer)
        return back(self.l1, x, r_h, setting)


class Scaled(Net):
    """Products with constants: layer scale ``h * self.scale``, ``2.0 * u``, ``u / 2``, ``torch.div(u, buffer)`` and
    a signal (3, 1) times a parameter (3, 4)."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.l1, self.head = nn.Linear(5, 12, bias=bias), nn.Linear(12, 3, bias=bias)
        self.scale = nn.Parameter(torch.ones(12))
        self.pos = nn.Parameter(torch.ones(3, 4))
        self.register_buffer("divisor", torch.linspace(0.5, 2.0, 12, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        u = self.l1(x) * self.scale
        u = 2.0 * u
        u = u / 2
        u = torch.div(u, self.divisor)
        v = u.view(-1, 3, 4).mean(-1, keepdim=True) * self.pos
        return self.head(v.flatten(1))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        u = lin(self.l1, x) * self.scale.detach() * 2.0 / 2.0 / self.divisor
        mean = op_literal.reduction_jacobian((3, 4), (1,), mean=True)
        v = (u @ mean.T @ op_literal.broadcast_jacobian((3, 1), (3, 4)).T) * self.pos.detach().reshape(-1)
        relevance = back(self.head, v, start(lin(self.head, v), target), setting)
        r_q = op_literal.signal_take_all(relevance, (3, 1), (3, 4))
        (r_u,) = op_literal.proportional([(u, mean)], 0.0, r_q, setting.stabilizer)
        return back(self.l1, x, r_u, setting)  # the products with constants pass all relevance


class FunctionalConv(Net):
    """Convolutions written as functions (ops.MATMUL): ``F.conv2d`` with a fixed filter held in a buffer (a blur, as
    anti-aliased pooling applies), stride 2, groups 2 and a bias parameter, then ``F.conv_transpose2d`` with a
    weight parameter. Each is a linear map of the path: LRP-epsilon with the RuleMap stabilizer (Uniform, one
    factor), the bias a constant term."""

    SHAPE = (2, 4, 4)

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.l1, self.head = nn.Linear(24, 32, bias=bias), nn.Linear(32, 3, bias=bias)
        blur = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
        self.register_buffer("blur", (blur.outer(blur) / 16).expand(4, 1, 3, 3).clone())
        self.b = nn.Parameter(torch.zeros(4))
        self.up = nn.Parameter(torch.zeros(4, 1, 2, 2))  # (in, out / groups, kH, kW)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.l1(x)).view(-1, *self.SHAPE)
        down = F.conv2d(h, self.blur, self.b, stride=2, padding=1, groups=2)  # (4, 2, 2)
        up = F.conv_transpose2d(down, self.up, stride=2, groups=2)  # (2, 4, 4)
        return self.head(F.relu(up).flatten(1))

    def _maps(self) -> tuple[tuple[Tensor, Tensor | None], tuple[Tensor, Tensor | None]]:
        """The two convolutions as dense (out, in) matrices with their per-position bias (None: no bias)."""
        conv = nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2).double()
        transposed = nn.ConvTranspose2d(4, 2, 2, stride=2, groups=2, bias=False).double()
        with torch.no_grad():
            conv.weight.copy_(self.blur)
            conv.bias.copy_(self.b)
            transposed.weight.copy_(self.up)
        dense, dense_bias, _, _ = literal.conv_as_dense(conv, self.SHAPE)
        eye_in = torch.eye(16, dtype=torch.float64)  # the transposed conv's columns: its response to each input
        up = transposed(eye_in.view(16, 4, 2, 2)).detach().flatten(1).T
        return (dense, dense_bias), (up, None)

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        (down, down_bias), (up, _) = self._maps()
        h = relu(lin(self.l1, x))
        d = h @ down.T + down_bias
        u = d @ up.T
        r = relu(u)
        relevance = back(self.head, r, start(lin(self.head, r), target), setting)
        r_d = literal.epsilon(d, up, None, relevance, setting.stabilizer)
        r_h = literal.epsilon(h, down, down_bias, r_d, setting.stabilizer)
        return back(self.l1, x, r_h, setting)


# ------------------------------------------------------------------------------------------------ products
class Product(Net):
    """``la(x) * lb(x)`` (same shape, or broadcast (2, 3) * (2, 1)), or ``la(x) * torch.sigmoid(lb(x))``."""

    def __init__(self, kind: str, bias: bool) -> None:
        super().__init__()
        self.kind = kind
        self.la = nn.Linear(5, 6, bias=bias)
        self.lb = nn.Linear(5, 2 if kind == "broadcast" else 6, bias=bias)
        self.head = nn.Linear(6, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.la(x), self.lb(x)
        if self.kind == "same":
            y = a * b
        elif self.kind == "broadcast":
            y = a.view(-1, 2, 3) * b.view(-1, 2, 1)
        elif self.kind == "gated":
            y = a * torch.sigmoid(b)
        elif self.kind == "tanh-gate":
            y = a * torch.tanh(b)
        elif self.kind == "signed-sigmoid":  # 2 sigmoid(b) - 1 can be negative: not a gate
            y = a * (2 * torch.sigmoid(b) - 1)
        elif self.kind == "divide":
            y = a / b
        else:
            y = torch.div(a, other=b)
        return self.head(y.flatten(1))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        a, b = lin(self.la, x), lin(self.lb, x)
        second = sigmoid(b) if self.kind == "gated" else b
        j_b = op_literal.broadcast_jacobian((2, 1), (2, 3)) if self.kind == "broadcast" else eye(6)
        y = a * (second @ j_b.T)
        relevance = back(self.head, y, start(lin(self.head, y), target), setting)
        if setting.mul is None:  # SignalTakeAll: the gated signal a takes all
            assert self.kind == "gated"
            return back(self.la, x, relevance, setting)
        r_a, r_second = op_literal.uniform([(a, eye(6)), (second, j_b)], relevance, setting.mul.stabilizer)
        return back(self.la, x, r_a, setting) + back(self.lb, x, r_second, setting)  # the sigmoid passes


class Normalised(Net):
    """A division by a tensor on the relevance path, which the transformer presets read as a normaliser and hold
    constant (``SignalTakeAll(constant_divisor=True)``): ``q / (q.sum(-1, keepdim=True) + 1)`` with ``q =
    relu(la(x))`` (ConViT's ``attn /= attn.sum(-1)``, also written in place), or ``la(x) / (relu(lb(x)) + 1)`` (a
    linear attention's denominator, by operator or ``torch.div(a, other=d)``). The numerator takes all relevance."""

    KINDS = ("sum", "sum-in-place", "other-branch", "torch.div-other")

    def __init__(self, kind: str, bias: bool) -> None:
        super().__init__()
        self.kind = kind
        self.la, self.lb, self.head = nn.Linear(5, 6, bias=bias), nn.Linear(5, 6, bias=bias), nn.Linear(6, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        a = self.la(x)
        if self.kind == "sum":
            q = F.relu(a)
            return self.head(q / (q.sum(-1, keepdim=True) + 1.0))
        if self.kind == "sum-in-place":
            q = F.relu(a)
            q /= q.sum(-1, keepdim=True) + 1.0
            return self.head(q)
        d = F.relu(self.lb(x)) + 1.0
        return self.head(a / d if self.kind == "other-branch" else torch.div(a, other=d))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        a = lin(self.la, x)
        if self.kind.startswith("sum"):
            q = relu(a)
            n = q / (q.sum(-1, keepdim=True) + 1.0)
        else:
            n = a / (relu(lin(self.lb, x)) + 1.0)
        relevance = back(self.head, n, start(lin(self.head, n), target), setting)
        return back(self.la, x, relevance, setting)  # the numerator takes all; the ReLU passes it


_HELD = rules.SignalTakeAll(constant_divisor=True)


@pytest.mark.parametrize("kind", Normalised.KINDS)
def test_a_division_by_a_path_tensor_holds_the_divisor_constant(kind: str) -> None:
    """Twin to 1e-12 with the divisor held constant; bias-free, every epsilon 1e-12, the relevance sums to the
    target logit (the divisor's branch gets none, so none is lost); the transformer presets do the same."""
    model = _build(Case(kind, lambda b: Normalised(kind, b), 5), bias=True)
    x = _input(_case("residual"))
    setting = Setting(rules.Epsilon(epsilon=EPS), STAB, div=_HELD)
    explanation = _explain(model, x, setting)
    with torch.no_grad():
        want = model.literal(x, TARGET, setting)  # type: ignore[operator]
    assert max_relative_error(explanation.relevance, want) <= TOLERANCE
    assert torch.equal(explanation.output, model(x).detach())
    free = _build(Case(kind, lambda b: Normalised(kind, b), 5), bias=False)
    tiny = _explain(free, x, Setting(rules.Epsilon(epsilon=TINY), TINY, div=_HELD))
    logit = free(x).detach().gather(1, TARGET[:, None])[:, 0]
    assert torch.allclose(tiny.relevance.sum(1), logit, rtol=1e-9, atol=0)
    for preset in ("attnlrp", "cp_lrp"):
        attnlrp = relprop.explain(model, x, TARGET, method="lrp", preset=preset, epsilon=EPS)
        with torch.no_grad():
            expected = model.literal(x, TARGET, Setting(rules.Epsilon(epsilon=EPS), 1e-6))  # type: ignore[operator]
        assert max_relative_error(attnlrp.relevance, expected) <= TOLERANCE


def test_a_reciprocal_of_a_path_tensor_is_refused_with_the_divisor_held() -> None:
    class Reciprocal(Net):
        def __init__(self) -> None:
            super().__init__()
            self.la, self.head = nn.Linear(5, 6), nn.Linear(6, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(torch.div(2.0, F.relu(self.la(x)) + 1.0))  # type: ignore[no-any-return]

    with pytest.raises(relprop.ExplanationError, match=r"divides a constant by a tensor on the relevance path"):
        _explain(Reciprocal().double().eval(), _input(_case("residual")),
                 Setting(rules.Epsilon(epsilon=EPS), STAB, div=_HELD))


class Reciprocal(Net):
    """A normaliser written with a reciprocal or an in-place statistic: ``(1 / d) * q`` (Nystromformer's ``1 /
    max(sum(k)) * k^T``), ``q * torch.reciprocal(d)``, ``d.reciprocal_()`` as a statement, ``q * d.rsqrt_()``, with
    ``q = relu(la(x))`` and ``d = q.sum(-1) + 1``. The transformer presets hold the statistic constant, as they
    hold a divisor: q takes all relevance. (The in-place forms ran in place under ``no_grad``: ``d`` stayed on the
    path with the statistic's value, and the product split its relevance with it; on a ruled op's output autograd
    raised.)"""

    KINDS = ("rdiv", "reciprocal", "reciprocal-statement", "rsqrt-in-place")

    def __init__(self, kind: str, bias: bool) -> None:
        super().__init__()
        self.kind = kind
        self.la, self.head = nn.Linear(5, 6, bias=bias), nn.Linear(6, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        q = F.relu(self.la(x))
        d = q.sum(-1, keepdim=True) + 1.0
        if self.kind == "rdiv":
            n = (1 / d) * q
        elif self.kind == "reciprocal":
            n = q * torch.reciprocal(d)
        elif self.kind == "reciprocal-statement":
            d.reciprocal_()
            n = q * d
        else:
            n = q * d.rsqrt_()
        return self.head(n)  # type: ignore[no-any-return]

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        q = relu(lin(self.la, x))
        d = q.sum(-1, keepdim=True) + 1.0
        n = q * d.rsqrt() if self.kind == "rsqrt-in-place" else q / d
        relevance = back(self.head, n, start(lin(self.head, n), target), setting)
        return back(self.la, x, relevance, setting)  # the statistic holds none; the ReLU passes it


@pytest.mark.parametrize("kind", Reciprocal.KINDS)
def test_a_reciprocal_statistic_is_held_constant_by_the_transformer_presets(kind: str) -> None:
    """Twin to 1e-12 under attnlrp and cp_lrp; bias-free with every epsilon 1e-12 the relevance sums to the target
    logit; the CNN presets refuse the statistic (they have no rule that holds it)."""
    model = _build(Case(kind, lambda b: Reciprocal(kind, b), 5), bias=True)
    x = _input(_case("residual"))
    with torch.no_grad():
        expected = model.literal(x, TARGET, Setting(rules.Epsilon(epsilon=EPS), 1e-6))  # type: ignore[operator]
    for preset in ("attnlrp", "cp_lrp"):
        explanation = relprop.explain(model, x, TARGET, method="lrp", preset=preset, epsilon=EPS)
        assert max_relative_error(explanation.relevance, expected) <= TOLERANCE
        assert torch.equal(explanation.output, model(x).detach())
    free = _build(Case(kind, lambda b: Reciprocal(kind, b), 5), bias=False)
    tiny = relprop.explain(free, x, TARGET, method="lrp", preset="attnlrp", epsilon=TINY, stabilizer=TINY)
    logit = free(x).detach().gather(1, TARGET[:, None])[:, 0]
    assert torch.allclose(tiny.relevance.sum(1), logit, rtol=1e-9, atol=0)
    with pytest.raises(relprop.ExplanationError, match="NORM_STATISTIC"):
        relprop.explain(model, x, TARGET, method="lrp", preset="epsilon")


class BoundedGates(Net):
    """Gates written as formulas of bounded functions: GELU with erf (``u * 0.5 * (1 + erf(u / sqrt 2))``, ESM's),
    a GRU-style mix ``(1 - z) * g + z * v`` with ``z = sigmoid(.)``, and ``0.5 * (1 + tanh(.)) * v``. Each factor
    built from the bounded function cannot be negative, so it is a gate: the other factor takes all."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = (nn.Linear(5, 6, bias=bias) for _ in range(3))
        self.head = nn.Linear(6, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        u, a, v = self.l1(x), self.l2(x), self.l3(x)
        g = u * 0.5 * (1.0 + torch.erf(u / math.sqrt(2.0)))
        z = torch.sigmoid(a)
        return self.head((1 - z) * g + z * v + 0.5 * (1.0 + torch.tanh(a)) * v)

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        u, a, v = lin(self.l1, x), lin(self.l2, x), lin(self.l3, x)
        g = u * 0.5 * (1.0 + torch.erf(u / math.sqrt(2.0)))
        z = sigmoid(a)
        terms = [(1 - z) * g, z * v, 0.5 * (1.0 + torch.tanh(a)) * v]
        y = sum(terms)
        relevance = back(self.head, y, start(lin(self.head, y), target), setting)
        # the sum's terms take their shares (added left to right: ((1 - z) g + z v) + ...), each all to its signal
        first, third = op_literal.proportional([(terms[0] + terms[1], eye(6)), (terms[2], eye(6))], 0.0, relevance,
                                               setting.stabilizer)
        r_g, r_zv = op_literal.proportional([(terms[0], eye(6)), (terms[1], eye(6))], 0.0, first, setting.stabilizer)
        return (back(self.l1, x, r_g, setting) + back(self.l3, x, r_zv + third, setting))  # the gates get nothing


# ------------------------------------------------------------------------------------------------ DetachedNorm
class Norm(Net):
    """A layer, group, instance or RMS norm (functional or module) of the input itself."""

    KINDS = {  # kind: (one input's shape, normalised block size or groups)
        "F.layer_norm": ((2, 6), 6),
        "F.layer_norm-2d": ((2, 6), 12),
        "nn.LayerNorm": ((2, 6), 6),
        "F.group_norm": ((4, 3, 2), 2),
        "nn.GroupNorm": ((4, 3, 2), 2),
        "nn.InstanceNorm2d": ((4, 3, 2), 4),  # a group per channel
        "nn.InstanceNorm2d-running": ((4, 3, 2), 4),  # track_running_stats in eval mode: a diagonal affine map
        "nn.RMSNorm": ((2, 6), 6),
        "F.rms_norm": ((2, 6), 12),
    }

    def __init__(self, kind: str, bias: bool) -> None:
        super().__init__()
        self.kind = kind
        self.shape, self.size = self.KINDS[kind]
        numel = math.prod(self.shape)
        self.head = nn.Linear(numel, 3, bias=bias)
        self.w: nn.Parameter | None = None
        self.b: nn.Parameter | None = None
        self.norm: nn.Module | None = None
        if kind == "F.layer_norm":
            self.w, self.b = nn.Parameter(torch.ones(6)), (nn.Parameter(torch.zeros(6)) if bias else None)
        elif kind == "F.layer_norm-2d":
            self.w, self.b = nn.Parameter(torch.ones(2, 6)), (nn.Parameter(torch.zeros(2, 6)) if bias else None)
        elif kind == "F.group_norm":
            self.w, self.b = nn.Parameter(torch.ones(4)), (nn.Parameter(torch.zeros(4)) if bias else None)
        elif kind == "F.rms_norm":
            self.w = nn.Parameter(torch.ones(2, 6))
        elif kind == "nn.LayerNorm":
            self.norm = nn.LayerNorm(6, eps=1e-4, bias=bias)
        elif kind == "nn.GroupNorm":
            self.norm = nn.GroupNorm(2, 4, eps=1e-3)  # its bias is drawn zero for the bias-free variant
        elif kind.startswith("nn.InstanceNorm2d"):
            self.norm = nn.InstanceNorm2d(4, eps=1e-3, affine=True, track_running_stats=kind.endswith("running"))
        else:
            self.norm = nn.RMSNorm(6)  # eps=None: the dtype's machine epsilon

    def eps(self) -> float:
        if self.kind == "nn.RMSNorm":
            return torch.finfo(torch.float64).eps
        if self.norm is not None:
            return float(self.norm.eps)  # type: ignore[arg-type]
        return {"F.layer_norm": 1e-5, "F.layer_norm-2d": 1e-3, "F.group_norm": 1e-5, "F.rms_norm": 1e-6}[self.kind]

    def forward(self, x: Tensor) -> Tensor:
        x = x.view(-1, *self.shape)
        if self.norm is not None:
            y = self.norm(x)
        elif self.kind == "F.layer_norm":
            y = F.layer_norm(x, (6,), self.w, self.b, 1e-5)
        elif self.kind == "F.layer_norm-2d":
            y = F.layer_norm(x, (2, 6), self.w, self.b, eps=1e-3)
        elif self.kind == "F.group_norm":
            y = F.group_norm(x, 2, self.w, self.b, 1e-5)
        else:
            y = F.rms_norm(x, (2, 6), self.w, 1e-6)
        return self.head(y.flatten(1))

    def _affine(self) -> tuple[Tensor | None, Tensor | None]:
        if self.norm is not None:
            return _p(self.norm.weight), _p(getattr(self.norm, "bias", None))  # type: ignore[arg-type]
        return _p(self.w), _p(self.b)

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        weight, bias = self._affine()
        numel = math.prod(self.shape)
        per_channel = numel // self.shape[0]
        if self.kind == "nn.InstanceNorm2d-running":  # (x - mean) / sqrt(var + eps) * w + b, per channel
            assert self.norm is not None and weight is not None and bias is not None
            scale, shift = op_literal.batch_norm_affine(self.norm.running_mean, self.norm.running_var, weight, bias,
                                                        self.eps())
            jacobians = [torch.diag(scale.repeat_interleave(per_channel)) for _ in range(len(x))]
            flat_bias = shift.repeat_interleave(per_channel)
        elif "group" in self.kind.lower() or "instance" in self.kind.lower():
            jacobians = [op_literal.group_norm_jacobian(x[b], self.shape, self.size, weight, self.eps())
                         for b in range(len(x))]
            flat_bias = None if bias is None else torch.stack([bias[i // per_channel] for i in range(numel)])
        else:
            flat_weight = None if weight is None else weight.reshape(-1)
            build = op_literal.rms_norm_jacobian if "rms" in self.kind.lower() else op_literal.layer_norm_jacobian
            jacobians = [build(x[b], self.size, flat_weight, self.eps()) for b in range(len(x))]
            flat_bias = None if bias is None else bias.reshape(-1).repeat(numel // self.size)
        # the forward pass is y = J x + b: the relevance at y, then back through the norm
        y = torch.stack([jacobians[b] @ x[b] for b in range(len(x))]) + (0.0 if flat_bias is None else flat_bias)
        relevance = back(self.head, y, start(lin(self.head, y), target), setting)
        r_x, y_again = op_literal.detached_norm(x, jacobians, flat_bias, relevance, setting.stabilizer)
        assert torch.equal(y, y_again)
        return r_x


# ------------------------------------------------------------------------------------------------ batch norm
def _bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    return op_literal.batch_norm_affine(bn.running_mean, bn.running_var, _p(bn.weight), _p(bn.bias), bn.eps)


class LinearBN(nn.Sequential):
    """``nn.Sequential(Linear, BatchNorm1d, ReLU, Linear)``: the batch norm merges into the Linear before it."""

    def __init__(self, bias: bool) -> None:
        super().__init__(nn.Linear(12, 16, bias=bias), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3, bias=bias))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        first, bn, _, last = self
        weight, bias = op_literal.merge_batch_norm(first.weight.detach(), _p(first.bias), *_bn_affine(bn))
        r = relu(x @ weight.T + bias)
        relevance = back(last, r, start(lin(last, r), target), setting)
        return z_rule(setting.linear, x, weight, bias, relevance)


class ConvBN(Net):
    """``F.relu(self.bn(self.conv(x)))`` in a forward of its own: the conv and its batch norm are one affine map."""

    SHAPE = (2, 4, 3)

    def __init__(self, bias: bool, conv_bias: bool = True, copy: str = "") -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=bias and conv_bias)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(36, 3, bias=bias)
        self.copy = copy  # a copy of the conv's output between the two: "contiguous" or "clone"

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x.view(-1, *self.SHAPE))
        if self.copy:
            h = getattr(h, self.copy)()
        return self.head(F.relu(self.bn(h)).flatten(1))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        dense, dense_bias, _, _ = literal.conv_as_dense(self.conv, self.SHAPE)
        weight, bias = op_literal.merge_batch_norm(dense, dense_bias, *_bn_affine(self.bn))
        r = relu(x @ weight.T + bias)
        relevance = back(self.head, r, start(lin(self.head, r), target), setting)
        return z_rule(setting.linear, x, weight, bias, relevance)


class FreeBN(nn.Sequential):
    """Batch norms fed by no layer: on the input, and after a ReLU (DenseNet's order); each is Epsilon on y = a x + c
    with the RuleMap stabilizer."""

    def __init__(self, bias: bool) -> None:
        super().__init__(nn.BatchNorm1d(5), nn.Linear(5, 6, bias=bias), nn.ReLU(), nn.BatchNorm1d(6),
                         nn.Linear(6, 3, bias=bias))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        bn0, first, _, bn1, last = self
        w0, b0 = op_literal.diagonal(*_bn_affine(bn0), 1)
        w1, b1 = op_literal.diagonal(*_bn_affine(bn1), 1)
        y0 = x @ w0.T + b0
        r = relu(lin(first, y0))
        y1 = r @ w1.T + b1
        relevance = back(last, y1, start(lin(last, y1), target), setting)
        relevance = literal.epsilon(r, w1, b1, relevance, setting.stabilizer)
        relevance = back(first, y0, relevance, setting)
        return literal.epsilon(x, w0, b0, relevance, setting.stabilizer)


class ConvReluBN(Net):
    """Conv, ``F.relu``, then a BatchNorm2d module: the batch norm is a per-channel diagonal map."""

    SHAPE = (2, 4, 3)

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(36, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.bn(F.relu(self.conv(x.view(-1, *self.SHAPE)))).flatten(1))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        dense, dense_bias, _, _ = literal.conv_as_dense(self.conv, self.SHAPE)
        r = relu(x @ dense.T + (0.0 if dense_bias is None else dense_bias))
        w_bn, b_bn = op_literal.diagonal(*_bn_affine(self.bn), 12)
        y = r @ w_bn.T + b_bn
        relevance = back(self.head, y, start(lin(self.head, y), target), setting)
        relevance = literal.epsilon(r, w_bn, b_bn, relevance, setting.stabilizer)
        return z_rule(setting.linear, x, dense, dense_bias, relevance)


# ------------------------------------------------------------------------------------------------ max, routing
class Max(Net):
    """Functional max pooling and maxima of the input (2, 4, 6): winner-take-all."""

    SHAPE = (2, 4, 6)
    KINDS = {  # kind: (call, windows)
        "max_pool2d-2": (lambda x: F.max_pool2d(x, 2), lambda: op_literal.pool2d_windows((2, 4, 6), 2, 2)),
        "max_pool2d-3s2": (lambda x: F.max_pool2d(x, 3, stride=2),
                           lambda: op_literal.pool2d_windows((2, 4, 6), 3, 2)),
        "amax-spatial": (lambda x: torch.amax(x, dim=(2, 3)), lambda: op_literal.max_windows((2, 4, 6), (1, 2))),
        "amax-last": (lambda x: x.amax(-1), lambda: op_literal.max_windows((2, 4, 6), (2,))),
        "max-dim": (lambda x: torch.max(x, dim=1)[0], lambda: op_literal.max_windows((2, 4, 6), (0,))),
    }

    def __init__(self, kind: str, bias: bool) -> None:
        super().__init__()
        self.kind = kind
        self.windows = self.KINDS[kind][1]()
        self.head = nn.Linear(len(self.windows), 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.KINDS[self.kind][0](x.view(-1, *self.SHAPE)).flatten(1))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        y = torch.stack([torch.stack([max(x[b, j] for j in members) for members in self.windows])
                         for b in range(len(x))])
        relevance = back(self.head, y, start(lin(self.head, y), target), setting)
        return op_literal.winner_take_all(x, self.windows, relevance)


PERMUTATION = [5, 0, 11, 3, 8, 1, 10, 6, 2, 9, 4, 7]


class Routes(Net):
    """chunk, cat, view, permute, torch.flatten and indexing between two Linear layers."""

    def __init__(self, lossy: bool, bias: bool) -> None:
        super().__init__()
        self.lossy = lossy
        self.l1 = nn.Linear(5, 12, bias=bias)
        self.head = nn.Linear(7 if lossy else 12, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        c0, c1, c2 = self.l1(x).chunk(3, dim=1)
        v = torch.cat([c2, c0, c1], 1).view(-1, 3, 4).permute(0, 2, 1)
        f = torch.flatten(v, 1)
        return self.head(f[:, 2:9] if self.lossy else f[:, PERMUTATION])

    def source(self) -> list[int]:
        """For each element of the head's input, the element of l1's output it copies (worked out by hand)."""
        cat = [*range(8, 12), *range(0, 4), *range(4, 8)]  # cat([c2, c0, c1])
        flat = []
        for j in range(4):  # permute(0, 2, 1) of view(3, 4): element (j, i) is view[i, j] = cat[4 i + j]
            for i in range(3):
                flat.append(cat[4 * i + j])
        return flat[2:9] if self.lossy else [flat[k] for k in PERMUTATION]

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        h = lin(self.l1, x)
        source = self.source()
        y = torch.stack([h[:, j] for j in source], 1)
        relevance = back(self.head, y, start(lin(self.head, y), target), setting)
        return back(self.l1, x, op_literal.route(relevance, source, 12), setting)


# ------------------------------------------------------------------------------------------------ in place
class Block(Net):
    """A residual block written with in-place ops (or their out-of-place forms)."""

    def __init__(self, inplace: bool, bias: bool) -> None:
        super().__init__()
        self.inplace = inplace
        self.l1, self.l2, self.l3 = (nn.Linear(6, 6, bias=bias) for _ in range(3))
        self.head = nn.Linear(6, 3, bias=bias)
        self.act = nn.ReLU(inplace=inplace)

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.l1(x)
        if self.inplace:
            out = F.relu(out, inplace=True)
            out = self.l2(out)
            out += identity
            out = out.relu_()
            h = self.l3(out)
            h = h.add_(out)
        else:
            out = F.relu(out)
            out = self.l2(out)
            out = out + identity
            out = out.relu()
            h = self.l3(out)
            h = h + out
        return self.head(self.act(h))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        r1 = relu(lin(self.l1, x))
        o2 = lin(self.l2, r1)
        r2 = relu(o2 + x)
        h3 = lin(self.l3, r2)
        t = relu(h3 + r2)
        relevance = back(self.head, t, start(lin(self.head, t), target), setting)
        r_h3, r_r2 = op_literal.proportional([(h3, eye(6)), (r2, eye(6))], 0.0, relevance, setting.stabilizer)
        r_r2 = r_r2 + back(self.l3, r2, r_h3, setting)
        r_o2, r_x = op_literal.proportional([(o2, eye(6)), (x, eye(6))], 0.0, r_r2, setting.stabilizer)
        return r_x + back(self.l1, x, back(self.l2, r1, r_o2, setting), setting)


class Bare(Net):
    """An in-place op on the relevance path whose result is dropped: the model goes on with the tensor object it
    holds, which the op changed (refused before relprop gave that object the op's result)."""

    KINDS = ("add_-then-module", "relu_-then-op", "F.relu-inplace-then-route", "setitem-into-layer-output")

    def __init__(self, kind: str, bias: bool) -> None:
        super().__init__()
        self.kind = kind
        self.l1, self.l2, self.head = nn.Linear(5, 6, bias=bias), nn.Linear(5, 6, bias=bias), nn.Linear(6, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.l1(x)
        if self.kind == "add_-then-module":
            h.add_(self.l2(x))
            return self.head(h)
        if self.kind == "relu_-then-op":
            h.relu_()
            return self.head(h * 2.0)
        if self.kind == "setitem-into-layer-output":
            h[:, 0] = h[:, 1] * 2.0
            return self.head(h)
        F.relu(h, inplace=True)
        return self.head(torch.cat([h[:, :3], h[:, 3:]], 1))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        h = lin(self.l1, x)
        if self.kind == "add_-then-module":
            h2 = lin(self.l2, x)
            t = h + h2
            relevance = back(self.head, t, start(lin(self.head, t), target), setting)
            r_h, r_h2 = op_literal.proportional([(h, eye(6)), (h2, eye(6))], 0.0, relevance, setting.stabilizer)
            return back(self.l1, x, r_h, setting) + back(self.l2, x, r_h2, setting)
        if self.kind == "setitem-into-layer-output":
            t = h.clone()
            t[:, 0] = 2.0 * h[:, 1]
            relevance = back(self.head, t, start(lin(self.head, t), target), setting)
            r_h = relevance.clone()
            r_h[:, 0] = 0.0  # overwritten: its old value reaches nothing
            r_h[:, 1] += relevance[:, 0]  # the product with a constant passes all relevance
            return back(self.l1, x, r_h, setting)
        r = relu(h)
        t = 2.0 * r if self.kind == "relu_-then-op" else r  # the product with a constant passes all relevance
        relevance = back(self.head, t, start(lin(self.head, t), target), setting)
        return back(self.l1, x, relevance, setting)


# ------------------------------------------------------------------------------------------------ the cases
@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[bool], nn.Module]
    in_features: int
    linear: str = "epsilon"
    mul: str | None = None
    conservative: bool = True  # for the bias-free variant


Z_RULES = ("epsilon", "zplus", "gamma", "alphabeta")

CASES: list[Case] = [
    Case("residual", Residual, 5),
    *(Case(f"binary-{kind}", lambda b, kind=kind: TwoBranch(kind, b), 5) for kind in TwoBranch.KINDS),
    Case("offset-and-rsub", Offset, 5, conservative=False),
    Case("sum-dim", lambda b: Reduce("sum", (2,), False, b), 24),
    Case("torch.sum-dims-keepdim", lambda b: Reduce("torch.sum", (0, 2), True, b), 24),
    Case("mean-dims", lambda b: Reduce("mean", (1, 2), False, b), 24),
    Case("torch.mean-last", lambda b: Reduce("torch.mean", (-1,), True, b), 24),
    *(Case(kind, lambda b, kind=kind: Pool(kind, b), 60) for kind in Pool.KINDS),
    Case("fold-overlapping-patches", Fold, 72),
    *(Case(f"excite-{gate}{'-gate-first' if first else ''}", lambda b, g=gate, f=first: Excite(g, f, b), 5)
      for gate, first in [("torch.sigmoid", False), ("torch.sigmoid", True), ("Tensor.sigmoid", False),
                          ("F.hardsigmoid", False), ("nn.Sigmoid", False), ("nn.Sigmoid", True),
                          ("nn.Hardsigmoid", False),
                          *([("timm.Sigmoid", False), ("timm.HardSigmoid", True)] if _TIMM else [])]),
    Case("wide-gate", WideGate, 5),
    Case("layer-scale-and-constants", Scaled, 5),
    Case("functional-conv-and-transposed-conv", FunctionalConv, 24),
    Case("signal-take-all-gated", lambda b: Product("gated", b), 5),
    Case("bounded-gates-erf-gelu-complement-tanh", BoundedGates, 5),
    *(Case(f"uniform-{kind}", lambda b, kind=kind: Product(kind, b), 5, mul="uniform")
      for kind in ("same", "broadcast", "gated")),
    *(Case(f"norm-{kind}", lambda b, kind=kind: Norm(kind, b), math.prod(Norm.KINDS[kind][0])) for kind in Norm.KINDS),
    *(Case(f"bn-merged-linear-{rule}", LinearBN, 12, linear=rule) for rule in Z_RULES),
    *(Case(f"bn-merged-conv-{rule}", ConvBN, 24, linear=rule) for rule in Z_RULES),
    *(Case(f"bn-merged-conv-without-bias-{rule}", lambda b: ConvBN(b, conv_bias=False), 24, linear=rule)
      for rule in ("epsilon", "zplus")),
    *(Case(f"bn-merged-conv-after-{copy}-{rule}", lambda b, c=copy: ConvBN(b, copy=c), 24, linear=rule)
      for copy in ("contiguous", "clone") for rule in ("zplus", "alphabeta")),
    Case("bn-diagonal-input-and-after-relu", FreeBN, 5),
    Case("bn-diagonal-conv-relu-bn", ConvReluBN, 24),
    *(Case(kind, lambda b, kind=kind: Max(kind, b), 48) for kind in Max.KINDS),
    Case("route-bijective", lambda b: Routes(False, b), 5),
    Case("route-lossy", lambda b: Routes(True, b), 5, conservative=False),
    Case("inplace-block", lambda b: Block(True, b), 6),
    Case("out-of-place-block", lambda b: Block(False, b), 6),
    *(Case(f"bare-{kind}", lambda b, kind=kind: Bare(kind, b), 5) for kind in Bare.KINDS),
]


def _build(case: Case, bias: bool, seed: int = 0) -> nn.Module:
    """The case's model in float64 with seeded parameters; every bias (and batch-norm mean) zero when not ``bias``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = case.build(bias).double()
    generator = torch.Generator().manual_seed(seed + 1)

    def draw(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or name == "b":
                param.copy_(0.5 * draw(*param.shape) if bias else torch.zeros_like(param))
            elif param.dim() >= 2:
                param.copy_(draw(*param.shape) / param[0].numel() ** 0.5)
            else:
                param.copy_(draw(*param.shape))  # norm weights, layer scales: signed
        for module in model.modules():  # batch norms, instance norms with running statistics
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.running_mean is not None:
                module.running_mean.copy_(0.5 * draw(module.num_features) if bias else torch.zeros(module.num_features))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator,
                                                          dtype=torch.float64))
    return model.eval()


def _case(case_id: str) -> Case:
    return next(case for case in CASES if case.id == case_id)


def _input(case: Case, seed: int = 5) -> Tensor:
    return torch.randn(BATCH, case.in_features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _explain(model: nn.Module, x: Tensor, setting: Setting) -> relprop.Explanation:
    return relprop.explain(model, x, TARGET, method="lrp", rule_map=setting.rule_map())


def max_relative_error(got: Tensor, want: Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_op_rule_matches_twin(case: Case) -> None:
    model = _build(case, bias=True)
    x = _input(case)
    setting = make_setting(case.linear, case.mul)
    got = _explain(model, x, setting).relevance
    with torch.no_grad():
        want = model.literal(x, TARGET, setting)  # type: ignore[operator]
    assert got.shape == want.shape
    assert want.abs().max() > 0
    assert max_relative_error(got, want) <= TOLERANCE


CONSERVATIVE = [case for case in CASES if case.conservative]


@pytest.mark.parametrize("case", CONSERVATIVE, ids=[case.id for case in CONSERVATIVE])
def test_conservation_without_bias(case: Case) -> None:
    """Bias-free, every epsilon 1e-12: the input relevance sums to the target logit; the twin agrees."""
    model = _build(case, bias=False, seed=3)
    x = _input(case, seed=9)
    setting = make_setting(case.linear, case.mul, tiny=True)
    explanation = _explain(model, x, setting)
    score = explanation.score
    assert ((explanation.relevance.sum(1) - score).abs() <= 1e-9 * score.abs()).all()
    with torch.no_grad():
        want = model.literal(x, TARGET, setting)  # type: ignore[operator]
    assert max_relative_error(explanation.relevance, want) <= TOLERANCE


def test_inplace_forms_equal_out_of_place() -> None:
    """``out += identity``, ``h = h.add_(y)``, ``F.relu(x, inplace=True)``, ``x = x.relu_()`` and
    ``nn.ReLU(inplace=True)`` give the relevance of the out-of-place forms (the twins already match each)."""
    x = _input(_case("inplace-block"))
    setting = make_setting()
    inplace, out_of_place = (_build(_case(case_id), bias=True) for case_id in ("inplace-block", "out-of-place-block"))
    out_of_place.load_state_dict(inplace.state_dict())
    got = _explain(inplace, x, setting)
    want = _explain(out_of_place, x, setting)
    assert torch.equal(got.output, want.output)
    assert max_relative_error(got.relevance, want.relevance) <= 1e-15


def test_uniform_splits_a_product_in_halves() -> None:
    """``logits = x[:, 0] * x[:, 1]`` under Uniform: ``R_a = R_b = R/2 * z / stabilized(z)`` per element, with R the
    target logit z (R/2 exactly up to the stabilizer)."""

    class Halves(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x[:, 0] * x[:, 1]

    x = torch.randn(BATCH, 2, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = relprop.explain(Halves().eval(), x, TARGET, method="lrp",
                          rule_map=RuleMap([(ops.MUL, rules.Uniform(UNI))])).relevance
    want = torch.zeros_like(x)
    for b, t in enumerate(TARGET.tolist()):
        z = x[b, 0, t] * x[b, 1, t]
        half = float(z) / 2 * float(z) / float(op_literal.stabilized(z, UNI))
        want[b, 0, t] = want[b, 1, t] = half
        assert abs(half - float(z) / 2) <= UNI / 2
    assert max_relative_error(got, want) <= TOLERANCE


class _StarReLU(nn.Module):
    """MetaFormer's StarReLU, ``scale * relu(h) ** n + bias`` on ``h = l1(x)``, with the power written as ``form``."""

    FORMS = {"pow": lambda r: r.pow(2), "operator": lambda r: r**2, "square": torch.square,
             "torch.pow-3.0": lambda r: torch.pow(r, 3.0), "product": lambda r: r * r, "product-3": lambda r: r * r * r}

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.l1, self.head = nn.Linear(5, 6), nn.Linear(6, 3)
        self.scale, self.bias = nn.Parameter(torch.full((6,), 0.8)), nn.Parameter(torch.full((6,), -0.1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.scale * self.FORMS[self.form](F.relu(self.l1(x))) + self.bias)


@pytest.mark.parametrize(("form", "product"), [("pow", "product"), ("operator", "product"), ("square", "product"),
                                               ("torch.pow-3.0", "product-3")])
@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
def test_a_positive_integer_power_is_the_product_of_its_copies(form: str, product: str, preset: str) -> None:
    """``x ** n`` (n a positive integer) is ``x * ... * x``, whose uniform rule gives x all of the relevance: the
    transformer presets explain it as that product (to the product rule's stabilizer). It was a norm statistic,
    held constant, so MetaFormer's StarReLU (caformer, convformer, poolformerv2) was refused: the constant joined
    the path by ``+ bias``."""
    torch.manual_seed(0)
    power, written = _StarReLU(form).double().eval(), _StarReLU(product).double().eval()
    written.load_state_dict(power.state_dict())
    x = _input(_case("residual"))
    got, want = (relprop.explain(m, x, TARGET, method="lrp", preset=preset, stabilizer=1e-15).relevance
                 for m in (power, written))  # the product rule's stabilizer, which the power does not have, tiny
    assert max_relative_error(got, want) <= 1e-10


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_written_as_a_formula_is_gelu(approximate: str) -> None:
    """ESM's ``u * 0.5 * (1 + erf(u / sqrt 2))`` and GPT-2's ``0.5 * u * (1 + tanh(c (u + 0.044715 u ** 3)))``: the
    factor built from erf or tanh cannot be negative, so it is a gate and u takes all, as F.gelu passes it."""

    class Formula(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.head = nn.Linear(5, 6), nn.Linear(6, 3)

        def forward(self, x: Tensor) -> Tensor:
            u = self.l1(x)
            if approximate == "none":
                return self.head(u * 0.5 * (1.0 + torch.erf(u / math.sqrt(2.0))))
            inner = math.sqrt(2.0 / math.pi) * (u + 0.044715 * torch.pow(u, 3.0))
            return self.head(0.5 * u * (1.0 + torch.tanh(inner)))

    class Stock(Formula):
        def forward(self, x: Tensor) -> Tensor:
            return self.head(F.gelu(self.l1(x), approximate=approximate))

    torch.manual_seed(0)
    formula, stock = Formula().double().eval(), Stock().double().eval()
    stock.load_state_dict(formula.state_dict())
    x = _input(_case("residual"))
    assert torch.allclose(formula(x), stock(x), rtol=1e-6 if approximate == "tanh" else 1e-12, atol=0)
    for preset in ("attnlrp", "cp_lrp"):
        got, want = (relprop.explain(m, x, TARGET, method="lrp", preset=preset).relevance for m in (formula, stock))
        assert max_relative_error(got, want) <= 1e-12


@pytest.mark.parametrize("kind, message", [
    ("same", "multiplies 2 tensors on the relevance path"),
    ("broadcast", "multiplies 2 tensors on the relevance path"),
    ("tanh-gate", "multiplies 2 tensors on the relevance path"),
    ("signed-sigmoid", "multiplies 2 tensors on the relevance path"),
    ("divide", "divides by a tensor on the relevance path"),
    ("divide-kwarg", "divides by a tensor on the relevance path"),
])
def test_signal_take_all_refuses(kind: str, message: str) -> None:
    """A product of two path tensors neither of which a sigmoid produced, and a division by a path tensor."""
    model = _build(Case(kind, lambda b: Product(kind, b), 5), bias=True)
    with pytest.raises(relprop.ExplanationError, match=message):
        _explain(model, _input(_case("residual")), make_setting())


class Unknown(Net):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.la, self.lb = nn.Linear(5, 6), nn.Linear(5, 6)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.la(x), self.lb(x)
        if self.kind == "softmax":
            return torch.softmax(a, -1)  # unknown-op: softmax
        return torch.cumsum(a * b.detach(), -1)  # unknown-op: cumsum


def _line_of(marker: str) -> int:
    with open(__file__) as source:
        return next(number for number, line in enumerate(source, 1) if line.rstrip().endswith(marker))


@pytest.mark.parametrize("name", ["softmax", "cumsum"])
def test_unknown_op_names_op_and_where_it_ran(name: str) -> None:
    model = Unknown(name).double().eval()
    with pytest.raises(relprop.ExplanationError) as error:
        _explain(model, _input(_case("residual")), make_setting())
    message = str(error.value)
    assert f"'{name}'" in message
    assert f"{__file__}:{_line_of(f'# unknown-op: {name}')}" in message


class ExciteView(Excite):
    """The classic SENet write-up: the gate is reshaped after its sigmoid, ``h * g.view(-1, 3, 1)``."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.l1(x).view(-1, 3, 4)
        g = torch.sigmoid(self.fc(h.mean(2, keepdim=True)).flatten(1)).view(-1, 3, 1)
        return self.head((h * g).flatten(1))


def test_gate_reshaped_after_its_sigmoid() -> None:
    case = Case("excite-view", lambda b: ExciteView("torch.sigmoid", False, b), 5)
    model = _build(case, bias=True)
    x = _input(case)
    setting = make_setting()
    got = _explain(model, x, setting).relevance
    with torch.no_grad():
        want = model.literal(x, TARGET, setting)
    assert max_relative_error(got, want) <= TOLERANCE


def test_routing_conserves_exactly() -> None:
    """chunk, cat, view, permute, flatten and a permutation index straight from the input to the logits: the
    relevance is the target logit, copied back to the one input element it came from (bit for bit)."""

    class Shuffle(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            c0, c1, c2 = x.chunk(3, dim=1)
            v = torch.cat([c2, c0, c1], 1).view(-1, 3, 4).permute(0, 2, 1)
            return torch.flatten(v, 1)[:, PERMUTATION]

    x = torch.randn(BATCH, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    explanation = relprop.explain(Shuffle().eval(), x, TARGET, method="lrp", preset="epsilon")
    source = Routes(False, True).source()
    want = torch.zeros_like(x)
    for b, t in enumerate(TARGET.tolist()):
        want[b, source[t]] = x[b, source[t]]
    assert torch.equal(explanation.relevance, want)
    assert torch.equal(explanation.relevance.sum(1), explanation.score)


# ------------------------------------------------------------------------------------------------ former bugs
class SequenceBN(Net):
    """A Linear on (batch, T, F) feeding BatchNorm1d(T): the batch norm's channels are the T positions (dim 1), not
    the Linear's output features. T = F = 4."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.lin, self.bn, self.head = nn.Linear(4, 4, bias=bias), nn.BatchNorm1d(4), nn.Linear(16, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.bn(self.lin(x.view(-1, 4, 4))).flatten(1))

    def dense(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The Linear on the flat sample (block-diagonal over positions), and the batch norm's diagonal map."""
        weight, bias = self.lin.weight.detach(), self.lin.bias.detach()
        big_w, big_b = torch.zeros(16, 16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64)
        for t in range(4):
            for f in range(4):
                big_b[4 * t + f] = bias[f]
                for g in range(4):
                    big_w[4 * t + f, 4 * t + g] = weight[f, g]
        return (big_w, big_b, *op_literal.diagonal(*_bn_affine(self.bn), 4))

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        """The pair merged as one affine map: ``W' = D W_big``, ``b' = D b_big + c``."""
        big_w, big_b, diag_w, diag_b = self.dense()
        y = x @ (diag_w @ big_w).T + (diag_w @ big_b + diag_b)
        relevance = back(self.head, y, start(lin(self.head, y), target), setting)
        return z_rule(setting.linear, x, diag_w @ big_w, diag_w @ big_b + diag_b, relevance)

    def unmerged(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        """The Linear and the batch norm's diagonal map, each with its own epsilon rule."""
        big_w, big_b, diag_w, diag_b = self.dense()
        h = x @ big_w.T + big_b
        y = h @ diag_w.T + diag_b
        relevance = back(self.head, y, start(lin(self.head, y), target), setting)
        relevance = literal.epsilon(h, diag_w, diag_b, relevance, setting.stabilizer)
        return z_rule(setting.linear, x, big_w, big_b, relevance)


def test_batch_norm_after_linear_on_a_sequence() -> None:
    case = Case("sequence-bn", SequenceBN, 16)
    model = _build(case, bias=True)
    x = _input(case)
    setting = make_setting()
    got = _explain(model, x, setting).relevance
    with torch.no_grad():
        merged = model.literal(x, TARGET, setting)  # type: ignore[operator]
        unmerged = model.unmerged(x, TARGET, setting)  # type: ignore[operator]
    assert min(max_relative_error(got, merged), max_relative_error(got, unmerged)) <= TOLERANCE


class ViewInPlace(Net):
    """``v = h.view(-1, 2, 3); v = v.mul_(3.0)`` changes h as well (a view shares its base's storage)."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.l1, self.head = nn.Linear(5, 6, bias=bias), nn.Linear(6, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.l1(x)
        v = h.view(-1, 2, 3)
        v = v.mul_(3.0)
        return self.head(h)

    def literal(self, x: Tensor, target: Tensor, setting: Setting) -> Tensor:
        h = 3.0 * lin(self.l1, x)
        relevance = back(self.head, h, start(lin(self.head, h), target), setting)
        return back(self.l1, x, relevance, setting)  # the product with a constant passes all relevance


def test_inplace_op_on_a_view_reaches_its_base() -> None:
    case = Case("view-inplace", ViewInPlace, 5)
    model = _build(case, bias=True)
    x = _input(case)
    setting = make_setting()
    try:
        got = _explain(model, x, setting).relevance
    except relprop.ExplanationError as error:  # refusing is as good as explaining the real function
        assert "in-place" in str(error)
        return
    with torch.no_grad():
        want = model.literal(x, TARGET, setting)  # type: ignore[operator]
    assert max_relative_error(got, want) <= TOLERANCE


class _Affine(nn.Module):
    """timm's affine layer: ``torch.addcmul(beta, alpha, h, value=0.5)``, or written out (``written``); ``squared``
    multiplies h by itself (two factors on the path)."""

    def __init__(self, written: bool, squared: bool = False) -> None:
        super().__init__()
        self.written, self.squared = written, squared
        self.l1, self.head = nn.Linear(5, 6), nn.Linear(6, 3)
        self.alpha, self.beta = nn.Parameter(torch.randn(6)), nn.Parameter(torch.randn(6))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.l1(x))
        factor = h if self.squared else self.alpha
        if self.written:
            return self.head(self.beta + 0.5 * (factor * h))  # type: ignore[no-any-return]
        return self.head(torch.addcmul(self.beta, factor, h, value=0.5))  # type: ignore[no-any-return]


@pytest.mark.parametrize("preset", ["epsilon", "epsilon_plus_flat", "attnlrp"])
def test_addcmul_is_a_sum_of_its_term_and_its_product(preset: str) -> None:
    """torch.addcmul had no rule (timm's resmlp and ConvNeXt V2 were refused); with one factor on the path it is a
    sum of two terms, each its share, as the layer written out gets it; with two it raises, pointing there."""
    torch.manual_seed(0)
    fused, written = _Affine(written=False).double().eval(), _Affine(written=True).double().eval()
    written.load_state_dict(fused.state_dict())
    x = torch.randn(BATCH, 5, dtype=torch.float64)
    want = relprop.explain(written, x, TARGET, method="lrp", preset=preset).relevance
    got = relprop.explain(fused, x, TARGET, method="lrp", preset=preset).relevance
    assert max_relative_error(got, want) <= TOLERANCE
    squared = _Affine(written=False, squared=True).double().eval()
    with pytest.raises(relprop.ExplanationError, match=r"'addcmul' at .*test_op_literal.py:\d+ multiplies two "):
        relprop.explain(squared, x, TARGET, method="lrp", preset=preset)
