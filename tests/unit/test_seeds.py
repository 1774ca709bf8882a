"""Output seeds: ``explain(..., seed=...)`` against the equivalent combinations of per-target explanations."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import relprop
from relprop.errors import ConfigError

LINEAR_METHODS: list[tuple[str, dict[str, Any]]] = [
    ("lrp", {"preset": "epsilon"}),
    ("lrp", {"preset": "alpha2beta1"}),
    ("gradient", {}),
    ("gradient_x_input", {}),
    ("integrated_gradients", {"steps": 5}),
    ("smoothgrad", {"samples": 3}),
    ("occlusion", {"window": 1}),
]  # methods linear in the output seed (guided backprop clamps the backward pass, so it is not)


@pytest.mark.parametrize(("method", "options"), LINEAR_METHODS)
def test_contrast_seed_is_the_difference_of_two_targets(make_mlp, randn, method: str, options: dict[str, Any]) -> None:
    model, x = make_mlp(), randn(4, 6)
    contrast = relprop.explain(model, x, method=method, seed=lambda out: out[:, 0] - out[:, 2], **options)
    first = relprop.explain(model, x, 0, method=method, **options).relevance
    second = relprop.explain(model, x, 2, method=method, **options).relevance
    torch.testing.assert_close(contrast.relevance, first - second, atol=1e-9, rtol=1e-7)
    assert torch.equal(contrast.target, torch.full((4,), -1))


def test_lrp_conservation_gap_is_against_the_seed_total(make_mlp, randn) -> None:
    model, x = make_mlp(bias=False), randn(3, 6)
    explanation = relprop.explain(model, x, seed=lambda out: out[:, 1] - out[:, 0], preset="epsilon", epsilon=1e-9)
    out = model(x).detach()
    torch.testing.assert_close(explanation.relevance.sum(1), out[:, 1] - out[:, 0], atol=1e-7, rtol=1e-6)
    assert explanation.details["conservation_gap"].abs().max() < 1e-7
    with pytest.raises(ConfigError, match="seed"):
        _ = explanation.score


def test_tensor_seed_is_the_relevance_at_the_output(make_cnn, randn) -> None:
    model, x = make_cnn(), randn(2, 2, 8, 8)
    out = model(x).detach()
    seed = randn(2, 3, seed=1)
    explanation = relprop.explain(model, x, seed=seed, preset="epsilon")
    # LRP is linear in the output relevance; target c starts from out_c at class c
    per_class = [relprop.explain(model, x, c, preset="epsilon").relevance for c in range(3)]
    expected = sum(seed[:, c, None, None, None] / out[:, c, None, None, None] * per_class[c] for c in range(3))
    torch.testing.assert_close(explanation.relevance, expected, atol=1e-9, rtol=1e-7)
    gap = explanation.relevance.flatten(1).sum(1) - seed.sum(1)
    torch.testing.assert_close(explanation.details["conservation_gap"], gap)


def test_tensor_seed_is_the_output_gradient_of_gradient_methods(make_mlp, randn) -> None:
    model, x = make_mlp(), randn(3, 6)
    weights = randn(3, 3, seed=2)
    explanation = relprop.explain(model, x, seed=weights, method="gradient")
    per_class = [relprop.explain(model, x, c, method="gradient").relevance for c in range(3)]
    torch.testing.assert_close(explanation.relevance, sum(weights[:, c, None] * per_class[c] for c in range(3)))


def test_one_hot_seed_equals_the_target(make_mlp, randn) -> None:
    model, x = make_mlp(), randn(3, 6)
    target = torch.tensor([2, 0, 1])
    for method in ("lrp", "integrated_gradients"):
        by_seed = relprop.explain(model, x, method=method, seed=lambda out: out.gather(1, target[:, None])[:, 0])
        by_target = relprop.explain(model, x, target, method=method)
        torch.testing.assert_close(by_seed.relevance, by_target.relevance)
        for name, value in by_target.details.items():
            torch.testing.assert_close(by_seed.details[name], value)


def test_guided_backprop_takes_the_seed_as_its_output_gradient(make_mlp, randn) -> None:
    model, x = make_mlp(), randn(3, 6)
    target = torch.tensor([2, 0, 1])
    one_hot = torch.nn.functional.one_hot(target, 3).to(x)
    by_seed = relprop.explain(model, x, method="guided_backprop", seed=one_hot)
    torch.testing.assert_close(by_seed.relevance, relprop.explain(model, x, target, method="guided_backprop").relevance)


def test_seed_errors(make_mlp, randn) -> None:
    model, x = make_mlp(), randn(3, 6)
    with pytest.raises(ConfigError, match="either target= or seed="):
        relprop.explain(model, x, 1, seed=lambda out: out[:, 0])
    with pytest.raises(ConfigError, match=r"shaped like the model's output \(3, 3\)"):
        relprop.explain(model, x, seed=torch.ones(3, 4))
    with pytest.raises(ConfigError, match=r"per-sample scores of shape \(3,\)"):
        relprop.explain(model, x, seed=lambda out: out[:, :2])
    with pytest.raises(ConfigError, match="do not depend"):
        relprop.explain(model, x, seed=lambda out: torch.ones(3))
