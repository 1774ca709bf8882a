"""GradientSHAP: against a literal twin that makes the same draws, its expected completeness, several targets and
seeds, and its errors. (Against Captum's GradientShap, statistically: tests/reference/test_against_captum.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop.errors import ConfigError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).double()


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _literal(model: nn.Module, x: Tensor, target: int, baselines: Tensor, samples: int, noise: float,
             seed: int) -> Tensor:
    """The mean over the draws of (x~ - b) df/dx at b + a (x~ - b), one sample and one draw at a time."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randint(len(baselines), (samples,), generator=generator)
    alphas = torch.rand(samples, generator=generator, dtype=torch.float64)
    eps = torch.randn((samples, 1, *x.shape[1:]), generator=generator, dtype=torch.float64)
    total = torch.zeros_like(x)
    for s in range(samples):
        for i in range(len(x)):
            noisy = x[i] + noise * eps[s, 0]
            b = baselines[chosen[s]]
            point = (b + alphas[s] * (noisy - b)).unsqueeze(0).requires_grad_()
            (grad,) = torch.autograd.grad(model(point)[0, target], point)
            total[i] += (noisy - b) * grad[0]
    return total / samples


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_gradient_shap_is_the_mean_over_its_draws(noise: float) -> None:
    model, x, baselines = _model().eval(), _randn(3, 2, 4, 4, seed=1), 0.5 * _randn(4, 2, 4, 4, seed=2)
    got = relprop.explain(model, x, 2, method="gradient_shap", baselines=baselines, samples=5, noise=noise, seed=3)
    want = _literal(model, x, 2, baselines, samples=5, noise=noise, seed=3)
    torch.testing.assert_close(got.relevance, want, rtol=1e-10, atol=1e-13)


def test_its_sum_approaches_the_expected_difference_and_a_linear_model_is_exact() -> None:
    model, x, baselines = _model().eval(), _randn(3, 2, 4, 4, seed=1), 0.5 * _randn(4, 2, 4, 4, seed=2)
    got = relprop.explain(model, x, 1, method="gradient_shap", baselines=baselines, samples=3000).relevance
    with torch.no_grad():
        expected = model(x)[:, 1] - model(baselines)[:, 1].mean()
    assert float((got.flatten(1).sum(1) - expected).abs().max()) < 0.02 * float(expected.abs().max())
    linear = nn.Sequential(nn.Flatten(), nn.Linear(32, 3)).double().eval()
    one = baselines[:1]
    exact = relprop.explain(linear, x, 0, method="gradient_shap", baselines=one, samples=4).relevance
    torch.testing.assert_close(exact, (x - one) * linear[1].weight[0].reshape(2, 4, 4), rtol=1e-12, atol=1e-14)


def test_several_targets_seeds_and_dtypes() -> None:
    model, x, baselines = _model().eval(), _randn(2, 2, 4, 4, seed=1), 0.5 * _randn(3, 2, 4, 4, seed=2)
    options = {"method": "gradient_shap", "baselines": baselines, "samples": 6, "seed": 4}
    every = relprop.explain(model, x, "all", **options).relevance
    for k in range(3):
        torch.testing.assert_close(every[:, k], relprop.explain(model, x, k, **options).relevance)
    contrast = relprop.explain(model, x, 0, output=lambda out: out[:, [2]] - out[:, [0]], **options)  # one score
    torch.testing.assert_close(contrast.relevance, every[:, 2] - every[:, 0], rtol=1e-10, atol=1e-13)
    assert not torch.equal(relprop.explain(model, x, 1, **{**options, "seed": 5}).relevance, every[:, 1])
    single = relprop.explain(model.float(), x.float(), 1, **{**options, "baselines": baselines.float()}).relevance
    torch.testing.assert_close(single.double(), every[:, 1], rtol=1e-4, atol=1e-6)  # the same draws in float32


def test_errors() -> None:
    model, x = _model().eval(), _randn(2, 2, 4, 4, seed=1)
    with pytest.raises(ConfigError, match="needs baselines="):
        relprop.explain(model, x, 0, method="gradient_shap")
    with pytest.raises(ConfigError, match=r"baselines must have shape \(n, 2, 4, 4\)"):
        relprop.explain(model, x, 0, method="gradient_shap", baselines=torch.zeros(2, 4, 4))
    with pytest.raises(ConfigError, match="baselines contain NaN"):
        relprop.explain(model, x, 0, method="gradient_shap", baselines=torch.full((1, 2, 4, 4), float("nan")))
