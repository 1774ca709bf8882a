"""LRP rules: the z-rule family for linear maps, and the rules for activations, products, sums, pooling, routing
and normalisation, at modules and at functional operations alike."""

from __future__ import annotations

from ..core import Rule
from . import kernels  # noqa: F401  (registers the z-rules' fast kernels)
from .attention import Decompose, Detach, Softmax
from .elementwise import Pass, Proportional, Route, SignalTakeAll, Uniform, WinnerTakeAll
from .fourier import Fourier
from .linear import AlphaBeta, Epsilon, Flat, Gamma, WSquare, ZBox, ZPlus, ZRule
from .mixed import Mixed
from .norm import DetachedNorm

__all__ = [
    "Rule", "ZRule", "Epsilon", "ZPlus", "AlphaBeta", "Gamma", "ZBox", "Flat", "WSquare",
    "Pass", "SignalTakeAll", "Uniform", "Proportional", "WinnerTakeAll", "Route", "DetachedNorm", "Mixed",
    "Softmax", "Detach", "Decompose", "Fourier",
]
