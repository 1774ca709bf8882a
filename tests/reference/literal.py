"""Literal twins of the LRP rules, written from the formulas (SPEC.md; Bach et al. 2015; Montavon et al. 2017,
2019; Lapuschkin et al. 2019; Andeol et al. 2021), not from relprop's code.

Every linear map is handled as a dense matrix ``weight`` (out, in) acting on flattened samples ``x`` (batch, in).
A rule is a table of contributions ``c[b, j, k]`` of input ``j`` to output ``k`` and a denominator ``d[b, k]``::

    R_j = sum_k c_jk / stabilized(d_k) * R_k

Convolutions and pooling layers are first unrolled into their dense matrix by explicit loops over output positions
and kernel offsets (:func:`conv_as_dense`, :func:`pool_windows`), so no torch convolution is involved. Everything is
meant for float64 and small sizes (it is slow on purpose).

Conventions (the ones relprop documents): a stabilizer ``eps`` moves ``d`` away from zero in the direction of its
sign, zero counting as positive; the weight modifier of z+/alpha-beta/gamma also applies to the bias, which joins
the denominator of its sign; zB's bias terms cancel; flat and w^2 ignore the bias unless told otherwise.

>>> x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
>>> w = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
>>> epsilon(x, w, None, torch.tensor([[3.0]], dtype=torch.float64), 0.0)
tensor([[1., 2.]], dtype=torch.float64)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "stabilized", "redistribute", "epsilon", "zplus", "alpha_beta", "gamma", "zbox", "wsquare", "flat",
    "conv_as_dense", "pool_windows", "proportional_pool", "winner_take_all",
]


def stabilized(d: Tensor, eps: float) -> Tensor:
    """``d + eps`` where ``d >= 0``, ``d - eps`` where ``d < 0``; LRP-0 (``eps = 0``) divides by 1 where ``d = 0``."""
    if eps == 0:
        return torch.where(d == 0, torch.ones_like(d), d)
    return torch.where(d >= 0, d + eps, d - eps)


def redistribute(c: Tensor, d: Tensor, relevance: Tensor, eps: float) -> Tensor:
    """``R_j = sum_k c[b, j, k] / stabilized(d[b, k]) R[b, k]`` for contributions c (batch, in, out)."""
    return (c * (relevance / stabilized(d, eps))[:, None, :]).sum(2)


def _pos(t: Tensor) -> Tensor:
    return torch.where(t > 0, t, torch.zeros_like(t))


def _neg(t: Tensor) -> Tensor:
    return torch.where(t < 0, t, torch.zeros_like(t))


def _contributions(x: Tensor, weight: Tensor) -> Tensor:
    """``c[b, j, k] = x[b, j] * weight[k, j]``: (batch, in, out)."""
    return x[:, :, None] * weight.T[None, :, :]


def _bias_row(bias: Tensor | None, batch: int, like: Tensor) -> Tensor:
    if bias is None:
        return torch.zeros(batch, like.shape[0], dtype=like.dtype)
    return bias[None, :].expand(batch, -1)


def epsilon(x: Tensor, weight: Tensor, bias: Tensor | None, relevance: Tensor, eps: float) -> Tensor:
    """LRP-epsilon (LRP-0 for eps = 0): ``c_jk = x_j w_jk``, ``d_k = sum_j x_j w_jk + b_k``."""
    c = _contributions(x, weight)
    return redistribute(c, c.sum(1) + _bias_row(bias, len(x), weight), relevance, eps)


def zplus(x: Tensor, weight: Tensor, bias: Tensor | None, relevance: Tensor, eps: float) -> Tensor:
    """z+ generalised to signed inputs: ``c_jk = x+_j w+_jk + x-_j w-_jk``, ``d_k = sum_j c_jk + b+_k``."""
    c = _contributions(_pos(x), _pos(weight)) + _contributions(_neg(x), _neg(weight))
    b_pos = _bias_row(None if bias is None else _pos(bias), len(x), weight)
    return redistribute(c, c.sum(1) + b_pos, relevance, eps)


def alpha_beta(
    x: Tensor, weight: Tensor, bias: Tensor | None, relevance: Tensor, alpha: float, beta: float, eps: float
) -> Tensor:
    """``R_j = sum_k (alpha p_jk / (sum_j p_jk + b+_k) - beta n_jk / (sum_j n_jk + b-_k)) R_k``.

    ``p_jk = x+ w+ + x- w-`` are the positive contributions, ``n_jk = x+ w- + x- w+`` the negative ones.
    """
    p = _contributions(_pos(x), _pos(weight)) + _contributions(_neg(x), _neg(weight))
    n = _contributions(_pos(x), _neg(weight)) + _contributions(_neg(x), _pos(weight))
    b_pos = _bias_row(None if bias is None else _pos(bias), len(x), weight)
    b_neg = _bias_row(None if bias is None else _neg(bias), len(x), weight)
    positive = redistribute(p, p.sum(1) + b_pos, relevance, eps)
    negative = redistribute(n, n.sum(1) + b_neg, relevance, eps)
    return alpha * positive - beta * negative


def gamma(x: Tensor, weight: Tensor, bias: Tensor | None, relevance: Tensor, g: float, eps: float) -> Tensor:
    """Generalised gamma rule: favour contributions of the same sign as the output ``z_k = sum_j x_j w_jk + b_k``.

    For ``z_k > 0``: ``c_jk = x+ (w + g w+) + x- (w + g w-)``, bias ``b + g b+``; for ``z_k < 0`` the mirror image
    ``c_jk = x+ (w + g w-) + x- (w + g w+)``, bias ``b + g b-``; outputs with ``z_k = 0`` pass nothing.
    """
    up, down = weight + g * _pos(weight), weight + g * _neg(weight)
    c_up = _contributions(_pos(x), up) + _contributions(_neg(x), down)
    c_down = _contributions(_pos(x), down) + _contributions(_neg(x), up)
    z = _contributions(x, weight).sum(1) + _bias_row(bias, len(x), weight)
    b_up = _bias_row(None if bias is None else bias + g * _pos(bias), len(x), weight)
    b_down = _bias_row(None if bias is None else bias + g * _neg(bias), len(x), weight)
    zeros = torch.zeros_like(relevance)
    relevance_up = torch.where(z > 0, relevance, zeros)
    relevance_down = torch.where(z < 0, relevance, zeros)
    return (redistribute(c_up, c_up.sum(1) + b_up, relevance_up, eps)
            + redistribute(c_down, c_down.sum(1) + b_down, relevance_down, eps))


def zbox(
    x: Tensor, weight: Tensor, relevance: Tensor, low: Tensor | float, high: Tensor | float, eps: float
) -> Tensor:
    """zB: ``c_jk = x_j w_jk - l_j w+_jk - h_j w-_jk``, ``d_k = sum_j c_jk`` (the bias terms cancel).

    ``low`` and ``high`` are scalars or per-feature tensors with one entry per flattened input.
    """
    low_t = torch.as_tensor(low, dtype=x.dtype).expand(x.shape[1])[None].expand_as(x)
    high_t = torch.as_tensor(high, dtype=x.dtype).expand(x.shape[1])[None].expand_as(x)
    c = _contributions(x, weight) - _contributions(low_t, _pos(weight)) - _contributions(high_t, _neg(weight))
    return redistribute(c, c.sum(1), relevance, eps)


def wsquare(weight: Tensor, relevance: Tensor, eps: float, bias: Tensor | None = None) -> Tensor:
    """w^2: ``c_jk = w_jk^2``, ``d_k = sum_j w_jk^2 (+ b_k^2 if a bias is given)``.

    For a convolution every connected pair ``(j, k)`` holds one kernel entry, so ``weight**2`` is exact.
    """
    batch = relevance.shape[0]
    c = (weight**2).T[None].expand(batch, -1, -1)
    d = c.sum(1) + (0 if bias is None else (bias**2)[None])
    return redistribute(c, d, relevance, eps)


def flat(connectivity: Tensor, relevance: Tensor, eps: float) -> Tensor:
    """flat: ``c_jk = 1`` for every input j in the receptive field of k, ``d_k`` = the size of that field."""
    c = connectivity.T[None].expand(relevance.shape[0], -1, -1)
    return redistribute(c, c.sum(1), relevance, eps)


def _same_padding(kernel: Sequence[int], dilation: Sequence[int]) -> list[tuple[int, int]]:
    pads = []
    for k, dil in zip(kernel, dilation):
        total = dil * (k - 1)
        pads.append((total // 2, total - total // 2))
    return pads


def conv_as_dense(conv: nn.Module, in_shape: Sequence[int], pads: Sequence[tuple[int, int]] | None = None,
                  ) -> tuple[Tensor, Tensor | None, Tensor, tuple[int, ...]]:
    """Unroll ``conv`` (Conv1d/2d/3d) for one sample of shape (channels, *spatial) into a dense matrix.

    Returns ``(weight, bias, connectivity, out_shape)``: weight (out_flat, in_flat), the bias repeated per output
    position, the 0/1 matrix of connected pairs and the output shape (channels, *spatial). Supports stride,
    dilation, groups, integer/tuple/'same'/'valid' padding and the 'zeros' and 'circular' padding modes; ``pads``
    (before, after) per spatial dimension, zeros, replaces the layer's own padding (one computed per call).
    """
    w = conv.weight.detach()
    c_out, c_in_group = w.shape[:2]
    kernel = tuple(w.shape[2:])
    dims = len(kernel)
    channels, spatial = in_shape[0], tuple(in_shape[1:])
    stride, dilation = conv.stride, conv.dilation
    if pads is not None:
        pads = list(pads)
    elif conv.padding == "same":
        pads = _same_padding(kernel, dilation)
    elif conv.padding == "valid":
        pads = [(0, 0)] * dims
    else:
        pads = [(p, p) for p in conv.padding]
    out_spatial = tuple(
        (spatial[d] + pads[d][0] + pads[d][1] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1
        for d in range(dims)
    )
    out_per_group = c_out // conv.groups
    in_size, out_size = channels * math.prod(spatial), c_out * math.prod(out_spatial)
    dense = torch.zeros(out_size, in_size, dtype=w.dtype)
    connectivity = torch.zeros(out_size, in_size, dtype=w.dtype)

    def in_index(channel: int, position: Sequence[int]) -> int:
        index = channel
        for d in range(dims):
            index = index * spatial[d] + position[d]
        return index

    for co in range(c_out):
        group = co // out_per_group
        for o_pos in itertools.product(*(range(n) for n in out_spatial)):
            row = co
            for d in range(dims):
                row = row * out_spatial[d] + o_pos[d]
            for ci_local in range(c_in_group):
                ci = group * c_in_group + ci_local
                for q in itertools.product(*(range(k) for k in kernel)):
                    position = [o_pos[d] * stride[d] + q[d] * dilation[d] - pads[d][0] for d in range(dims)]
                    if conv.padding_mode == "circular":
                        position = [p % spatial[d] for d, p in enumerate(position)]
                    elif any(p < 0 or p >= spatial[d] for d, p in enumerate(position)):
                        continue  # zero padding: no input there
                    column = in_index(ci, position)
                    dense[row, column] += w[(co, ci_local, *q)]
                    connectivity[row, column] = 1.0
    bias = None
    if conv.bias is not None:
        bias = conv.bias.detach().repeat_interleave(math.prod(out_spatial))
    return dense, bias, connectivity, (c_out, *out_spatial)


def pool_windows(in_shape: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> list[list[int]]:
    """Flat input indices of every pooling window (no padding), in the order of the flattened output."""
    channels, spatial = in_shape[0], tuple(in_shape[1:])
    dims = len(spatial)
    out_spatial = [(spatial[d] - kernel[d]) // stride[d] + 1 for d in range(dims)]
    windows = []
    for c in range(channels):
        for o_pos in itertools.product(*(range(n) for n in out_spatial)):
            members = []
            for q in itertools.product(*(range(k) for k in kernel)):
                index = c
                for d in range(dims):
                    index = index * spatial[d] + o_pos[d] * stride[d] + q[d]
                members.append(index)
            windows.append(members)
    return windows


def proportional_pool(x: Tensor, windows: list[list[int]], relevance: Tensor, eps: float) -> Tensor:
    """Relevance of each window in proportion to its members: the epsilon rule of the window average.

    ``c_jk = x_j / |window k|`` for members j of window k, ``d_k = sum_j c_jk`` (the window mean). For a sum
    pooling the factor ``1/|window|`` cancels except in the stabilizer, which acts on the mean.
    """
    c = torch.zeros(x.shape[0], x.shape[1], len(windows), dtype=x.dtype)
    for k, members in enumerate(windows):
        for j in members:
            c[:, j, k] = x[:, j] / len(members)
    return redistribute(c, c.sum(1), relevance, eps)


def winner_take_all(x: Tensor, windows: list[list[int]], relevance: Tensor) -> Tensor:
    """Max pooling: each window's relevance goes entirely to the member holding the maximum."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for k, members in enumerate(windows):
            winner = max(members, key=lambda j: float(x[b, j]))
            out[b, winner] += relevance[b, k]
    return out
