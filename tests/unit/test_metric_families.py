"""Complexity, robustness, infidelity and randomisation metrics against literal twins written from their formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop.errors import ConfigError
from relprop.metrics import Infidelity, MaxSensitivity, ModelRandomisation, entropy, similarity, sparseness


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


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_equals_a_literal_loop(normalize: bool) -> None:
    model, x = _model(), torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0])
    metric = Infidelity(scale=0.2, samples=6, seed=5, normalize=normalize)
    relevance = _grad_x_input(model, x, target)
    generator = torch.Generator().manual_seed(5)
    predicted, actual = [[] for _ in range(4)], [[] for _ in range(4)]
    with torch.no_grad():
        for _ in range(6):
            perturbation = 0.2 * torch.randn(x.shape, generator=generator, dtype=torch.float64)
            drop = model(x)[range(4), target] - model(x - perturbation)[range(4), target]
            for i in range(4):
                predicted[i].append(float((perturbation[i] * relevance[i]).sum()))
                actual[i].append(float(drop[i]))
    expected = []
    for a, b in zip(predicted, actual):
        beta = sum(p * q for p, q in zip(a, b)) / sum(p * p for p in a) if normalize else 1.0
        expected.append(sum((beta * p - q) ** 2 for p, q in zip(a, b)) / 6)
    got = metric(model, x, target, _grad_x_input)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    doubled = metric(model, x, target, lambda m, x, t: 2 * _grad_x_input(m, x, t))
    if normalize:  # only the explanation's shape counts
        torch.testing.assert_close(doubled, got, rtol=1e-10, atol=1e-15)
    else:
        assert not torch.allclose(doubled, got)
    for bad in ({"samples": 0}, {"scale": 0.0}, {"scale": float("inf")}, {"samples": True}):
        with pytest.raises(ConfigError, match="samples must be an integer >= 1 and scale a finite number > 0"):
            Infidelity(**bad)


def test_infidelity_is_zero_for_a_linear_models_gradient_and_runs_in_explain_dataset() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double().eval()
    x = torch.randn(6, 5, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    gradient = Infidelity(samples=8)(model, x, target, lambda m, x, t: relprop.explain(m, x, t, "gradient").relevance)
    assert float(gradient.max()) < 1e-28  # f(x) - f(x - I) = w . I exactly
    loader = [(x[:3], target[:3]), (x[3:], target[3:])]
    result = relprop.explain_dataset(model, loader, method="gradient", metrics=[Infidelity(samples=8)])
    torch.testing.assert_close(result.scores["infidelity"], gradient, rtol=0, atol=1e-28)


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
    for fractional in (0.7, torch.tensor(0.7), torch.tensor([1.0, 0.0]), True):  # was truncated to class 0
        with pytest.raises(ExplanationError, match="target must be class indices"):
            pixel_flipping(model, x, torch.randn(2, 4), fractional)
    for bad in (float("nan"), float("inf")):
        for metric in (sparseness, entropy):
            with pytest.raises(ExplanationError, match=r"samples \[1\] holds NaN or infinite"):
                metric(torch.tensor([[1.0, 2.0, 3.0], [bad, 1.0, 2.0]]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_relevance_is_refused_by_every_metric(bad: float) -> None:
    """A comparison with NaN is False, so without the check NaN relevance scored the "no evidence" 0 in the
    localisation metrics and ModelRandomisation, and was ranked first in pixel flipping."""
    from relprop.errors import ExplanationError
    from relprop.metrics import block_cosine, pixel_flipping, relevance_in_region, relevance_on_object

    relevance = torch.ones(3, 6, 2, dtype=torch.float64)
    relevance[2, 1, 0] = bad
    mask, x = torch.tensor([[1, 1, 0]] * 3), torch.randn(3, 6, 2, dtype=torch.float64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double().eval()
    calls = {
        "block_cosine": lambda: block_cosine(relevance, mask),
        "relevance_in_region": lambda: relevance_in_region(relevance, mask, cap=0.8),
        "relevance_on_object": lambda: relevance_on_object(relevance, x, mask),
        "similarity": lambda: similarity(torch.ones_like(relevance), relevance),
        "pixel_flipping": lambda: pixel_flipping(model, x, relevance, 0, steps=4),
        "MaxSensitivity": lambda: MaxSensitivity(samples=2)(model, x, torch.zeros(3, dtype=torch.long),
                                                              lambda m, x, t: relevance),
        "Infidelity": lambda: Infidelity(samples=2)(model, x, torch.zeros(3, dtype=torch.long),
                                                    lambda m, x, t: relevance),
        "ModelRandomisation": lambda: ModelRandomisation()(model, x, torch.zeros(3, dtype=torch.long),
                                                           lambda m, x, t: relevance),
    }
    for name, call in calls.items():
        with pytest.raises(ExplanationError, match=r"samples \[2\] holds NaN or infinite") as caught:
            call()
        assert name in str(caught.value), caught.value
    with pytest.raises(ExplanationError, match=r"mask of samples \[0\]"):
        relevance_in_region(torch.ones(2, 6, 2), torch.tensor([[bad, 1.0, 0.0], [1.0, 0.0, 0.0]]))


def test_degenerate_explanations_get_no_best_score() -> None:
    """A constant original explanation has nothing to compare under randomisation (NaN, not the best score 0);
    max-sensitivity relative to a zero explanation is 0 when it stays zero and infinite when it moves."""
    model = _model()
    x, target = torch.randn(3, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64), torch.zeros(3)
    target = target.long()

    def zero_for_the_first(m: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        relevance = _grad_x_input(m, x, t)
        return torch.cat([torch.zeros_like(relevance[:1]), relevance[1:]])

    result = ModelRandomisation(seed=7)(model, x, target, zero_for_the_first)
    assert result.similarity[0].isnan().all() and not result.similarity[1:].isnan().any()
    torch.testing.assert_close(result.similarity[1:], ModelRandomisation(seed=7)(model, x, target,
                                                                                 _grad_x_input).similarity[1:])

    def zero_at_x(m: nn.Module, inputs: Tensor, t: Tensor) -> Tensor:  # zero at x itself, moved elsewhere
        return torch.zeros_like(inputs) if torch.equal(inputs, x) else inputs - x

    moved = MaxSensitivity(samples=3)(model, x, target, zero_at_x)
    assert torch.isinf(moved).all() and (moved > 0).all()
    still = MaxSensitivity(samples=3)(model, x, target, lambda m, inputs, t: torch.zeros_like(inputs))
    assert torch.equal(still, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ConfigError, match="samples must be an integer >= 1"):
        MaxSensitivity(samples=2.5)  # type: ignore[arg-type]


def test_pixel_flipping_fractions_are_the_share_removed() -> None:
    """With more steps than features some points repeat, and the fractions say what was removed."""
    from relprop.metrics import pixel_flipping

    model = nn.Sequential(nn.Linear(4, 2)).double().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    curve = pixel_flipping(model, x, torch.randn(2, 4, dtype=torch.float64), 0, steps=8, fill=0.0)
    expected = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4], dtype=torch.float64) / 4  # round(j / 2), half to even
    assert torch.equal(curve.fractions, expected)
    torch.testing.assert_close(curve.scores[:, 1], curve.scores[:, 0])  # nothing removed at j = 1
