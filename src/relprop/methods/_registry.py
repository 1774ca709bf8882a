"""The method registry: ``@method("name")`` at each method's definition, and the :class:`Attribution` it returns.

A registered method is called as ``f(model, x, target, **options)``: ``target`` is a LongTensor (batch,) of
classes or an :class:`~relprop.methods._common.OutputSeed`. It returns an :class:`Attribution` (or a bare relevance
tensor, which the registry wraps), so :func:`relprop.explain` never needs to know a method by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import Tensor, nn

from ..errors import ConfigError
from ._common import per_target

__all__ = ["Attribution", "Method", "METHODS", "method"]


@dataclass(frozen=True)
class Attribution:
    """What a method returns: ``relevance`` shaped like x, per-sample ``details`` (e.g. ``conservation_gap``),
    and the relevance at the modules named in the ``layers`` option (by module name)."""

    relevance: Tensor
    details: Mapping[str, Tensor] = field(default_factory=dict)
    layers: Mapping[str, Tensor] = field(default_factory=dict)
    output: Tensor | None = None  # the scores of the method's forward pass, for methods with own_scores

    def per_target(self, k: int, output: Tensor | None = None) -> Attribution:
        """This result of a target-major batch of k copies (:func:`~relprop.methods._common.repeated`) with every
        tensor as (batch, k, ...), and the scores ``output`` of the batch."""
        return Attribution(
            per_target(self.relevance, k), {name: per_target(value, k) for name, value in self.details.items()},
            {name: per_target(value, k) for name, value in self.layers.items()}, output,
        )


@dataclass(frozen=True)
class Method:
    """A registered method: its function and the keyword options it accepts (``None``: any, checked by it).

    ``own_scores(model, options)``, when given, says whether the method's forward pass computes the model's scores
    exactly as a plain forward pass would; the method then accepts a
    :class:`~relprop.methods._common.ClassTarget` and returns those scores as :attr:`Attribution.output`.
    ``several_targets``: the method takes a (batch, k) target (k classes per sample) and returns every result
    as (batch, k, ...); otherwise :func:`relprop.explain` runs it on the input repeated k times.
    """

    name: str
    function: Callable[..., Tensor | Attribution]
    options: tuple[str, ...] | None
    own_scores: Callable[[nn.Module, Mapping[str, Any]], bool] | None = None
    several_targets: bool = False  # takes a (batch, k) target and returns (batch, k, ...) itself

    def __call__(self, model: object, x: Tensor, target: object, **options: object) -> Attribution:
        if self.options is not None:
            unknown = [name for name in options if name not in self.options]
            if unknown:
                raise ConfigError(
                    f"method '{self.name}' got unknown options {unknown}; it accepts {list(self.options)}"
                )
        result = self.function(model, x, target, **options)
        return result if isinstance(result, Attribution) else Attribution(result)


METHODS: dict[str, Method] = {}


def _options(function: Callable[..., object]) -> tuple[str, ...] | None:
    """The keyword options of ``f(model, x, target, *, ...)``; ``None`` when it takes ``**options``."""
    parameters = list(inspect.signature(function).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return tuple(p.name for p in parameters[3:])


F = TypeVar("F", bound=Callable[..., Tensor | Attribution])


def method(
    name: str, own_scores: Callable[[nn.Module, Mapping[str, Any]], bool] | None = None,
    several_targets: bool = False,
) -> Callable[[F], F]:
    """Register ``f(model, x, target, **options) -> Attribution | relevance`` under ``name`` for ``explain``.

    >>> @method("doubled_input")
    ... def doubled_input(model, x, target):
    ...     return 2 * x
    >>> METHODS["doubled_input"].options
    ()
    >>> del METHODS["doubled_input"]
    """
    def register(function: F) -> F:
        METHODS[name] = Method(name, function, _options(function), own_scores, several_targets)
        return function

    return register
