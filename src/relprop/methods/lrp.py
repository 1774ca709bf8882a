"""Layer-wise relevance propagation with a :class:`~relprop.composites.RuleMap` or a named preset."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..composites import RuleMap, get_preset
from ..core import mark_path, on_path
from ..errors import ExplanationError
from ._common import one_hot_start

__all__ = ["lrp"]


def lrp(
    model: nn.Module, x: Tensor, target: Tensor, *, preset: str = "epsilon", rule_map: RuleMap | None = None,
    **preset_options: Any,
) -> Tensor:
    """LRP relevance of the input: relevance starts at the target logit, so ``sum R ~ f_target(x)``.

    ``rule_map`` overrides ``preset``; ``preset_options`` go to the preset (e.g. ``epsilon=0.25``,
    ``low=-1.0, high=1.0``). Bach et al. 2015; Montavon et al. 2019.
    """
    rule_map = rule_map if rule_map is not None else get_preset(preset, **preset_options)
    x = mark_path(x.detach().requires_grad_())
    with rule_map.attached(model) as guard, torch.enable_grad():
        with guard:
            output = model(x)
        if not isinstance(output, Tensor) or not on_path((output,)):
            raise ExplanationError(
                f"{type(model).__name__} returned {type(output).__name__} that does not depend on the explained input"
            )
        start = one_hot_start(output, target, output.detach().gather(1, target.reshape(-1, 1)))
        (relevance,) = torch.autograd.grad(output, x, start)
    return relevance
