"""The canonizer protocol: a reversible rewrite of a model into an equivalent form that rules can explain.

A canonizer's ``apply(model)`` changes the model and returns a function that restores it exactly.
:meth:`relprop.composites.RuleMap.attached` undoes every canonizer on exit, also after an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from torch import nn

__all__ = ["Canonizer", "apply_all"]


class Canonizer(Protocol):
    """Rewrites a model in place and returns the function that undoes the rewrite."""

    def apply(self, model: nn.Module) -> Callable[[], None]: ...


def apply_all(rewrites: Sequence[Callable[[], Callable[[], None]]]) -> Callable[[], None]:
    """Run rewrites that each return their undo; returns one undo for all (in reverse order).

    If a rewrite fails, the ones already done are undone before the error propagates.
    """
    undo: list[Callable[[], None]] = []

    def restore() -> None:
        for step in reversed(undo):
            step()

    try:
        for rewrite in rewrites:
            undo.append(rewrite())
    except BaseException:
        restore()
        raise
    return restore
