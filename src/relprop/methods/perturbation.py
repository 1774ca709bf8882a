"""Occlusion: the drop of the target score when a sliding window of the input is replaced by a fill value."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from ..errors import ExplanationError

__all__ = ["occlusion"]


def occlusion(
    model: nn.Module, x: Tensor, target: Tensor, *, window: int | tuple[int, ...] = 1,
    stride: int | tuple[int, ...] | None = None, fill: float = 0.0, batch_size: int = 256,
) -> Tensor:
    """Occlusion (Zeiler & Fergus 2014): ``R_i`` = mean over the windows covering ``i`` of ``f(x) - f(x_occluded)``.

    ``window`` and ``stride`` cover the non-batch dimensions (an int applies to every one); windows run to the end
    of each dimension, the last one clipped at the border (as Captum's). ``stride`` defaults to ``window``.

    >>> model = torch.nn.Linear(4, 2, bias=False)
    >>> x = torch.randn(1, 4); t = torch.tensor([1])
    >>> torch.allclose(occlusion(model, x, t), x * model.weight[1], atol=1e-6)
    True
    """
    dims = x.shape[1:]
    window = (window,) * len(dims) if isinstance(window, int) else tuple(window)
    stride = window if stride is None else ((stride,) * len(dims) if isinstance(stride, int) else tuple(stride))
    if len(window) != len(dims) or len(stride) != len(dims) or min(window + stride) < 1:
        raise ExplanationError(
            f"occlusion window {window} and stride {stride} must be positive with one entry per non-batch "
            f"dimension of x {tuple(dims)}"
        )
    starts = [range(0, s * (math.ceil(max(d - w, 0) / s) + 1), s) for d, w, s in zip(dims, window, stride)]
    batch = x.shape[0]
    rows = torch.arange(batch, device=x.device)
    with torch.no_grad():
        reference = model(x)[rows, target]
        total = torch.zeros_like(x)
        count = torch.zeros_like(x[:1])
        positions = list(itertools.product(*starts))
        per_chunk = max(batch_size // batch, 1)
        for i in range(0, len(positions), per_chunk):
            chunk = positions[i:i + per_chunk]
            occluded = x.unsqueeze(0).repeat(len(chunk), *(1,) * x.dim())  # (windows, batch, ...)
            masks = torch.zeros((len(chunk), 1, *dims), dtype=x.dtype, device=x.device)
            for j, start in enumerate(chunk):
                region = tuple(slice(a, a + w) for a, w in zip(start, window))
                masks[(j, 0) + region] = 1
            occluded = torch.where(masks.bool(), torch.full_like(occluded, fill), occluded)
            flat_rows = torch.arange(len(chunk) * batch, device=x.device)  # window-major: (window j, sample i)
            scores = model(occluded.reshape(-1, *dims))[flat_rows, target.repeat(len(chunk))]
            drop = (reference.repeat(len(chunk)) - scores).reshape(len(chunk), batch)  # (windows, batch)
            total += (drop.reshape(len(chunk), batch, *(1,) * len(dims)) * masks).sum(0)
            count += masks.sum(0)
    return total / count.clamp(min=1)
