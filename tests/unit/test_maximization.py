"""Tests for relprop.methods.maximization: prototypes against closed-form optima, priors, side effects."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from relprop.errors import ConfigError, ExplanationError
from relprop.methods.maximization import (
    GaussianMixturePrior,
    GaussianPrior,
    Maximization,
    activation_maximization,
    prototypes,
)


def _linear(features: int, classes: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(features, classes, bias=False)


def test_two_class_linear_optimum_is_weight_difference() -> None:
    # log p(0|x) = log sigmoid((w0 - w1) . x) grows with the margin, so on ||x|| <= r the optimum is
    # x* = r (w0 - w1) / ||w0 - w1||.
    model = _linear(16, 2, seed=0)
    weight = model.weight.detach()
    x = activation_maximization(model, 0, shape=(16,), config=Maximization(norm=2.0, box=None))
    assert torch.cosine_similarity(x, weight[0] - weight[1], dim=0) > 0.99
    assert abs(x.norm().item() - 2.0) < 1e-4
    x1 = activation_maximization(model, 1, shape=(16,), config=Maximization(norm=2.0, box=None))
    assert torch.cosine_similarity(x1, weight[1] - weight[0], dim=0) > 0.99


def test_many_class_linear_optimum_satisfies_stationarity() -> None:
    # grad_x log softmax(Wx)_c = w_c - sum_k p_k(x) w_k; on the sphere ||x|| = r the maximiser is a fixed
    # point x* = r g(x*) / ||g(x*)|| (gradient parallel to x*), with no closed form for K > 2.
    model = _linear(12, 5, seed=1)
    weight = model.weight.detach()
    found = prototypes(model, [0, 1, 2, 3, 4], shape=(12,), config=Maximization(norm=1.5, box=None, steps=150))
    gradient = weight - torch.softmax(found @ weight.T, dim=1) @ weight  # (5, 12)
    assert (torch.cosine_similarity(found, gradient, dim=1) > 0.99).all()
    torch.testing.assert_close(found.norm(dim=1), torch.full((5,), 1.5), atol=1e-4, rtol=0)
    # the prototype beats the closed-form 2-class guess w_c - mean of the others (same norm)
    others = (weight.sum(0, keepdim=True) - weight) / 4
    guess = weight - others
    guess = 1.5 * guess / guess.norm(dim=1, keepdim=True)
    rows = torch.arange(5)
    assert (
        torch.log_softmax(found @ weight.T, 1)[rows, rows]
        >= torch.log_softmax(guess @ weight.T, 1)[rows, rows] - 1e-5
    ).all()


def test_box_constraint_optimum_is_a_corner() -> None:
    model = _linear(10, 2, seed=2)
    direction = (model.weight[0] - model.weight[1]).detach()
    x = activation_maximization(model, 0, shape=(10,), config=Maximization(box=(-1.0, 1.0), steps=100))
    assert torch.equal(x, direction.sign())


def _two_cluster_data(seed: int, features: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes on a 2-d plane (plus small noise) inside a 12-d space: off-plane inputs are improbable."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(2, features, generator=generator) * 0.5
    centres = torch.randn(2, features, generator=generator) * 0.3
    labels = torch.randint(0, 2, (400,), generator=generator)
    latent = torch.randn(400, 2, generator=generator)
    noise = 0.05 * torch.randn(400, features, generator=generator)
    return centres[labels] + latent @ basis + noise, labels


def test_expert_prior_raises_data_likelihood() -> None:
    data, labels = _two_cluster_data(seed=3)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(50):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(data), labels).backward()
        optimizer.step()
    for prior in (GaussianPrior.fit(data), GaussianMixturePrior.fit(data, k=2, seed=0)):
        simple = prototypes(model, [0, 1], shape=(12,), config=Maximization(box=(-2.0, 2.0), steps=100))
        expert = prototypes(
            model, [0, 1], shape=(12,), config=Maximization(box=(-2.0, 2.0), steps=100, prior=prior, prior_weight=1.0)
        )
        assert (prior.log_prob(expert) > prior.log_prob(simple) + 10.0).all()
        assert (prior.log_prob(expert) > prior.log_prob(data).mean()).all()  # as plausible as the data
        # the expert prototype is still confidently its class
        with torch.no_grad():
            assert (torch.softmax(model(expert), 1).diagonal() > 0.9).all()


def test_priors_match_reference_densities() -> None:
    data, _ = _two_cluster_data(seed=4)
    gaussian = GaussianPrior.fit(data, shrinkage=0.2)
    flat = data.double()
    empirical = torch.cov(flat.T, correction=0)
    covariance = 0.8 * empirical + 0.2 * empirical.trace() / 12 * torch.eye(12, dtype=torch.float64)
    reference = torch.distributions.MultivariateNormal(flat.mean(0), covariance_matrix=covariance)
    torch.testing.assert_close(gaussian.log_prob(flat), reference.log_prob(flat))
    assert gaussian.log_prob(data).dtype == torch.float32

    from sklearn.mixture import GaussianMixture

    mixture = GaussianMixturePrior.fit(data, k=3, seed=1, reg_covar=1e-3)
    sklearn_mixture = GaussianMixture(3, covariance_type="full", reg_covar=1e-3, random_state=1)
    expected = sklearn_mixture.fit(flat.numpy()).score_samples(flat.numpy())
    torch.testing.assert_close(mixture.log_prob(flat), torch.as_tensor(expected))
    with pytest.raises(ExplanationError, match="fitted on 12 features"):
        mixture.log_prob(torch.zeros(2, 5))


def test_no_side_effects_on_the_model() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 4))
    model.train()
    model[1].eval()  # mixed flags must come back as they were
    before = copy.deepcopy(model.state_dict())
    found = prototypes(model, [3, 0], shape=(8,), config=Maximization(steps=20))
    assert found.shape == (2, 8) and not found.requires_grad
    assert model.training and not model[1].training and model[0].training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(parameter.grad is None for parameter in model.parameters())
    assert all(parameter.requires_grad for parameter in model.parameters())


class _TinyRecurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRU(5, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.cell(x)  # (N, steps, hidden)
        return self.head(states[:, -1])


def test_sequence_model_prototypes_beat_random_inputs() -> None:
    torch.manual_seed(6)
    model = _TinyRecurrent()
    found = prototypes(model, [0, 1, 2], shape=(4, 5), config=Maximization(steps=80))
    assert found.shape == (3, 4, 5) and found.abs().max() <= 1.0
    candidates = torch.rand(500, 4, 5, generator=torch.Generator().manual_seed(6)) * 2 - 1  # in the box
    with torch.no_grad():
        best_random = torch.log_softmax(model(candidates), 1).max(0).values[:3]  # (3,)
        rows = torch.arange(3)
        reached = torch.log_softmax(model(found), 1)[rows, rows]
    assert (reached > best_random).all()


def test_argument_errors() -> None:
    model = _linear(4, 2, seed=7)
    with pytest.raises(ExplanationError, match="init"):
        activation_maximization(model, 0, shape=(4,), init=torch.zeros(5))
    with pytest.raises(ConfigError, match="box containing 0"):
        Maximization(norm=1.0, box=(0.5, 1.0))
    for options in ({"steps": 0}, {"lr": -1.0}, {"box": (1.0, -1.0)}, {"prior_weight": float("nan")}):
        with pytest.raises(ConfigError, match=next(iter(options))):
            Maximization(**options)  # type: ignore[arg-type]
    with pytest.raises(ExplanationError, match="do not index"):
        activation_maximization(model, 2, shape=(4,), config=Maximization(steps=1))


def test_a_mixture_with_more_components_than_samples_is_a_config_error() -> None:
    from relprop.errors import ConfigError
    from relprop.methods.maximization import GaussianMixturePrior

    with pytest.raises(ConfigError, match="mixture of 5 components needs at least 5 samples"):
        GaussianMixturePrior.fit(torch.randn(3, 4, dtype=torch.float64), k=5)


def test_a_buffer_the_forward_pass_writes_into_keeps_no_autograd_history() -> None:
    """A cache written in the forward pass held the optimised input's autograd history after the call."""

    class Caching(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear, self.head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
            self.register_buffer("cache", torch.zeros(1, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.cache[:len(x)] = self.linear(x)
            return self.head(torch.relu(self.cache[:len(x)]))  # type: ignore[no-any-return]

    model = Caching().eval()
    activation_maximization(model, 1, shape=(4,), config=Maximization(steps=1))
    assert model.cache.grad_fn is None and not model.cache.requires_grad
