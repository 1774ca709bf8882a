"""Layer-wise relevance propagation with a :class:`~relprop.composites.RuleMap` or a named preset."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..composites import RuleMap, get_preset
from ..core import PlanTrace, check_model_output, mark_path, on_path, refuse_hidden, root_module
from ..errors import ExplanationError
from ._common import (
    ClassTarget,
    OutputSeed,
    explained_forward,
    repeated,
    scores_of,
    start_relevance,
)
from ._layers import Records, backward, gap_by_layer, no_path_error, recorded_layers, stacked
from ._registry import Attribution, method

__all__ = ["lrp", "explain_lrp"]


def _own_scores(model: nn.Module, options: Mapping[str, Any]) -> bool:
    """Whether the explained forward pass computes the model's scores unchanged (see ``keeps_forward_values``)."""
    rule_map = options.get("rule_map")
    if not isinstance(rule_map, RuleMap):
        preset_options = {name: value for name, value in options.items()
                          if name not in ("preset", "rule_map", "layers", "layer_at")}
        rule_map = get_preset(options.get("preset", "epsilon"), **preset_options)
    return rule_map.keeps_forward_values(model)


@method("lrp", own_scores=_own_scores, several_targets=True)
def explain_lrp(
    model: nn.Module, x: Tensor, target: Tensor | OutputSeed | ClassTarget, *, preset: str = "epsilon",
    rule_map: RuleMap | None = None, layers: Sequence[str] = (), layer_at: str = "output", **preset_options: Any,
) -> Attribution:
    """LRP relevance of the input, with ``conservation_gap`` (``sum R`` minus the relevance put in at the output).

    ``layers`` names modules whose relevance (at their output, or input with ``layer_at="input"``) is returned
    too, with ``conservation_by_layer`` (batch, layers); ``output`` holds the model's scores. See :func:`lrp`.
    A (batch, k) target explains k classes per sample from one forward pass, with one backward pass batched over
    the k seeds (``torch.func.vmap``: what the rules compute from the forward pass alone, such as denominators,
    is computed once); every result is then (batch, k, ...). Where a rule cannot run batched, or a canonizer
    rewrites the model (its code, e.g. a fused recurrent kernel, need not run under vmap), the input is explained
    repeated k times instead.
    """
    rule_map = rule_map if rule_map is not None else get_preset(preset, **preset_options)
    if isinstance(target, Tensor) and target.dim() == 2 and rule_map.rewrites(model):
        return _repeated(model, x, target, rule_map, layers, layer_at)
    try:
        return _explain(model, x, target, rule_map, layers, layer_at)
    except _Unbatchable as unbatchable:
        return _repeated(model, x, unbatchable.targets, rule_map, layers, layer_at)


class _Unbatchable(Exception):
    """A rule's backward could not run under ``torch.func.vmap``: explain the k targets on a repeated input."""

    def __init__(self, targets: Tensor) -> None:
        super().__init__()
        self.targets = targets


def _explain(
    model: nn.Module, x: Tensor, target: Tensor | OutputSeed | ClassTarget, rule_map: RuleMap, layers: Sequence[str],
    layer_at: str,
) -> Attribution:
    plan = None if layers else rule_map.plan(model)  # an nn.Sequential of ruled modules: no wrappers, no guard
    trace = None if plan is None else plan.trace(x)
    if trace is not None:  # nothing but ruled modules and reshapes: no graph either
        return _attributed(trace.output, x, target, _graph_free(trace), {})
    x = mark_path(x.detach().requires_grad_())
    with contextlib.nullcontext(None) if plan is not None else rule_map.attached(model) as guard, \
            recorded_layers(model, layers, layer_at) as records, torch.enable_grad():
        if guard is None:
            assert plan is not None
            returned = plan(x, rule_map.guard())
        else:
            with guard, explained_forward():
                returned = model(x)
        output = scores_of(model, returned)
        refuse_hidden((output,), lambda: f"the output of {type(root_module(model)).__name__}")  # (none if tagged)
        if not on_path((output,)):
            ends = (": a .detach(), torch.no_grad() or a round trip through numpy or .tolist() on the way cuts it"
                    if guard is None or not guard.constant_sites else (
                f" through any rule; on the way, {guard.constant_sites[0]} took the relevance path in and gave a "
                "result this rule map treats as a constant (no relevance flows through it); if that op is a feature "
                "of the model here, put it in an nn.Module with a rule (rules.Pass() for an element-wise activation)"))
            raise ExplanationError(
                f"{type(root_module(model)).__name__} returned {type(returned).__name__} that does not depend on the "
                f"explained input{ends}"
            )
        check_model_output(model, output)
        return _attributed(output, x, target, lambda start: backward(output, x, start, records), records)


Propagate = Callable[[Tensor], tuple[Tensor, Records]]


def _graph_free(trace: PlanTrace) -> Propagate:
    """The backward pass of a graph-free plan, as :func:`backward` gives it (no layers are recorded there)."""
    def propagate(start: Tensor) -> tuple[Tensor, Records]:
        relevance = trace.relevance(start)
        if relevance is None:
            raise no_path_error()
        return relevance, {}

    return propagate


def _attributed(output: Tensor, x: Tensor, target: Tensor | OutputSeed | ClassTarget, propagate: Propagate,
                records: Records) -> Attribution:
    """The explanation of ``output`` for ``target``, from ``propagate`` (output relevance -> relevance at ``x`` and
    at the recorded layers)."""
    if isinstance(target, ClassTarget):
        target = target.resolve(output)
    if isinstance(target, Tensor) and target.dim() == 2:
        return _several(output, x, target, propagate, bool(records))
    start = start_relevance(output, target)
    relevance, at_layers = propagate(start)
    total = start.reshape(len(start), -1).sum(1)
    details = {"conservation_gap": relevance.reshape(len(x), -1).sum(1) - total}
    layer_relevance = stacked(at_layers)
    if records:
        details["conservation_by_layer"] = gap_by_layer(layer_relevance, total)
    return Attribution(relevance, details, layer_relevance, output.detach())


def _several(output: Tensor, x: Tensor, targets: Tensor, propagate: Propagate, by_layer: bool) -> Attribution:
    """k targets per sample: one backward pass over the (k, batch, classes) seeds, batched by ``torch.func.vmap``."""
    k, batch = targets.shape[1], len(x)
    starts = torch.stack([start_relevance(output, column) for column in targets.unbind(1)])  # (k, batch, classes)
    try:
        relevance, at_layers = torch.func.vmap(propagate)(starts)
    except RuntimeError as error:  # no batching rule, or a rule that branches on relevance values
        raise _Unbatchable(targets) from error
    total = starts.reshape(k * batch, -1).sum(1)  # target-major, as the rest below
    relevance = relevance.reshape(k * batch, *x.shape[1:])
    details = {"conservation_gap": relevance.reshape(k * batch, -1).sum(1) - total}
    layer_relevance = stacked({name: [v.reshape(k * batch, *v.shape[2:]) for v in values]
                               for name, values in at_layers.items()})
    if by_layer:
        details["conservation_by_layer"] = gap_by_layer(layer_relevance, total)
    return Attribution(relevance, details, layer_relevance).per_target(k, output.detach())


def _repeated(
    model: nn.Module, x: Tensor, targets: Tensor, rule_map: RuleMap, layers: Sequence[str], layer_at: str
) -> Attribution:
    """k targets per sample as one batch of the input repeated k times (target-major), one target per copy."""
    tiled, flat = repeated(x, targets)
    result = _explain(model, tiled, flat, rule_map, layers, layer_at)
    assert result.output is not None
    return result.per_target(targets.shape[1], result.output[:len(x)])


def lrp(
    model: nn.Module, x: Tensor, target: Tensor | OutputSeed, *, preset: str = "epsilon",
    rule_map: RuleMap | None = None, **preset_options: Any,
) -> Tensor:
    """LRP relevance of the input: relevance starts at the target logit, so ``sum R ~ f_target(x)``.

    ``rule_map`` overrides ``preset``; ``preset_options`` go to the preset (e.g. ``epsilon=0.25``,
    ``low=-1.0, high=1.0``). Bach et al. 2015; Montavon et al. 2019.
    """
    return explain_lrp(model, x, target, preset=preset, rule_map=rule_map, **preset_options).relevance
