"""relprop: relevance propagation and attribution methods for PyTorch, recurrent nets included.

>>> import torch, relprop
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
>>> relprop.explain(model, torch.randn(2, 4), method="lrp", preset="epsilon").relevance.shape
torch.Size([2, 4])
"""

from __future__ import annotations

from . import (
    canonizers,
    composites,
    layers,
    methods,
    models,
    ops,
    presets_recurrent,  # noqa: F401  (registers lstm_epsilon, thesis_dtd, thesis_lrp)
    rules,
)
from .api import METHODS, Explanation, explain, method
from .datasets import explain_dataset
from .errors import ExplanationError

__all__ = [
    "explain", "explain_dataset", "Explanation", "ExplanationError", "METHODS", "method",
    "rules", "ops", "composites", "canonizers", "layers", "methods", "models",
]
__version__ = "0.1.0"
