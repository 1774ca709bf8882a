"""Merging eval-mode batch norms into the linear layer before them, as a reversible canonizer.

The engine merges batch norms by data flow on its own while explaining; this canonizer writes the merged weights
into the model (and puts the original parameter tensors back, bit for bit, on undo).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ExplanationError
from .base import apply_all

__all__ = ["MergeBatchNorm"]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_MERGEABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class MergeBatchNorm:
    """Merge each eval-mode BatchNorm into the Linear/Conv layer before it; the BatchNorm becomes the identity.

    ``y = gamma (x W^T + b - mean) / sqrt(var + eps) + beta`` becomes ``x W'^T + b'`` with
    ``W' = a W``, ``b' = a (b - mean) + beta``, ``a = gamma / sqrt(var + eps)``. Pairs are found as consecutive
    children of an ``nn.Sequential``; other pairs can be named: ``MergeBatchNorm(pairs=[("conv1", "bn1")])``.

    >>> model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
    >>> x = torch.randn(2, 3); before = model(x)
    >>> undo = MergeBatchNorm().apply(model)
    >>> torch.allclose(model(x), before, atol=1e-6)
    True
    >>> undo(); torch.equal(model(x), before)
    True
    """

    def __init__(self, pairs: Sequence[tuple[str, str]] = ()) -> None:
        self.pairs = tuple(pairs)

    def _find(self, model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
        modules = dict(model.named_modules())
        found = []
        for linear_name, norm_name in self.pairs:
            if linear_name not in modules or norm_name not in modules:
                raise ExplanationError(f"MergeBatchNorm: no module named '{linear_name}' or '{norm_name}'")
            found.append((modules[linear_name], modules[norm_name]))
        for module in modules.values():
            if isinstance(module, nn.Sequential):
                children = list(module.children())
                found += [(a, b) for a, b in zip(children, children[1:])
                          if isinstance(a, _MERGEABLE) and isinstance(b, _BATCH_NORMS)]
        return found

    def apply(self, model: nn.Module) -> Callable[[], None]:
        return apply_all(model, [functools.partial(_merge, linear, norm) for linear, norm in self._find(model)])


def _merge(linear: Any, norm: Any) -> Callable[[], None]:  # a Linear/Conv and a BatchNorm
    """Write the merged weights into ``linear`` and make ``norm`` the identity; returns the undo.

    Every new tensor is computed before the first change (a failure there changes nothing); the change and the
    undo then only swap tensor data, so each is one step inside :func:`~relprop.canonizers.base.apply_all`'s
    protected region.
    """
    if norm.training or norm.running_mean is None or norm.running_var is None:
        raise ExplanationError(
            f"cannot merge {norm}: it must be in eval mode with running statistics (call model.eval())"
        )
    if getattr(norm, "_relprop_merged", False):
        raise ExplanationError(f"{norm} is already merged by MergeBatchNorm (applied twice?)")
    weight, bias = linear.weight, linear.bias
    targets = [weight, bias, norm.weight, norm.bias, norm.running_mean, norm.running_var]
    saved = [None if t is None else t.data for t in targets]
    with torch.no_grad():
        var, mean = norm.running_var, norm.running_mean
        std = (var + norm.eps).sqrt()
        scale = (norm.weight if norm.weight is not None else torch.ones_like(var)) / std
        shift = norm.bias if norm.bias is not None else torch.zeros_like(mean)
        old_bias = bias if bias is not None else torch.zeros_like(mean)
        shape = (-1,) + (1,) * (weight.dim() - 1)  # (out_features, 1, ...) broadcasts over the weight
        new_bias = (old_bias - mean) * scale + shift
        # identity BatchNorm: (x - 0) / sqrt(1 - eps + eps) * 1 + 0
        merged = [
            weight.data * scale.reshape(shape), new_bias,
            None if norm.weight is None else torch.ones_like(norm.weight),
            None if norm.bias is None else torch.zeros_like(norm.bias),
            torch.zeros_like(mean), torch.ones_like(var) - norm.eps,
        ]
    added_bias = None if bias is not None else nn.Parameter(new_bias, requires_grad=weight.requires_grad)

    def restore() -> None:
        if added_bias is not None:
            linear.bias = None
        for target, data in zip(targets, saved):
            if target is not None:
                target.data = data
        norm.__dict__.pop("_relprop_merged", None)

    for target, data in zip(targets, merged):
        if target is not None:
            target.data = data
    if added_bias is not None:
        linear.bias = added_bias
    norm._relprop_merged = True  # read by the BatchNorm rule
    return restore
