"""Literal twins of relprop's rules at functional-op sites, written from the formulas, not from relprop's code.

Every sample is a flat vector. A linear operation (a sum, a mean, a pooling, a broadcast, ``alpha * b``) is an
explicit Jacobian matrix ``J`` of shape (out, in) for one sample, built by plain loops over indices, so no torch
reduction or pooling is involved in the twin; relevance arrives as ``R`` (batch, out).

- Proportional: ``z = sum_i J_i x_i + c``, ``R_i = x_i * J_i^T (R / stabilized(z))`` (a constant c absorbs its share).
- SignalTakeAll: the signal gets all of R, summed over the dimensions along which it was broadcast (``B^T R`` with
  ``B`` the 0/1 broadcast matrix); the gate gets nothing.
- Uniform: ``z = prod_i B_i x_i`` element-wise, ``R_i = x_i * J_i^T (R / stabilized(z)) / n`` with
  ``J_i = diag(prod_{j != i} B_j x_j) B_i`` (for ``a * b``: ``R_a = R_b = R/2 * z / stabilized(z)``).
- DetachedNorm: ``y = J x + b`` with the scale ``1/sigma`` held constant, ``J = diag(w / sigma) (I - 1/N)`` per
  normalised block (no centring for RMS norm); ``R_x = x * J^T (R / stabilized(y))``.
- Batch norm in eval mode: ``y = a x + c`` with ``a = gamma / sqrt(var + eps)``, ``c = beta - a mean``; merged with
  the layer ``x W^T + b`` that feeds it, ``W' = a W`` (row-wise) and ``b' = a (b - mean) + beta``.
- Winner-take-all: each window's relevance goes to the member holding its maximum.
- Routing: ``R_in[source[k]] += R_out[k]`` for an output element k that copies input element ``source[k]``.

``stabilized(d, eps) = d + eps`` where ``d >= 0`` (zero counts as positive), ``d - eps`` where ``d < 0``.
Meant for float64 and small sizes: slow on purpose.

>>> J = reduction_jacobian((2, 2), dims=(1,), mean=False)
>>> J
tensor([[1., 1., 0., 0.],
        [0., 0., 1., 1.]], dtype=torch.float64)
>>> x = torch.tensor([[1.0, 3.0, 2.0, 2.0]], dtype=torch.float64)
>>> proportional([(x, J)], 0.0, torch.tensor([[4.0, 8.0]], dtype=torch.float64), 0.0)[0]
tensor([[1., 3., 4., 4.]], dtype=torch.float64)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "stabilized", "flat_index", "positions", "identity", "reduction_jacobian", "broadcast_jacobian",
    "avg_pool2d_jacobian", "adaptive_avg_pool2d_jacobian", "proportional", "signal_take_all", "uniform",
    "layer_norm_jacobian", "group_norm_jacobian", "rms_norm_jacobian", "detached_norm", "batch_norm_affine",
    "merge_batch_norm", "diagonal", "max_windows", "pool2d_windows", "winner_take_all", "route",
]

DTYPE = torch.float64


def stabilized(d: Tensor, eps: float) -> Tensor:
    """``d + eps`` where ``d >= 0``, ``d - eps`` where ``d < 0``."""
    return torch.where(d >= 0, d + eps, d - eps)


def positions(shape: Sequence[int]) -> list[tuple[int, ...]]:
    """All multi-indices of ``shape`` in row-major (flattening) order."""
    return list(itertools.product(*(range(n) for n in shape)))


def flat_index(index: Sequence[int], shape: Sequence[int]) -> int:
    """Row-major flat position of ``index`` in ``shape``."""
    flat = 0
    for i, n in zip(index, shape):
        flat = flat * n + i
    return flat


def identity(n: int, scale: float = 1.0) -> Tensor:
    """``scale * I`` (n, n), written out."""
    matrix = torch.zeros(n, n, dtype=DTYPE)
    for i in range(n):
        matrix[i, i] = scale
    return matrix


# ------------------------------------------------------------------------------------ Jacobians of linear ops
def reduction_jacobian(shape: Sequence[int], dims: Sequence[int], mean: bool) -> Tensor:
    """The sum (or mean) over ``dims`` of one sample of ``shape``: out element = the kept indices (keepdim or not)."""
    dims = sorted(d % len(shape) for d in dims)
    kept = [d for d in range(len(shape)) if d not in dims]
    out_shape = [shape[d] for d in kept]
    count = math.prod(shape[d] for d in dims)
    matrix = torch.zeros(math.prod(out_shape), math.prod(shape), dtype=DTYPE)
    for index in positions(shape):
        row = flat_index([index[d] for d in kept], out_shape)
        matrix[row, flat_index(index, shape)] += 1.0 / count if mean else 1.0
    return matrix


def broadcast_jacobian(in_shape: Sequence[int], out_shape: Sequence[int]) -> Tensor:
    """0/1 matrix of an operand of ``in_shape`` broadcast to ``out_shape`` (shapes aligned on the right)."""
    lead = len(out_shape) - len(in_shape)
    matrix = torch.zeros(math.prod(out_shape), math.prod(in_shape), dtype=DTYPE)
    for index in positions(out_shape):
        source = [0 if in_shape[d] == 1 else index[lead + d] for d in range(len(in_shape))]
        matrix[flat_index(index, out_shape), flat_index(source, in_shape)] = 1.0
    return matrix


def avg_pool2d_jacobian(
    shape: Sequence[int], kernel: int, stride: int, padding: int = 0, count_include_pad: bool = True
) -> Tensor:
    """Average pooling of one sample (channels, height, width), square kernel, floor mode, zero padding."""
    channels, height, width = shape
    out_h = (height + 2 * padding - kernel) // stride + 1
    out_w = (width + 2 * padding - kernel) // stride + 1
    matrix = torch.zeros(channels * out_h * out_w, channels * height * width, dtype=DTYPE)
    for c, i, j in positions((channels, out_h, out_w)):
        rows = [i * stride - padding + u for u in range(kernel)]
        cols = [j * stride - padding + v for v in range(kernel)]
        members = [(r, q) for r in rows for q in cols if 0 <= r < height and 0 <= q < width]
        divisor = kernel * kernel if count_include_pad else len(members)
        for r, q in members:
            matrix[flat_index((c, i, j), (channels, out_h, out_w)), flat_index((c, r, q), shape)] = 1.0 / divisor
    return matrix


def adaptive_avg_pool2d_jacobian(shape: Sequence[int], out_size: tuple[int, int]) -> Tensor:
    """Adaptive average pooling: output cell i averages rows floor(i H / oH) .. ceil((i + 1) H / oH) - 1."""
    channels, height, width = shape
    out_h, out_w = out_size
    matrix = torch.zeros(channels * out_h * out_w, channels * height * width, dtype=DTYPE)
    for c, i, j in positions((channels, out_h, out_w)):
        rows = range((i * height) // out_h, -((-(i + 1) * height) // out_h))
        cols = range((j * width) // out_w, -((-(j + 1) * width) // out_w))
        for r in rows:
            for q in cols:
                matrix[flat_index((c, i, j), (channels, out_h, out_w)), flat_index((c, r, q), shape)] = (
                    1.0 / (len(rows) * len(cols))
                )
    return matrix


# ------------------------------------------------------------------------------------ element-wise rules
def proportional(terms: Sequence[tuple[Tensor, Tensor]], constant: Tensor | float, relevance: Tensor,
                 eps: float) -> list[Tensor]:
    """``z = sum_i x_i J_i^T + constant``; ``R_i = x_i * (R / stabilized(z)) J_i`` for terms ``(x_i, J_i)``."""
    z = sum(x @ jacobian.T for x, jacobian in terms) + constant
    s = relevance / stabilized(z, eps)  # type: ignore[arg-type]
    return [x * (s @ jacobian) for x, jacobian in terms]


def signal_take_all(relevance: Tensor, signal_shape: Sequence[int], out_shape: Sequence[int]) -> Tensor:
    """The signal's relevance: all of R, summed over the dimensions along which the signal was broadcast."""
    return relevance @ broadcast_jacobian(signal_shape, out_shape)


def uniform(factors: Sequence[tuple[Tensor, Tensor]], relevance: Tensor, eps: float) -> list[Tensor]:
    """Factors ``(x_i, B_i)`` (flat values, broadcast matrix to the output): ``R_i = x_i J_i^T s / n``."""
    values = [x @ broadcast.T for x, broadcast in factors]  # each factor broadcast to the output, (batch, out)
    z = torch.ones_like(values[0])
    for value in values:
        z = z * value
    s = relevance / stabilized(z, eps) / len(factors)
    out = []
    for i, (x, broadcast) in enumerate(factors):
        others = torch.ones_like(z)
        for j, value in enumerate(values):
            if j != i:
                others = others * value
        out.append(x * ((s * others) @ broadcast))  # J_i = diag(others) B_i
    return out


# ------------------------------------------------------------------------------------ normalisation
def _centring(n: int) -> Tensor:
    """``I - 1/N``."""
    matrix = torch.zeros(n, n, dtype=DTYPE)
    for i in range(n):
        for j in range(n):
            matrix[i, j] = (1.0 if i == j else 0.0) - 1.0 / n
    return matrix


def _block(values: Tensor, eps: float, centre: bool) -> tuple[Tensor, float]:
    """``(C, sigma)`` of one normalised block: C = I - 1/N (or I), sigma the biased std (or rms) plus eps."""
    n = len(values)
    if centre:
        mean = sum(float(v) for v in values) / n
        variance = sum((float(v) - mean) ** 2 for v in values) / n
        return _centring(n), math.sqrt(variance + eps)
    return identity(n), math.sqrt(sum(float(v) ** 2 for v in values) / n + eps)


def layer_norm_jacobian(x: Tensor, normalized_numel: int, weight: Tensor | None, eps: float, centre: bool = True
                        ) -> Tensor:
    """J of layer norm (``centre``) or RMS norm for one flat sample; blocks of ``normalized_numel`` consecutive
    values share a mean and sigma, ``weight`` (normalized_numel,) scales each position of a block."""
    n = len(x)
    matrix = torch.zeros(n, n, dtype=DTYPE)
    for start in range(0, n, normalized_numel):
        stop = start + normalized_numel
        centring, sigma = _block(x[start:stop], eps, centre)
        for i in range(normalized_numel):
            scale = (1.0 if weight is None else float(weight[i])) / sigma
            for j in range(normalized_numel):
                matrix[start + i, start + j] = scale * centring[i, j]
    return matrix


def rms_norm_jacobian(x: Tensor, normalized_numel: int, weight: Tensor | None, eps: float) -> Tensor:
    """J of RMS norm for one flat sample: ``diag(w / rms)`` per block, ``rms = sqrt(mean(x^2) + eps)``."""
    return layer_norm_jacobian(x, normalized_numel, weight, eps, centre=False)


def group_norm_jacobian(x: Tensor, shape: Sequence[int], groups: int, weight: Tensor | None, eps: float) -> Tensor:
    """J of group norm for one flat sample of ``shape`` (channels, *spatial): a group is C/G consecutive channels
    with all their positions; ``weight`` (channels,) scales per channel."""
    channels = shape[0]
    per_channel = math.prod(shape[1:])
    size = channels // groups * per_channel
    matrix = torch.zeros(len(x), len(x), dtype=DTYPE)
    for g in range(groups):
        start = g * size
        centring, sigma = _block(x[start:start + size], eps, True)
        for i in range(size):
            channel = (start + i) // per_channel
            scale = (1.0 if weight is None else float(weight[channel])) / sigma
            for j in range(size):
                matrix[start + i, start + j] = scale * centring[i, j]
    return matrix


def detached_norm(x: Tensor, jacobians: Sequence[Tensor], bias: Tensor | None, relevance: Tensor, eps: float
                  ) -> tuple[Tensor, Tensor]:
    """``(R_x, y)``: ``y = J x + b`` per sample, ``R_x = x * J^T (R / stabilized(y))``."""
    rows_r, rows_y = [], []
    for b in range(len(x)):
        y = jacobians[b] @ x[b] + (0.0 if bias is None else bias)
        s = relevance[b] / stabilized(y, eps)
        rows_r.append(x[b] * (jacobians[b].T @ s))
        rows_y.append(y)
    return torch.stack(rows_r), torch.stack(rows_y)


# ------------------------------------------------------------------------------------ batch norm
def batch_norm_affine(mean: Tensor, var: Tensor, gamma: Tensor | None, beta: Tensor | None, eps: float
                      ) -> tuple[Tensor, Tensor]:
    """``(a, c)`` per channel: ``a = gamma / sqrt(var + eps)``, ``c = beta - a mean``."""
    a = torch.tensor([(1.0 if gamma is None else float(gamma[k])) / math.sqrt(float(var[k]) + eps)
                      for k in range(len(var))], dtype=DTYPE)
    c = torch.tensor([(0.0 if beta is None else float(beta[k])) - float(a[k]) * float(mean[k])
                      for k in range(len(var))], dtype=DTYPE)
    return a, c


def merge_batch_norm(weight: Tensor, bias: Tensor | None, a: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """A dense layer (out, in) whose outputs are channel-major (out = channels * positions), then the batch norm:
    row r of channel k becomes ``a_k W_r``, its bias ``a_k b_r + c_k`` (= ``a_k (b_r - mean_k) + beta_k``)."""
    per_channel = weight.shape[0] // len(a)
    merged_w = torch.zeros_like(weight)
    merged_b = torch.zeros(weight.shape[0], dtype=DTYPE)
    for row in range(weight.shape[0]):
        k = row // per_channel
        merged_w[row] = a[k] * weight[row]
        merged_b[row] = a[k] * (0.0 if bias is None else bias[row]) + c[k]
    return merged_w, merged_b


def diagonal(a: Tensor, c: Tensor, positions_per_channel: int) -> tuple[Tensor, Tensor]:
    """The eval batch norm of one sample as a dense diagonal map: weight (n, n), bias (n,)."""
    n = len(a) * positions_per_channel
    weight, bias = torch.zeros(n, n, dtype=DTYPE), torch.zeros(n, dtype=DTYPE)
    for i in range(n):
        weight[i, i] = a[i // positions_per_channel]
        bias[i] = c[i // positions_per_channel]
    return weight, bias


# ------------------------------------------------------------------------------------ max and routing
def max_windows(shape: Sequence[int], dims: Sequence[int]) -> list[list[int]]:
    """Windows of a max over ``dims``: per kept index (in output order), the flat indices of its members."""
    dims = sorted(d % len(shape) for d in dims)
    kept = [d for d in range(len(shape)) if d not in dims]
    windows: list[list[int]] = [[] for _ in range(math.prod(shape[d] for d in kept))]
    for index in positions(shape):
        windows[flat_index([index[d] for d in kept], [shape[d] for d in kept])].append(flat_index(index, shape))
    return windows


def pool2d_windows(shape: Sequence[int], kernel: int, stride: int) -> list[list[int]]:
    """Windows of a 2-d pooling without padding over one sample (channels, height, width)."""
    channels, height, width = shape
    out_h, out_w = (height - kernel) // stride + 1, (width - kernel) // stride + 1
    return [[flat_index((c, i * stride + u, j * stride + v), shape) for u in range(kernel) for v in range(kernel)]
            for c, i, j in positions((channels, out_h, out_w))]


def winner_take_all(x: Tensor, windows: Sequence[Sequence[int]], relevance: Tensor) -> Tensor:
    """Each window's relevance to the member holding the (unique) maximum."""
    out = torch.zeros_like(x)
    for b in range(len(x)):
        for k, members in enumerate(windows):
            winner = members[0]
            for j in members:
                if float(x[b, j]) > float(x[b, winner]):
                    winner = j
            out[b, winner] += relevance[b, k]
    return out


def route(relevance: Tensor, source: Sequence[int], in_size: int) -> Tensor:
    """``R_in[source[k]] += R_out[k]``: output element k is a copy of input element ``source[k]``."""
    out = torch.zeros(len(relevance), in_size, dtype=relevance.dtype)
    for k, j in enumerate(source):
        out[:, j] += relevance[:, k]
    return out
