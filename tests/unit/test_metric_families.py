"""Complexity, robustness and randomisation metrics against literal twins written from their formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop.errors import ConfigError
from relprop.metrics import MaxSensitivity, ModelRandomisation, entropy, similarity, sparseness


def _gini_literal(values: list[float]) -> float:
    a = sorted(abs(v) for v in values)
    d, total = len(a), sum(abs(v) for v in values)
    return sum((2 * (i + 1) - d - 1) * a[i] for i in range(d)) / (d * total)


def _entropy_literal(values: list[float]) -> float:
    total = sum(abs(v) for v in values)
    return -sum(abs(v) / total * math.log(abs(v) / total) for v in values if v != 0)


def test_sparseness_and_entropy_equal_their_formulas() -> None:
    relevance = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    relevance[0, 0] = 0.0  # some exact zeros
    rows = relevance.reshape(5, -1).tolist()
    torch.testing.assert_close(sparseness(relevance), torch.tensor([_gini_literal(r) for r in rows],
                                                                   dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(entropy(relevance), torch.tensor([_entropy_literal(r) for r in rows],
                                                                dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_complexity_extremes() -> None:
    one_hot, uniform, zero = torch.eye(1, 8, dtype=torch.float64), torch.full((1, 8), -2.0), torch.zeros(1, 8)
    assert float(sparseness(one_hot)) == pytest.approx(1 - 1 / 8) and float(sparseness(uniform)) == 0.0
    assert float(entropy(one_hot)) == 0.0 and float(entropy(uniform)) == pytest.approx(math.log(8))
    assert float(sparseness(zero)) == 0.0 and float(entropy(zero)) == 0.0


def _model() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4), nn.ReLU(), nn.Linear(4, 3)).double().eval()


def _grad_x_input(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    return relprop.explain(model, x, target, method="gradient_x_input").relevance


def test_max_sensitivity_equals_a_literal_loop() -> None:
    model, x = _model(), torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0])
    metric = MaxSensitivity(radius=0.3, samples=6, seed=5)
    reference = _grad_x_input(model, x, target)
    generator = torch.Generator().manual_seed(5)
    expected = []
    worst = [0.0] * 4
    for _ in range(6):
        delta = 0.3 * (2 * torch.rand(x.shape, generator=generator, dtype=torch.float64) - 1)
        assert float(delta.abs().max()) <= 0.3
        moved = _grad_x_input(model, x + delta, target)
        for i in range(4):
            worst[i] = max(worst[i], float((moved[i] - reference[i]).norm() / reference[i].norm()))
    expected = torch.tensor(worst, dtype=torch.float64)
    torch.testing.assert_close(metric(model, x, target, _grad_x_input), expected, rtol=1e-12, atol=0)
    absolute = MaxSensitivity(radius=0.3, samples=6, seed=5, relative=False)(model, x, target, _grad_x_input)
    torch.testing.assert_close(absolute, expected * reference.norm(dim=1), rtol=1e-12, atol=0)
    with pytest.raises(ConfigError):
        MaxSensitivity(samples=0)


def test_spearman_equals_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(3)
    a = torch.randint(0, 4, (6, 10), generator=generator).double()  # many ties
    b = torch.randn(6, 10, generator=generator, dtype=torch.float64)
    expected = torch.tensor([stats.spearmanr(a[i], b[i])[0] for i in range(6)], dtype=torch.float64)
    torch.testing.assert_close(similarity(a, b, "spearman"), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(similarity(a, b, "pearson"),
                               torch.tensor([stats.pearsonr(a[i], b[i])[0] for i in range(6)], dtype=torch.float64))


def test_randomisation_cascades_from_the_output_and_leaves_the_model_alone() -> None:
    model, x = _model(), torch.randn(5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    target = torch.zeros(5, dtype=torch.long)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cascading = ModelRandomisation(seed=7)(model, x, target, _grad_x_input)
    independent = ModelRandomisation(order="independent", seed=7)(model, x, target, _grad_x_input)
    assert cascading.layers == independent.layers == ("4", "2", "0")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # the first step randomises the same layer in both orders
    torch.testing.assert_close(cascading.similarity[:, 0], independent.similarity[:, 0])
    # literal twin of the cascade: re-draw layers 4, 2, 0 in turn, each with the global seed 7
    twin = _model()
    for step, name in enumerate(("4", "2", "0")):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            twin.get_submodule(name).reset_parameters()
        expected = similarity(_grad_x_input(model, x, target), _grad_x_input(twin, x, target))
        torch.testing.assert_close(cascading.similarity[:, step], expected)
    identical = ModelRandomisation()(model, x, target, lambda m, x, t: x.clone())  # ignores the model
    torch.testing.assert_close(identical.similarity, torch.ones_like(identical.similarity))


def test_metric_settings_and_inputs_are_checked_when_given() -> None:
    """A bad setting fails when the metric is made, a bad target or non-finite relevance with a clear error."""
    from relprop.errors import ConfigError, ExplanationError
    from relprop.metrics import ModelRandomisation, entropy, pixel_flipping, sparseness
    from relprop.metrics.faithfulness import FlipConfig

    with pytest.raises(ConfigError, match="FlipConfig.steps must be an integer >= 1, got 0"):
        FlipConfig(steps=0)
    with pytest.raises(ConfigError, match="FlipConfig.order must be"):
        FlipConfig(order="sideways")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown order 'x'"):
        ModelRandomisation(order="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown similarity"):
        ModelRandomisation(kind="kendall")  # type: ignore[arg-type]
    model, x = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval(), torch.randn(2, 4)
    with pytest.raises(ExplanationError, match=r"target out of range: the model has 3 outputs, got \[5, 5\]"):
        pixel_flipping(model, x, torch.randn(2, 4), 5)
    with pytest.raises(ConfigError, match="steps must be an integer"):
        pixel_flipping(model, x, torch.randn(2, 4), 0, steps=2.5)
    for bad in (float("nan"), float("inf")):
        for metric in (sparseness, entropy):
            with pytest.raises(ExplanationError, match=r"samples \[1\] holds NaN or infinite"):
                metric(torch.tensor([[1.0, 2.0, 3.0], [bad, 1.0, 2.0]]))
