"""Layer-wise relevance propagation with a :class:`~relprop.composites.RuleMap` or a named preset."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..composites import RuleMap, get_preset
from ..core import check_model_output, mark_path, on_path, root_module
from ..errors import ExplanationError
from ._common import ClassTarget, OutputSeed, start_relevance
from ._layers import backward, gap_by_layer, recorded_layers, stacked
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


@method("lrp", own_scores=_own_scores)
def explain_lrp(
    model: nn.Module, x: Tensor, target: Tensor | OutputSeed | ClassTarget, *, preset: str = "epsilon",
    rule_map: RuleMap | None = None, layers: Sequence[str] = (), layer_at: str = "output", **preset_options: Any,
) -> Attribution:
    """LRP relevance of the input, with ``conservation_gap`` (``sum R`` minus the relevance put in at the output).

    ``layers`` names modules whose relevance (at their output, or input with ``layer_at="input"``) is returned
    too, with ``conservation_by_layer`` (batch, layers); ``output`` holds the model's scores. See :func:`lrp`.
    """
    rule_map = rule_map if rule_map is not None else get_preset(preset, **preset_options)
    x = mark_path(x.detach().requires_grad_())
    with rule_map.attached(model) as guard, recorded_layers(model, layers, layer_at) as records, \
            torch.enable_grad():
        with guard:
            output = model(x)
        if not isinstance(output, Tensor) or not on_path((output,)):
            raise ExplanationError(
                f"{type(root_module(model)).__name__} returned {type(output).__name__} that does not depend on the "
                "explained input"
            )
        check_model_output(model, output)
        start = start_relevance(output, target)
        relevance, at_layers = backward(output, x, start, records)
    total = start.reshape(len(start), -1).sum(1)
    details = {"conservation_gap": relevance.reshape(len(x), -1).sum(1) - total}
    layer_relevance = stacked(at_layers)
    if layers:
        details["conservation_by_layer"] = gap_by_layer(layer_relevance, total)
    return Attribution(relevance, details, layer_relevance, output.detach())


def lrp(
    model: nn.Module, x: Tensor, target: Tensor | OutputSeed, *, preset: str = "epsilon",
    rule_map: RuleMap | None = None, **preset_options: Any,
) -> Tensor:
    """LRP relevance of the input: relevance starts at the target logit, so ``sum R ~ f_target(x)``.

    ``rule_map`` overrides ``preset``; ``preset_options`` go to the preset (e.g. ``epsilon=0.25``,
    ``low=-1.0, high=1.0``). Bach et al. 2015; Montavon et al. 2019.
    """
    return explain_lrp(model, x, target, preset=preset, rule_map=rule_map, **preset_options).relevance
