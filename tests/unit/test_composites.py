"""RuleMap caching: presets built once per options, rule assignment cached per model and invalidated when the
model's structure changes."""

from __future__ import annotations

import torch
from torch import nn

import relprop
from relprop import rules
from relprop.composites import RuleMap, get_preset


def test_presets_with_plain_options_are_built_once() -> None:
    assert get_preset("epsilon") is get_preset("epsilon")
    assert get_preset("epsilon", epsilon=0.1) is get_preset("epsilon", epsilon=0.1)
    assert get_preset("epsilon", epsilon=0.1) is not get_preset("epsilon", epsilon=0.2)
    low = torch.full((1, 4), -1.0)
    assert get_preset("dtd", low=low, high=1.0) is not get_preset("dtd", low=low, high=1.0)  # tensors: not cached


def test_assignment_is_cached_until_the_structure_changes(make_mlp) -> None:
    model = make_mlp()
    rule_map = get_preset("epsilon_plus_flat")
    first, _ = rule_map.assign(model)
    again, _ = rule_map.assign(model)
    assert [(n, id(m), r) for n, m, r in first] == [(n, id(m), r) for n, m, r in again]
    old, replacement = model[2], nn.Linear(8, 5).double()
    model[2] = replacement  # same name, a new module
    changed, _ = rule_map.assign(model)
    assert any(m is replacement for _, m, _ in changed) and not any(m is old for _, m, _ in changed)
    model.append(nn.Tanh())
    grown, _ = rule_map.assign(model)
    assert len(grown) == len(changed) + 1


def test_explanations_follow_a_replaced_layer(make_mlp, randn) -> None:
    model, x = make_mlp(), randn(2, 6)
    relprop.explain(model, x, 1, preset="epsilon")  # fills the cache
    model[0] = nn.Linear(6, 8).double().eval()
    fresh = RuleMap([(nn.Linear, rules.Epsilon())])  # a new map: no cache
    expected = relprop.explain(model, x, 1, rule_map=fresh).relevance
    torch.testing.assert_close(relprop.explain(model, x, 1, preset="epsilon").relevance, expected)


def test_predicate_selectors_are_evaluated_every_call(make_mlp) -> None:
    model = make_mlp()
    calls = []

    def wide(name: str, module: nn.Module) -> bool:
        calls.append(name)
        return isinstance(module, nn.Linear) and module.in_features > 6

    rule_map = RuleMap([(wide, rules.ZPlus())])
    rule_map.assign(model)
    count = len(calls)
    rule_map.assign(model)
    assert len(calls) == 2 * count
