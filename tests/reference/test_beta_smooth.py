"""``beta_smooth``: the gradient with every ReLU's derivative replaced by ``sigmoid(beta * input)``.

Checked three ways: against a literal twin (``nn.ReLU.forward`` replaced, while the twin runs, by a ReLU whose
backward is ``sigmoid(beta x) * grad``); against zennit's ``BetaSmooth`` composite where zennit is right; and by
its limits (large beta gives the plain gradient, the forward pass is the model's own). zennit keeps one stored
input per ReLU module, read after the forward pass, so it is wrong where a ReLU runs in place (it then sees the
ReLU's output) or where a module runs twice (torchvision's BasicBlock calls ``self.relu`` twice): both are shown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop.errors import ConfigError

BETA = 3.0


class _SmoothReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, beta: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.beta = beta
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return torch.sigmoid(ctx.beta * x) * grad, None


@contextlib.contextmanager
def _smoothed_relus(beta: float) -> Iterator[None]:
    forward = nn.ReLU.forward
    nn.ReLU.forward = lambda self, x: _SmoothReLU.apply(x, beta)  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.ReLU.forward = forward  # type: ignore[method-assign]


def _literal(model: nn.Module, x: Tensor, target: int, beta: float = BETA) -> Tensor:
    x = x.detach().clone().requires_grad_()
    with _smoothed_relus(beta):
        output = model(x)
    (grad,) = torch.autograd.grad(output[:, target].sum(), x)
    return grad


def _cnn(inplace: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3),
        nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(8 * 6 * 6, 5),
    ).double().eval()


def _relative(got: Tensor, want: Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("inplace", [False, True])
def test_beta_smooth_matches_its_literal_twin(inplace: bool) -> None:
    model = _cnn(inplace)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    ours = relprop.explain(model, x, target=2, method="beta_smooth", beta=BETA).relevance
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, _literal(model, x, 2), rtol=1e-12, atol=1e-14)


def test_beta_smooth_on_a_torchvision_resnet_matches_its_literal_twin() -> None:
    """In-place ReLUs, and a ReLU module that runs twice per block: each call smooths with its own input."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ours = relprop.explain(model, x, target=1, method="beta_smooth", beta=BETA).relevance
    assert _relative(ours, _literal(model, x, 1)) < 1e-12
    plain = relprop.explain(model, x, target=1, method="gradient").relevance
    assert _relative(ours, plain) > 0.05  # the smoothing changes it


def test_beta_smooth_also_smooths_functional_relus() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.second(torch.relu(self.first(x)))  # type: ignore[no-any-return]

    torch.manual_seed(1)
    model = Functional().double().eval()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    h = model.first(x)
    output = model.second(_SmoothReLU.apply(h, BETA))
    (want,) = torch.autograd.grad(output[:, 0].sum(), x)
    ours = relprop.explain(model, x.detach(), target=0, method="beta_smooth", beta=BETA).relevance
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-14)


def test_large_beta_gives_the_gradient_and_several_targets_work() -> None:
    model = _cnn(False)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    smooth = relprop.explain(model, x, target=1, method="beta_smooth", beta=1e6)
    plain = relprop.explain(model, x, target=1, method="gradient")
    torch.testing.assert_close(smooth.relevance, plain.relevance, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(smooth.output, plain.output, rtol=0, atol=0)  # the model's own forward pass
    several = relprop.explain(model, x, target=torch.tensor([[0, 3], [1, 4]]), method="beta_smooth", beta=BETA)
    for k, target in enumerate((0, 3)):
        torch.testing.assert_close(several.relevance[0, k], _literal(model, x[:1], target)[0])


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_beta_must_be_a_positive_finite_number(beta: float) -> None:
    with pytest.raises(ConfigError, match=r"option beta=.* must be a finite number"):
        relprop.explain(_cnn(False), torch.randn(1, 3, 16, 16, dtype=torch.float64), 0, method="beta_smooth",
                        beta=beta)


# ---------------------------------------------------------------- zennit


def _zennit(model: nn.Module, x: Tensor, target: int) -> Tensor:
    zcomposites = pytest.importorskip("zennit.composites")
    from zennit.attribution import Gradient

    one_hot = torch.eye(model(x).shape[1], dtype=x.dtype)[[target] * len(x)]
    with Gradient(model=model, composite=zcomposites.BetaSmooth(beta_smooth=BETA)) as attributor:
        _, relevance = attributor(x.clone(), one_hot)
    return relevance.detach()


@pytest.mark.reference
def test_beta_smooth_matches_zennit_where_each_relu_runs_once_out_of_place() -> None:
    model = _cnn(False)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    ours = relprop.explain(model, x, target=2, method="beta_smooth", beta=BETA).relevance
    assert _relative(ours, _zennit(model, x, 2)) < 1e-12


@pytest.mark.reference
def test_zennit_smooths_with_the_output_of_an_in_place_relu() -> None:
    """zennit differs from the literal twin on an in-place ReLU; relprop does not (the test above)."""
    model = _cnn(True)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    assert _relative(_zennit(model, x, 2), _literal(model, x, 2)) > 0.05
