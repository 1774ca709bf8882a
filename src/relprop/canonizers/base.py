"""The canonizer protocol: a reversible rewrite of a model into an equivalent form that rules can explain.

A canonizer's ``apply(model)`` changes the model and returns a function that restores it exactly.
:meth:`relprop.composites.RuleMap.attached` undoes every canonizer on exit, also after an exception.

Each rewrite computes everything that can fail first and then changes the model in plain assignments; its undo
puts the saved objects back. :func:`apply_all` runs the rewrites and their undos in a
:func:`~relprop.safety.protected` region holding the model's lock, so neither Ctrl-C nor another thread ever sees
a rewrite half done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from torch import nn

from ..safety import protected

__all__ = ["Canonizer", "apply_all"]


class Canonizer(Protocol):
    """Rewrites a model in place and returns the function that undoes the rewrite."""

    def apply(self, model: nn.Module) -> Callable[[], None]: ...


def apply_all(model: nn.Module, rewrites: Sequence[Callable[[], Callable[[], None]]]) -> Callable[[], None]:
    """Run rewrites of ``model`` that each return their undo; returns one undo for all (in reverse order).

    If a rewrite fails, the ones already done are undone before the error propagates. The rewrites, and later the
    undo, run with the model's lock held and Ctrl-C deferred (:func:`relprop.safety.protected`).
    """
    undo: list[Callable[[], None]] = []

    def restore() -> None:
        with protected(model):
            while undo:
                undo[-1]()
                undo.pop()

    with protected(model):
        try:
            for rewrite in rewrites:
                undo.append(rewrite())
        except BaseException:
            restore()
            raise
    return restore
