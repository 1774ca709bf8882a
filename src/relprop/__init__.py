"""relprop: relevance propagation and attribution methods for PyTorch, recurrent nets included.

>>> import torch, relprop
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
>>> relprop.explain(model, torch.randn(2, 4), method="lrp", preset="epsilon").relevance.shape
torch.Size([2, 4])
>>> relprop.metrics.block_cosine.higher_is_better, relprop.viz.heatmap.__name__
(True, 'heatmap')

``relprop.viz`` (pictures, needs matplotlib) is imported on first use, so ``import relprop`` stays fast.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from . import (
    canonizers,
    composites,
    concepts,
    layers,
    methods,
    metrics,
    models,
    ops,
    presets_recurrent,  # noqa: F401  (registers lstm_epsilon, thesis_dtd, thesis_lrp)
    rules,
    summary,
)
from .api import METHODS, Explanation, explain, method
from .datasets import explain_dataset
from .errors import ConfigError, DataError, ExplanationError, RelpropError

if TYPE_CHECKING:
    from . import viz

__all__ = [
    "explain", "explain_dataset", "Explanation", "METHODS", "method",
    "RelpropError", "ExplanationError", "ConfigError", "DataError",
    "rules", "ops", "composites", "canonizers", "concepts", "layers", "methods", "metrics", "models", "summary", "viz",
    "__version__",
]
__version__ = "0.1.0"  # the single source: pyproject.toml reads it (tool.setuptools.dynamic)

_LAZY = ("viz",)


def __getattr__(name: str) -> ModuleType:
    """Import ``relprop.viz`` on first access (it pulls in matplotlib)."""
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'relprop' has no attribute {name!r}")
