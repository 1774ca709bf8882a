"""A module wrapper that counts its forward passes, for the tests that check how often explain runs the model."""

from __future__ import annotations

from torch import Tensor, nn


class Counting(nn.Module):
    """Runs ``model`` and counts its forward passes in ``calls``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        result: Tensor = self.model(x)
        return result
