"""Reversible rewrites of a model into an equivalent form that LRP rules can explain.

Each canonizer's ``apply(model)`` returns the function that undoes it; :meth:`relprop.composites.RuleMap.attached`
undoes them on exit, also after an exception. Batch norms need no canonizer by default: the engine merges each one
into the layer that feeds it while explaining (see :mod:`relprop.core`); :class:`MergeBatchNorm` stays for users
who want the merged weights themselves.
"""

from __future__ import annotations

from .base import Canonizer, apply_all
from .batchnorm import MergeBatchNorm
from .recurrent import ExplicitRecurrent, explicit_twin

__all__ = ["Canonizer", "apply_all", "MergeBatchNorm", "ExplicitRecurrent", "explicit_twin"]
