"""Helpers shared by the attribution methods: target selection and the gradient of the selected outputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ExplanationError


def as_target(target: int | Tensor | None, output: Tensor) -> Tensor:
    """Normalise ``target`` to a LongTensor of shape (batch,) checked against ``output`` (batch, classes)."""
    if output.dim() != 2:
        raise ExplanationError(f"the model must return (batch, classes) scores, got shape {tuple(output.shape)}")
    batch, classes = output.shape
    if target is None:
        return output.argmax(1)
    if isinstance(target, bool) or not isinstance(target, (int, Tensor)):
        raise ExplanationError(f"target must be an int, a LongTensor of shape (batch,) or None, got {target!r}")
    if isinstance(target, int):
        target = torch.full((batch,), target, dtype=torch.long, device=output.device)
    if target.dtype not in (torch.int64, torch.int32) or target.shape != (batch,):
        raise ExplanationError(
            f"target tensor must be integer with shape ({batch},), got {target.dtype} {tuple(target.shape)}"
        )
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= classes):
        raise ExplanationError(f"target out of range: the model has {classes} outputs, got {target.tolist()}")
    return target.to(device=output.device, dtype=torch.long)


def one_hot_start(output: Tensor, target: Tensor, scale: Tensor | None = None) -> Tensor:
    """(batch, classes) tensor that is ``scale`` (default 1) at each sample's target class and 0 elsewhere."""
    start = torch.zeros_like(output)
    values = torch.ones_like(output[:, :1]) if scale is None else scale.reshape(-1, 1).to(output)
    return start.scatter(1, target.reshape(-1, 1), values)


def gradient_of_target(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """d f_target(x) / dx for a batch (each sample's own target)."""
    x = x.detach().requires_grad_()
    with torch.enable_grad():
        output = model(x)
        (grad,) = torch.autograd.grad(output, x, one_hot_start(output, target.repeat(x.shape[0] // target.shape[0])))
    return grad
