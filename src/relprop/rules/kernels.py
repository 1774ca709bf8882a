"""Fast kernels of the z-rules: the same relevance as each rule's definition, with fewer passes and temporaries.

Registered per exact rule class (:func:`relprop.rules.affine.fast_kernel`); a kernel returns None where its
shortcut does not apply and the rule's :meth:`~relprop.rules.ZRule.reference` runs instead. The identities each
kernel uses are written beside it; ``tests/unit/test_rules.py`` checks every kernel against the definition.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import batched, has_relprop_affine
from .affine import _Affine, _divide, _has_negative, _negative, _positive, _stacked_transpose, _uniform, fast_kernel
from .linear import Epsilon, Flat, Gamma, ZBox, ZPlus

__all__: list[str] = []


@fast_kernel(Epsilon)
def _epsilon(rule: Epsilon, affine: _Affine, x: Tensor, output: Tensor, relevance_out: Tensor) -> Tensor | None:
    """The layer's own output is ``z = x W^T + b``: no forward pass (unless the rule drops the bias)."""
    if not rule.bias and affine.bias is not None or has_relprop_affine(affine.module):
        z = affine.forward(x, affine.weight, rule._bias(affine.bias))
    else:
        z = output
    s = rule.stabilize(z)
    s = relevance_out / s if s is z else _divide(relevance_out, s)  # never write into the module's output
    return affine.transpose(s, affine.weight, x).mul_(x)


@fast_kernel(ZPlus)
def _zplus(rule: ZPlus, affine: _Affine, x: Tensor, output: Tensor, relevance_out: Tensor) -> Tensor | None:
    """x >= 0: one term, ``z = x w+ + b+ >= 0``, so ``stabilize(z) = z + eps``."""
    if _has_negative(x):
        return None
    w_pos = _positive(affine.weight)
    z = affine.forward(x, w_pos, _positive(affine.bias) if affine.bias is not None and rule.bias else None)
    s = _divide(relevance_out, z.add_(rule.stabilizer))
    return affine.transpose(s, w_pos, x).mul_(x)


@fast_kernel(Gamma)
def _gamma(rule: Gamma, affine: _Affine, x: Tensor, output: Tensor, relevance_out: Tensor) -> Tensor | None:
    """x >= 0 (e.g. after a ReLU).

    With ``q = x w+ + b+ >= 0`` and ``z = x w + b``, the two denominators are ``z + gamma q > 0`` where z > 0 and
    ``(1 + gamma) z - gamma q < 0`` where z < 0. With ``m = |sign(z)|`` and ``c = sign(z) (1 + gamma / 2) - m gamma
    / 2`` (1 where z > 0, -(1 + gamma) where z < 0, 0 where z = 0), both magnitudes are ``d = gamma q + c z``, so
    with ``s = R / (d + eps)``: ``R_in = x (w^T (c s) + w+^T (gamma m s))``. Arithmetic kernels only, and four
    temporaries of the output's size (allocation dominates on CPU).
    """
    if _has_negative(x) or (affine.bias is not None and not rule.bias):
        return None
    gamma, eps = rule.gamma, rule.stabilizer
    weight, bias = affine.weight, affine.bias
    c = output.sign()
    if not batched(relevance_out) and not bool(c.sub(1).mul_(relevance_out).any()):
        # No relevance where z <= 0, the usual case below a ReLU whose output feeds z-rules (they give a
        # unit that outputs 0 no relevance): only the z > 0 group is active, with weights w + gamma w+.
        # One forward and one transpose; |.| + eps keeps the unused denominators (z <= 0) away from zero.
        w_up = rule._lift(weight, _positive(weight))
        z_up = affine.forward(x, w_up, None if bias is None else rule._lift(bias, _positive(bias)))
        s = _divide(relevance_out, z_up.abs_().add_(eps))
        return affine.transpose(s, w_up, x).mul_(x)
    w_pos = _positive(weight)
    q = affine.forward(x, w_pos, None if bias is None else _positive(bias))
    m = c.abs()
    c.mul_(1 + gamma / 2).add_(m, alpha=-gamma / 2)
    s = torch.mul(output, c).add_(q, alpha=gamma).add_(eps)
    del q
    s = _divide(relevance_out, s)
    if batched(s):  # c and m are shared by the targets that vmap batches: they cannot take s in place
        c, m = c * s, m * s
    else:
        c, m = c.mul_(s), m.mul_(s)
    return affine.transpose(c, weight, x).add_(affine.transpose(m, w_pos.mul_(gamma), x)).mul_(x)


@fast_kernel(ZBox)
def _zbox(rule: ZBox, affine: _Affine, x: Tensor, output: Tensor, relevance_out: Tensor) -> Tensor | None:
    """Bounds shared by the batch: ``z = x w + b - (l w+ + b+) - (h w- + b-)`` with the bound terms computed once,
    and ``R = x w^T s - l w+^T s - h w-^T s = (x - h) w^T s + (h - l) w+^T s``."""
    if (affine.bias is not None and not rule.bias) or not (_uniform(rule.low, x) and _uniform(rule.high, x)):
        return None
    low, high = rule._bound(rule.low, x[:1]), rule._bound(rule.high, x[:1])  # (1, ...) shared by the batch
    weight, bias = affine.weight, affine.bias
    w_pos = _positive(weight)
    bounds = (affine.forward(low, w_pos, None if bias is None else _positive(bias))
              + affine.forward(high, weight - w_pos, None if bias is None else _negative(bias)))  # (1, ...)
    s = _divide(relevance_out, rule.stabilize(output - bounds))
    t_w, t_pos = _stacked_transpose(affine, s, weight, w_pos, x)
    return t_w.mul_(x - high).add_(t_pos.mul_(high - low))


@fast_kernel(Flat)
def _flat(rule: Flat, affine: _Affine, x: Tensor, output: Tensor, relevance_out: Tensor) -> Tensor | None:
    """Every output of the layer has the same all-ones weights: one output channel stands for all of them."""
    if rule.bias and affine.bias is not None or affine.kind == "diagonal" or getattr(affine.module, "groups", 1) > 1:
        return None
    ones = affine.weight.new_ones((1, *affine.weight.shape[1:]))
    z = affine.forward(x.new_ones((1, *x.shape[1:])), ones, None)  # receptive-field sizes, (1, 1, ...)
    channel = -1 if affine.kind == "linear" else 1  # where the layer's outputs are
    s = (relevance_out / rule.stabilize(z)).sum(channel, keepdim=True)  # one output of all-ones weights
    return affine.transpose(s, ones, x)
