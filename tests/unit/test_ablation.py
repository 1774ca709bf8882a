"""Feature ablation, feature permutation and Shapley values: against literal twins written from their definitions,
their properties (efficiency, linearity in the explained score, per-sample groups) and their errors. (Against Captum's
FeatureAblation, FeaturePermutation and ShapleyValues: tests/reference/test_against_captum.py.)"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop.errors import ConfigError


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    return model.double().eval()


def _x(seed: int = 1) -> Tensor:
    return torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _quadrants() -> Tensor:
    """4 groups: the quadrants of the 4x4 image, shared by both channels."""
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    mask[..., :2, 2:], mask[..., 2:, :2], mask[..., 2:, 2:] = 1, 2, 3
    return mask


def _value(model: nn.Module, x: Tensor, mask: Tensor, kept: set[int], baseline: float, target: int) -> Tensor:
    """The target score with the groups in ``kept`` as in x and every other element at the baseline."""
    keep = torch.zeros_like(x, dtype=torch.bool)
    for g in kept:
        keep |= (mask == g).expand_as(x)
    with torch.no_grad():
        return model(torch.where(keep, x, torch.full_like(x, baseline)))[:, target]


def test_feature_ablation_is_the_drop_per_group() -> None:
    model, x, mask = _model(), _x(), _quadrants()
    got = relprop.explain(model, x, 2, method="feature_ablation", feature_mask=mask, baseline=0.5).relevance
    full = _value(model, x, mask, {0, 1, 2, 3}, 0.5, 2)
    want = torch.zeros_like(x)
    for g in range(4):
        drop = full - _value(model, x, mask, {0, 1, 2, 3} - {g}, 0.5, 2)
        want += drop.reshape(-1, 1, 1, 1) * (mask == g)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    every = relprop.explain(model, x, 2, method="feature_ablation", baseline=0.5)  # every element alone
    assert len(torch.unique(every.relevance[0])) > 16


@pytest.mark.parametrize("grouped", [False, True])
def test_feature_permutation_is_the_drop_when_a_group_is_shuffled_across_the_batch(grouped: bool) -> None:
    """The literal twin: group by group, the batch's values of that group in a random order (never the identity,
    from a generator seeded as the method's), and the score's drop."""
    model, x = _model(), _x()
    mask = _quadrants() if grouped else torch.arange(32).reshape(1, 2, 4, 4)
    got = relprop.explain(model, x, 1, method="feature_permutation", feature_mask=mask if grouped else None, seed=4,
                          batch_size=7)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        full = model(x)[:, 1]
    want = torch.zeros_like(x)
    for g in range(int(mask.max()) + 1):
        order = torch.randperm(3, generator=generator)
        while torch.equal(order, torch.arange(3)):
            order = torch.randperm(3, generator=generator)
        inside = (mask == g).expand_as(x)
        shuffled = x.clone()
        shuffled[inside] = x[order][inside]
        with torch.no_grad():
            want += (full - model(shuffled)[:, 1]).reshape(-1, 1, 1, 1) * inside
    torch.testing.assert_close(got.relevance, want, rtol=1e-12, atol=1e-14)
    other = relprop.explain(model, x, 1, method="feature_permutation", feature_mask=mask if grouped else None, seed=5)
    assert not torch.equal(other.relevance, got.relevance)


def test_feature_permutation_gives_a_feature_the_model_ignores_nothing_and_needs_two_samples() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double().eval()
    with torch.no_grad():
        model[0].weight[:, 2] = 0
    x = torch.randn(6, 4, dtype=torch.float64)
    got = relprop.explain(model, x, 0, method="feature_permutation")
    assert bool((got.relevance[:, 2] == 0).all()) and bool((got.relevance[:, [0, 1, 3]] != 0).any())
    with pytest.raises(ConfigError, match="needs a batch of at least 2 samples, got 1"):
        relprop.explain(model, x[:1], 0, method="feature_permutation")
    # several classes share the shuffles of the batch (repeating it per class would pair samples with their copies)
    every = relprop.explain(model, x, "all", method="feature_permutation", seed=3)
    for c in range(2):
        one = relprop.explain(model, x, c, method="feature_permutation", seed=3)
        assert torch.equal(every.relevance[:, c], one.relevance)


def test_exact_shapley_values_are_the_mean_over_every_order() -> None:
    model, x, mask = _model(), _x(), _quadrants()
    got = relprop.explain(model, x, 1, method="shapley_values", feature_mask=mask)
    phi = torch.zeros(len(x), 4, dtype=torch.float64)
    for order in itertools.permutations(range(4)):
        for k, g in enumerate(order):
            before = set(order[:k])
            phi[:, g] += _value(model, x, mask, before | {g}, 0.0, 1) - _value(model, x, mask, before, 0.0, 1)
    phi /= math.factorial(4)
    want = torch.zeros_like(x) + sum(phi[:, g].reshape(-1, 1, 1, 1) * (mask == g) for g in range(4))
    torch.testing.assert_close(got.relevance, want, rtol=1e-12, atol=1e-14)
    assert float(got.details["efficiency_gap"].abs().max()) < 1e-13


def test_sampled_shapley_values_are_efficient_and_approach_the_exact_ones() -> None:
    model, x, mask = _model(), _x(), _quadrants()
    exact = relprop.explain(model, x, 0, method="shapley_values", feature_mask=mask).relevance
    sampled = relprop.explain(model, x, 0, method="shapley_values", feature_mask=mask, samples=400)
    assert float(sampled.details["efficiency_gap"].abs().max()) < 1e-13  # every order sums to f(x) - f(baseline)
    assert float((sampled.relevance - exact).abs().max()) < 0.05 * float(exact.abs().max())
    again = relprop.explain(model, x, 0, method="shapley_values", feature_mask=mask, samples=400)
    assert torch.equal(again.relevance, sampled.relevance)
    other = relprop.explain(model, x, 0, method="shapley_values", feature_mask=mask, samples=400, seed=1)
    assert not torch.equal(other.relevance, sampled.relevance)
    chunked = relprop.explain(model, x, 0, method="shapley_values", feature_mask=mask, samples=400, batch_size=4)
    torch.testing.assert_close(chunked.relevance, sampled.relevance, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["feature_ablation", "shapley_values"])
def test_a_seed_and_per_sample_groups(name: str) -> None:
    model, x = _model(), _x()
    mask = _quadrants().repeat(3, 1, 1, 1)
    mask[1] = (mask[1] + 1) % 4  # sample 1: other ids on the same regions; sample 2: two groups only
    mask[2] = torch.arange(16).reshape(1, 4, 4) % 2
    together = relprop.explain(model, x, 2, method=name, feature_mask=mask).relevance
    for i in range(3):
        alone = relprop.explain(model, x[i:i + 1], 2, method=name, feature_mask=mask[i:i + 1]).relevance
        torch.testing.assert_close(together[i:i + 1], alone, rtol=1e-12, atol=1e-14)
    ones, twos = (relprop.explain(model, x, t, method=name, feature_mask=mask).relevance for t in (1, 2))
    contrast = relprop.explain(model, x, seed=lambda out: out[:, 2] - out[:, 1], method=name, feature_mask=mask)
    torch.testing.assert_close(contrast.relevance, twos - ones, rtol=1e-10, atol=1e-13)


def test_errors_say_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    model, x = _model(), _x()
    with pytest.raises(ConfigError, match="feature_mask must be an integer tensor"):
        relprop.explain(model, x, 0, method="feature_ablation", feature_mask=torch.zeros(4, 4))
    with pytest.raises(ConfigError, match=r"feature_mask of shape \(3, 4\) does not broadcast"):
        relprop.explain(model, x, 0, method="feature_ablation", feature_mask=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match="needs 32 forward passes .* more than max_evaluations=10"):
        relprop.explain(model, x, 0, method="feature_ablation", max_evaluations=10)
    with pytest.raises(ConfigError, match="exact Shapley values of 32 groups need 2\\^32 forward passes"):
        relprop.explain(model, x, 0, method="shapley_values")
    with pytest.raises(ConfigError, match="option samples=0 must be a positive integer"):
        relprop.explain(model, x, 0, method="shapley_values", feature_mask=_quadrants(), samples=0)
    with pytest.raises(ConfigError, match=r"needs 3300 forward passes"):
        relprop.explain(model, x, 0, method="shapley_values", samples=100, max_evaluations=1000)
    relprop.explain(model, x, 0, method="shapley_values", feature_mask=_quadrants(), progress=True, batch_size=12)
    assert "shapley_values: 16/16 forward passes of the batch" in capsys.readouterr().err


def test_kernel_shap_over_every_coalition_is_exact_and_sampled_approaches_it() -> None:
    """Lundberg and Lee's theorem: the Shapley kernel's weighted fit over every coalition gives the Shapley values."""
    model, x, mask = _model(), _x(), _quadrants()
    exact = relprop.explain(model, x, 1, method="shapley_values", feature_mask=mask).relevance
    every = relprop.explain(model, x, 1, method="kernel_shap", feature_mask=mask).relevance
    torch.testing.assert_close(every, exact, rtol=1e-10, atol=1e-13)
    sampled = relprop.explain(model, x, 1, method="kernel_shap", feature_mask=mask, samples=3000).relevance
    assert float((sampled - exact).abs().max()) < 0.05 * float(exact.abs().max())
    with torch.no_grad():
        delta = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    torch.testing.assert_close(sampled.sum((1, 2, 3)) / 8, delta, rtol=1e-10, atol=1e-13)  # 8 elements per group
    again = relprop.explain(model, x, 1, method="kernel_shap", feature_mask=mask, samples=3000).relevance
    assert torch.equal(again, sampled)


def test_lime_recovers_a_linear_model_and_is_a_weighted_fit() -> None:
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(32, 3)).double().eval()
    x, mask = _x(), _quadrants()
    got = relprop.explain(linear, x, 2, method="lime", feature_mask=mask, samples=64)
    contributions = (linear[1].weight[2].reshape(2, 4, 4) * x).unsqueeze(1)  # w_i x_i, summed per group
    want = torch.zeros_like(x)
    for g in range(4):
        want += (contributions * (mask == g)).sum((1, 2, 3, 4)).reshape(-1, 1, 1, 1) * (mask == g)
    torch.testing.assert_close(got.relevance, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got.details["intercept"], linear[1].bias[2].expand(3), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got.details["r2"], torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-9)
    shrunk = relprop.explain(linear, x, 2, method="lime", feature_mask=mask, samples=64, ridge=10.0).relevance
    assert float(shrunk.abs().sum()) < float(got.relevance.abs().sum())


def test_lime_on_a_nonlinear_model_is_the_literal_weighted_least_squares() -> None:
    model, x, mask = _model(), _x(), _quadrants()
    got = relprop.explain(model, x, 0, method="lime", feature_mask=mask, samples=40, seed=3, kernel_width=0.5)
    z = torch.rand(40, 4, generator=torch.Generator().manual_seed(3)) < 0.5  # the same draws
    z[0] = True
    rows, weights = [], []
    for coalition in z:
        kept = {g for g in range(4) if coalition[g]}
        rows.append(_value(model, x, mask, kept, 0.0, 0))
        cosine = len(kept) / (math.sqrt(len(kept)) * 2) if kept else 0.0
        weights.append(math.exp(-((1 - cosine) ** 2) / 0.25))
    values, w = torch.stack(rows), torch.tensor(weights, dtype=torch.float64)
    design = torch.cat([torch.ones(40, 1, dtype=torch.float64), z.double()], 1)
    solution = torch.linalg.solve(design.T @ (w[:, None] * design), design.T @ (w[:, None] * values))
    want = torch.zeros_like(x) + sum(solution[1 + g].reshape(-1, 1, 1, 1) * (mask == g) for g in range(4))
    torch.testing.assert_close(got.relevance, want, rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(got.details["intercept"], solution[0], rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("method", ["kernel_shap", "lime", "shapley_values"])
def test_sampled_fits_give_each_sample_its_result_alone_when_masks_hold_other_ids(method: str) -> None:
    """Per-sample masks with different sets of ids (sample 1 lacks group 3, sample 2 has an id 7 of its own): the
    batch is fitted (sampled Shapley values: its orders drawn) per set of ids, so no sample fits a group it lacks
    and each gets the result it gets alone."""
    model, x = _model(), _x()
    mask = _quadrants().expand(3, 2, 4, 4).clone()
    mask[1][mask[1] == 3] = 2  # groups 0, 1, 2
    mask[2][mask[2] == 0] = 7  # groups 1, 2, 3, 7
    target, baseline = torch.tensor([0, 2, 1]), 0.1 * _x(seed=5)
    options = {"samples": 50, "seed": 4, "feature_mask": mask}
    together = relprop.explain(model, x, target, method=method, baseline=baseline, **options)
    for i in range(3):
        alone = relprop.explain(model, x[i:i + 1], target[i:i + 1], method=method, baseline=baseline[i:i + 1],
                                **{**options, "feature_mask": mask[i:i + 1]})
        torch.testing.assert_close(together.relevance[i:i + 1], alone.relevance, rtol=1e-12, atol=1e-14)
        for name, value in alone.details.items():
            torch.testing.assert_close(together.details[name][i:i + 1], value, rtol=1e-12, atol=1e-14)
    one_hot = torch.nn.functional.one_hot(target, 3).double()  # a seed tensor is split with its samples
    drawn = {"samples": 50, "feature_mask": mask}  # (an output seed= takes the place of the random seed's name)
    seeded = relprop.explain(model, x, method=method, seed=one_hot, baseline=baseline, **drawn)
    by_class = relprop.explain(model, x, target, method=method, baseline=baseline, **drawn)
    torch.testing.assert_close(seeded.relevance, by_class.relevance, rtol=1e-12, atol=1e-14)
    same = relprop.explain(model, x[:1].expand(3, -1, -1, -1), target, method=method, baseline=baseline[:1],
                           **{**options, "feature_mask": mask[:1].expand(3, -1, -1, -1)})  # one set: one fit
    first = relprop.explain(model, x[:1], target[:1], method=method, baseline=baseline[:1],
                            **{**options, "feature_mask": mask[:1]})
    torch.testing.assert_close(same.relevance[:1], first.relevance, rtol=1e-12, atol=1e-14)


def test_kernel_shap_and_lime_errors() -> None:
    model, x = _model(), _x()
    with pytest.raises(ConfigError, match="needs at least 2 feature groups"):
        relprop.explain(model, x, 0, method="kernel_shap", feature_mask=torch.zeros(1, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"every coalition of 32 groups needs 2\^32"):
        relprop.explain(model, x, 0, method="kernel_shap")
    with pytest.raises(ConfigError, match="needs 500 forward passes .* more than max_evaluations=100"):
        relprop.explain(model, x, 0, method="kernel_shap", samples=500, max_evaluations=100)
    with pytest.raises(ConfigError, match="lime needs kernel_width > 0"):
        relprop.explain(model, x, 0, method="lime", kernel_width=0.0)
    with pytest.raises(ConfigError, match="needs 500 forward passes"):
        relprop.explain(model, x, 0, method="lime", samples=500, max_evaluations=100)
