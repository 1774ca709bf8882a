"""Occlusion: the drop of the target score when a sliding window of the input is replaced by a fill value."""

from __future__ import annotations

import itertools
import math
import sys

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ._common import OutputSeed, is_several, target_score
from ._registry import method

__all__ = ["occlusion", "default_window"]

_WINDOWS_PER_DIMENSION = 16


def default_window(shape: tuple[int, ...]) -> tuple[int, ...]:
    """At most 16 windows along each non-batch dimension: ``ceil(size / 16)``.

    >>> default_window((3, 224, 224)), default_window((10,))
    ((1, 14, 14), (1,))
    """
    return tuple(math.ceil(size / _WINDOWS_PER_DIMENSION) for size in shape)


def _progress(done: int, total: int) -> None:
    """One plain line per batch of windows on stderr (readable in a terminal, a notebook and a log alike)."""
    print(f"occlusion: {done}/{total} windows", file=sys.stderr, flush=True)


@method("occlusion", several_targets=True)
def occlusion(
    model: nn.Module, x: Tensor, target: Tensor | OutputSeed, *, window: int | tuple[int, ...] | None = None,
    stride: int | tuple[int, ...] | None = None, fill: float = 0.0, batch_size: int = 256,
    max_windows: int = 20_000, progress: bool | None = None,
) -> Tensor:
    """Occlusion (Zeiler & Fergus 2014): ``R_i`` = mean over the windows covering ``i`` of ``f(x) - f(x_occluded)``.

    ``window`` and ``stride`` cover the non-batch dimensions (an int applies to every one); windows run to the end
    of each dimension, the last one clipped at the border (as Captum's). ``window`` defaults to
    :func:`default_window` (at most 16 windows per dimension), ``stride`` to ``window``. More than ``max_windows``
    windows (each a forward pass per sample) raise a ConfigError instead of running for hours. ``progress`` prints
    a line per batch of windows to stderr (default: when there are more than 8 batches). A (batch, k) target gives
    (batch, k, ...) from the same occluded forward passes.

    >>> model = torch.nn.Linear(4, 2, bias=False)
    >>> x = torch.randn(1, 4); t = torch.tensor([1])
    >>> torch.allclose(occlusion(model, x, t), x * model.weight[1], atol=1e-6)
    True
    """
    dims = tuple(x.shape[1:])
    window = default_window(dims) if window is None else window
    window = (window,) * len(dims) if isinstance(window, int) else tuple(window)
    stride = window if stride is None else ((stride,) * len(dims) if isinstance(stride, int) else tuple(stride))
    if len(window) != len(dims) or len(stride) != len(dims) or min(window + stride) < 1:
        raise ConfigError(
            f"occlusion window {window} and stride {stride} must be positive with one entry per non-batch "
            f"dimension of x {tuple(dims)}"
        )
    if any(w > d for w, d in zip(window, dims)):
        raise ConfigError(
            f"occlusion window {window} is larger than x's non-batch shape {tuple(dims)} in some dimension, where "
            "every position would be occluded at once; use a window of at most the dimension's size"
        )
    starts = [range(0, s * (math.ceil(max(d - w, 0) / s) + 1), s) for d, w, s in zip(dims, window, stride)]
    positions = list(itertools.product(*starts))
    if len(positions) > max_windows:
        raise ConfigError(
            f"occlusion with window {window} and stride {stride} on x of shape {tuple(x.shape)} needs "
            f"{len(positions)} windows ({len(positions) * x.shape[0]} forward passes), more than max_windows="
            f"{max_windows}; use a larger window or stride (the default window is {default_window(dims)}), or raise "
            "max_windows"
        )
    batch = x.shape[0]
    per_chunk = max(batch_size // batch, 1)
    chunks = range(0, len(positions), per_chunk)
    show = len(chunks) > 8 if progress is None else progress

    def scores_of(output: Tensor) -> Tensor:
        """The explained scores (rows of output, or rows x k for a (batch, k) target)."""
        if is_several(target):
            assert isinstance(target, Tensor)
            return output.gather(1, target.repeat(output.shape[0] // batch, 1))
        return target_score(output, target)

    with torch.no_grad():
        reference = scores_of(model(x))  # (batch,), or (batch, k)
        per = reference.shape[1:]  # (), or (k,)
        total = torch.zeros((batch, *per, *dims), dtype=x.dtype, device=x.device)
        count = torch.zeros_like(x[:1])
        for i in chunks:
            chunk = positions[i:i + per_chunk]
            occluded = x.unsqueeze(0).repeat(len(chunk), *(1,) * x.dim())  # (windows, batch, ...)
            masks = torch.zeros((len(chunk), 1, *dims), dtype=x.dtype, device=x.device)
            for j, start in enumerate(chunk):
                region = tuple(slice(a, a + w) for a, w in zip(start, window))
                masks[(j, 0) + region] = 1
            occluded = torch.where(masks.bool(), torch.full_like(occluded, fill), occluded)
            scores = scores_of(model(occluded.reshape(-1, *dims)))  # window-major: (window j, sample i)
            drop = (reference.repeat(len(chunk), *(1,) * len(per)) - scores).reshape(len(chunk), batch, *per)
            total += (drop.reshape(*drop.shape, *(1,) * len(dims))
                      * masks.reshape(len(chunk), 1, *(1,) * len(per), *dims)).sum(0)
            count += masks.sum(0)
            if show:
                _progress(i + len(chunk), len(positions))
    return total / count.clamp(min=1).reshape(1, *(1,) * len(per), *dims)
