"""Grad-CAM and guided Grad-CAM: against a literal twin written from the formula, their options and their errors.
(Against Captum's LayerGradCam and GuidedGradCam: tests/reference/test_against_captum.py.)"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relprop
from relprop.errors import ConfigError, ExplanationError


def _cnn(dims: int = 2, seed: int = 0) -> nn.Sequential:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[dims]
    torch.manual_seed(seed)
    return nn.Sequential(conv(2, 5, 3, padding=1), nn.ReLU(), conv(5, 6, 3, stride=2), nn.ReLU(), pool(1),
                         nn.Flatten(), nn.Linear(6, 4)).double().eval()


def _input(dims: int = 2, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, 2, *(9,) * dims, generator=generator, dtype=torch.float64)


def _literal_cam(model: nn.Sequential, x: Tensor, target: list[int], split: int, relu: bool = True) -> Tensor:
    """Grad-CAM element by element: alpha_k = (1/Z) sum_ij df/dA_kij, cam_ij = max(0, sum_k alpha_k A_kij)."""
    maps = []
    for i, t in enumerate(target):
        features = model[:split](x[i:i + 1]).detach().requires_grad_()
        (grad,) = torch.autograd.grad(model[split:](features)[0, t], features)
        a, g = features.detach()[0], grad[0]
        cam = torch.zeros(a.shape[1:], dtype=a.dtype)
        for k in range(a.shape[0]):
            alpha = g[k].sum() / g[k].numel()
            for position in itertools.product(*[range(n) for n in a.shape[1:]]):
                cam[position] += alpha * a[k][position]
        maps.append(cam.clamp(min=0) if relu else cam)
    return torch.stack(maps)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("relu", [True, False])
def test_grad_cam_is_the_formula(dims: int, relu: bool) -> None:
    model, x, target = _cnn(dims), _input(dims), [0, 3, 1]
    explanation = relprop.explain(model, x, target, method="grad_cam", layer="3", relu=relu)
    want = _literal_cam(model, x, target, split=4, relu=relu)
    torch.testing.assert_close(explanation.details["cam"], want, rtol=1e-10, atol=1e-12)
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[dims]
    upsampled = F.interpolate(want.unsqueeze(1), size=x.shape[2:], mode=mode, align_corners=False)
    assert explanation.relevance.shape == x.shape  # the map shared equally by the input's 2 channels
    torch.testing.assert_close(explanation.relevance, (upsampled / 2).expand_as(x), rtol=1e-10, atol=1e-12)
    if relu:
        assert bool((explanation.relevance >= 0).all())
    else:
        assert bool((explanation.details["cam"] < 0).any())  # the negative part kept


def test_guided_grad_cam_is_guided_backprop_times_the_map() -> None:
    model, x, target = _cnn(), _input(), [2, 0, 1]
    got = relprop.explain(model, x, target, method="guided_grad_cam", layer="3", upsample="nearest")
    guided = relprop.explain(model, x, target, method="guided_backprop").relevance
    cam = _literal_cam(model, x, target, split=4)
    torch.testing.assert_close(got.relevance, guided * F.interpolate(cam.unsqueeze(1), size=x.shape[2:]),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.details["cam"], cam, rtol=1e-10, atol=1e-12)


def test_several_targets_and_a_seed() -> None:
    model, x = _cnn(), _input()
    every = relprop.explain(model, x, "all", method="grad_cam", layer="2", relu=False)
    assert every.relevance.shape == (3, 4, *x.shape[1:]) and every.details["cam"].shape == (3, 4, 4, 4)
    for k in range(4):
        one = relprop.explain(model, x, k, method="grad_cam", layer="2", relu=False)
        torch.testing.assert_close(every.relevance[:, k], one.relevance)
    # without the ReLU the map is linear in the output gradient: a difference of scores gives the difference of maps
    contrast = relprop.explain(model, x, seed=lambda out: out[:, 1] - out[:, 3], method="grad_cam", layer="2",
                               relu=False)
    torch.testing.assert_close(contrast.relevance, every.relevance[:, 1] - every.relevance[:, 3])


def test_a_torchvision_resnet_at_its_last_block() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    explanation = relprop.explain(model, x, method="grad_cam", layer="layer4")
    assert explanation.relevance.shape == x.shape and explanation.details["cam"].shape == (2, 2, 2)
    assert explanation.target.tolist() == explanation.output.argmax(1).tolist()
    assert not any(m._forward_hooks for m in model.modules())  # the recording hooks are gone


def test_errors_name_the_layer_and_the_fix() -> None:
    model, x = _cnn(), _input()
    with pytest.raises(ConfigError, match=r"needs layer=.*layer='2', the last convolution"):
        relprop.explain(model, x, 0, method="grad_cam")
    with pytest.raises(ConfigError, match=r"needs layer="):
        relprop.explain(model, x, 0, method="guided_grad_cam")
    with pytest.raises(ConfigError, match=r"name no module"):
        relprop.explain(model, x, 0, method="grad_cam", layer="head")
    with pytest.raises(ConfigError, match=r"layer '5' outputs shape \(3, 6\); Grad-CAM needs a feature map"):
        relprop.explain(model, x, 0, method="grad_cam", layer="5")
    with pytest.raises(ConfigError, match=r"upsample='trilinear' does not interpolate 2 spatial"):
        relprop.explain(model, x, 0, method="grad_cam", layer="2", upsample="trilinear")
    with pytest.raises(ConfigError, match=r"layer '6' is a Linear, whose output has its features in the last"):
        relprop.explain(model, x, 0, method="grad_cam", layer="6")
    with pytest.raises(ConfigError, match=r"layer must be a module name"):
        relprop.explain(model, x, 0, method="grad_cam", layer=2)
    assert not any(m._forward_hooks for m in model.modules())


def test_a_layer_that_runs_twice_or_does_not_lead_to_the_output_is_refused() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(2, 2, 3, padding=1), nn.Linear(2, 3)
            self.unused = nn.Conv2d(2, 2, 1)

        def forward(self, x: Tensor) -> Tensor:
            self.unused(x.detach())
            return self.head(self.conv(self.conv(x)).mean((2, 3)))

    model, x = Shared().double().eval(), _input()
    with pytest.raises(ExplanationError, match=r"layer 'conv' ran 2 times"):
        relprop.explain(model, x, 0, method="grad_cam", layer="conv")
    with pytest.raises(ExplanationError, match=r"'unused'"):
        relprop.explain(model, x, 0, method="grad_cam", layer="unused")


def test_a_map_with_other_spatial_dimensions_than_the_input_is_refused() -> None:
    model = nn.Sequential(nn.Linear(5, 8), nn.Unflatten(1, (2, 4)), nn.Conv1d(2, 3, 3), nn.Flatten(),
                          nn.Linear(6, 2)).double().eval()
    x = torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"1 spatial dimension\(s\) and the input shape \(2, 5\)"):
        relprop.explain(model, x, 0, method="grad_cam", layer="2")


class _Dict(nn.Module):
    """The CNN returning a mapping, as Hugging Face models return a ModelOutput: its logits, or no logits at all."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key, self.net = key, _cnn()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {self.key: self.net(x)}


@pytest.mark.parametrize("method", ["grad_cam", "guided_grad_cam"])
def test_a_model_returning_its_logits_in_a_mapping(method: str) -> None:
    x = _input()
    plain = relprop.explain(_cnn(), x, method=method, layer="3")
    wrapped = relprop.explain(_Dict("logits").eval(), x, method=method, layer="net.3")
    torch.testing.assert_close(wrapped.relevance, plain.relevance)
    assert torch.equal(wrapped.target, plain.target)
    with pytest.raises(ExplanationError, match=r"returns dict, not a tensor of scores; pass output="):
        relprop.explain(_Dict("scores").eval(), x, method=method, layer="net.3")
