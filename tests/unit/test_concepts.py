"""TCAV (relprop.concepts): CAVs that find a planted concept direction, directional derivatives against a literal
autograd twin, the test against chance, and the errors. (Against Captum's TCAV: tests/reference/test_against_captum.py.)
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

import relprop
from relprop import concepts


class _Planted(nn.Module):
    """A hidden layer that copies its 4 inputs (and their negatives, through a ReLU); class 1 grows with input 0,
    class 0 shrinks with it, class 2 ignores it."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8, bias=False)
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, 3, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.cat([torch.eye(4), -torch.eye(4)]))
            self.head.weight.zero_()
            self.head.weight[1, 0], self.head.weight[1, 4] = 1.0, -1.0  # + x_0
            self.head.weight[0, 0], self.head.weight[0, 4] = -1.0, 1.0  # - x_0
            self.head.weight[2, 1:4] = 1.0

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.relu(self.hidden(x)))


def _data(n: int, shift: float = 0.0, seed: int = 0) -> Tensor:
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:, 0] += shift
    return x


def test_a_cav_points_along_the_planted_concept() -> None:
    model = _Planted().double().eval()
    cav = concepts.learn_cav(model, "relu", _data(80, shift=3.0, seed=1), _data(80, seed=2))
    assert cav.layer == "relu" and cav.accuracy > 0.9
    torch.testing.assert_close(cav.vector.norm(), torch.tensor(1.0, dtype=torch.float64))
    assert float(cav.vector[0]) > 0.9  # the unit that copies x_0 (its negative's unit points the other way)
    loader = DataLoader(list(zip(_data(80, shift=3.0, seed=1), torch.zeros(80))), batch_size=16)  # (x, y) batches
    same = concepts.learn_cav(model, "relu", loader, DataLoader(_data(80, seed=2), batch_size=32))
    torch.testing.assert_close(same.vector, cav.vector, rtol=1e-9, atol=1e-12)


def test_directional_derivatives_are_the_layer_gradient_along_the_cav() -> None:
    """The literal twin: autograd's gradient of the class score at the layer's output, dotted with the CAV."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()
    cav = concepts.CAV("1", torch.nn.functional.normalize(torch.randn(7, dtype=torch.float64), dim=0), 1.0)
    x = torch.randn(9, 5, dtype=torch.float64)
    kept: list[Tensor] = []

    def keep(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        out.retain_grad()
        kept.append(out)

    handle = model[1].register_forward_hook(keep)
    model(x)[:, 2].sum().backward()
    handle.remove()
    want = kept[0].grad @ cav.vector
    score = concepts.tcav(model, x, 2, cav)
    torch.testing.assert_close(score.derivatives, want, rtol=1e-12, atol=1e-15)
    assert float(score.sign_count) == float((want > 0).double().mean())
    torch.testing.assert_close(score.magnitude, want.mean())


def test_a_class_that_uses_the_concept_scores_one_and_the_test_tells_it_from_chance() -> None:
    model = _Planted().double().eval()
    concept, randoms = _data(60, shift=3.0, seed=1), [_data(60, seed=s) for s in range(10, 22)]
    x = _data(30, seed=3)
    cav = concepts.learn_cav(model, "relu", concept, randoms[0])
    assert float(concepts.tcav(model, x, 1, cav).sign_count) == 1.0  # class 1 grows along x_0
    assert float(concepts.tcav(model, x, 0, cav).sign_count) == 0.0  # class 0 shrinks
    result = concepts.tcav_test(model, x, 1, "relu", concept, randoms)
    assert result.scores.shape == (12,) and result.random_scores.shape == (11,)
    assert bool((result.scores == 1).all()) and result.significant(0.05)  # chance: 0 or 1 (measured p = 0.016)
    assert bool((result.accuracies > 0.85).all())  # a shift of 3 standard deviations: about 93% apart


def test_concept_errors() -> None:
    model = _Planted().double().eval()
    with pytest.raises(relprop.ConfigError, match="layer 'nope' names no module of _Planted"):
        concepts.learn_cav(model, "nope", _data(10), _data(10, seed=1))
    with pytest.raises(relprop.ConfigError, match="at least 3 random sets"):
        concepts.tcav_test(model, _data(5), 1, "relu", _data(10), [_data(10, seed=1), _data(10, seed=2)])
    with pytest.raises(relprop.ConfigError, match="concept data is empty"):
        concepts.learn_cav(model, "relu", [], _data(10))
    with pytest.raises(relprop.ConfigError, match="test_fraction must be in"):
        concepts.learn_cav(model, "relu", _data(10), _data(10, seed=1), test_fraction=1.0)
    twice = nn.Sequential(model.hidden, model.relu, nn.Linear(8, 8).double(), model.relu).eval()
    with pytest.raises(relprop.ExplanationError, match="ran 2 times in one forward pass"):
        concepts.learn_cav(twice, "1", _data(10), _data(10, seed=1))
    assert all(not m._forward_hooks for m in twice.modules())
