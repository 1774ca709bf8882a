"""LRP rules: the z-rule family for linear maps and the rules for element-wise modules, sums and pooling."""

from __future__ import annotations

from ..core import Rule
from .elementwise import Pass, Proportional, SignalTakeAll, WinnerTakeAll
from .linear import AlphaBeta, Epsilon, Flat, Gamma, WSquare, ZBox, ZPlus, ZRule
from .mixed import Mixed

__all__ = [
    "Rule", "ZRule", "Epsilon", "ZPlus", "AlphaBeta", "Gamma", "ZBox", "Flat", "WSquare",
    "Pass", "SignalTakeAll", "Proportional", "WinnerTakeAll", "Mixed",
]
