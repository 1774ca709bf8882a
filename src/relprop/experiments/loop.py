"""The training loop every experiment shares: one epoch of optimiser steps, and accuracy over batches.

The experiments differ in their data (MAJ sequences already on the device, SST sentences encoded per batch),
their loss and what they keep between epochs (per-epoch commits, the best dev epoch); they hand this module
an iterable of ``(inputs, labels)`` batches and get back the epoch's mean loss and accuracy.

>>> model = torch.nn.Linear(3, 2)
>>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
>>> data = [(torch.rand(4, 3), torch.tensor([0, 1, 0, 1]))] * 2
>>> stats = train_epoch(model, optimizer, data, torch.nn.functional.cross_entropy, progress=False)
>>> stats.samples, 0.0 <= stats.accuracy <= 1.0
(8, True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..progress import progress as progress_of

__all__ = ["EpochStats", "train_epoch", "accuracy"]

Batches = Iterable[tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class EpochStats:
    """Mean loss and accuracy over the epoch's training samples (as the model was during each step)."""

    loss: float
    accuracy: float
    samples: int


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    loss: Callable[[Tensor, Tensor], Tensor],
    *,
    desc: str = "epoch",
    total: int | None = None,
    progress: bool = True,
) -> EpochStats:
    """One pass over ``batches`` in training mode: forward, ``loss(logits, labels)``, backward, optimiser step.

    ``batches`` may be a generator (batches made as they are needed; ``total`` is its length for the progress
    display). Loss and correct predictions are summed on the device (no synchronisation per step); ``progress``
    shows a bar on a terminal and plain lines elsewhere (see :mod:`relprop.progress`).
    """
    model.train()
    loss_sum: Tensor | None = None
    correct: Tensor | None = None
    samples = 0
    for inputs, labels in progress_of(batches, desc=desc, total=total, enabled=progress):
        logits = model(inputs)  # (batch, classes)
        value = loss(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(value)
        optimizer.step()
        batch_loss = value.detach() * len(labels)
        batch_correct = (logits.detach().argmax(1) == labels).sum()
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        correct = batch_correct if correct is None else correct + batch_correct
        samples += len(labels)
    if loss_sum is None or correct is None:
        raise ConfigError("train_epoch got no batches: the training set is empty")
    return EpochStats(float(loss_sum) / samples, int(correct) / samples, samples)


@torch.no_grad()
def accuracy(model: nn.Module, batches: Batches) -> float:
    """Fraction of samples whose argmax output is the label, in eval mode (the mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    correct, samples = 0, 0
    try:
        for inputs, labels in batches:
            correct += int((model(inputs).argmax(1) == labels).sum())
            samples += len(labels)
    finally:
        model.train(was_training)
    if samples == 0:
        raise ConfigError("accuracy needs at least one sample")
    return correct / samples
