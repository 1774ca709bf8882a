"""relprop's gradient, perturbation and LRP methods against Captum (float64, tolerance 1e-6 relative to max |R|).

What Captum's LRP computes (read from ``captum/attr/_utils/lrp_rules.py`` and ``captum/attr/_core/lrp.py``):
a second forward pass runs with modified weights; the gradient at each ruled layer's output is divided by that
layer's (modified) output plus ``eps * sign`` (zero counting as positive), and at its input multiplied by the
input; ReLUs pass relevance unchanged; the result is finally multiplied by the target's logit. So Captum starts at
the logit as relprop does. ``EpsilonRule`` (default ``eps = 1e-9``) is relprop's ``Epsilon``; ``GammaRule``
modifies the weights only (``w + gamma w+``) and keeps the raw bias (or zeroes it with ``set_bias_to_zero``),
with one set of weights for outputs of either sign; ``Alpha1_Beta0_Rule`` uses ``w+`` with the raw bias. Both
assume non-negative inputs (ReLU nets); Gamma and Alpha1_Beta0 stabilise with the class default 1e-9.
Captum's LRP needs module children it knows: flattening is done functionally in the CNN below.
relprop and zennit apply a rule's weight modifier to the bias as well (``b + gamma b+``, ``b+``), so with biases
the matching relprop rule is a ``ZRule`` whose ``weights()`` leaves the bias alone (tested below).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor, nn

captum = pytest.importorskip("captum")
from captum.attr import (  # noqa: E402
    LRP,
    Deconvolution,
    DeepLift,
    DeepLiftShap,
    FeatureAblation,
    GradientShap,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    KernelShap,
    LayerAttribution,
    LayerConductance,
    LayerDeepLift,
    LayerGradCam,
    LayerGradientXActivation,
    NoiseTunnel,
    Occlusion,
    Saliency,
    ShapleyValues,
)
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule  # noqa: E402

import relprop  # noqa: E402
from relprop import rules  # noqa: E402
from relprop.composites import LINEAR_TYPES, RuleMap  # noqa: E402
from relprop.layers import Sum  # noqa: E402
from relprop.methods import lrp  # noqa: E402

pytestmark = [
    pytest.mark.reference,
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require"),
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU activations"),
    pytest.mark.filterwarnings("ignore:Setting forward, backward hooks and attributes on non-linear"),
]

TOLERANCE = 1e-6


def max_relative_error(got: Tensor, want: Tensor) -> float:
    want = want.detach()
    scale = want.abs().max()
    assert scale > 0, "degenerate case: zero attribution everywhere"
    return float((got.detach().to(want) - want).abs().max() / scale)


class _CNN(nn.Module):
    """Conv -> ReLU -> pool -> Conv -> ReLU -> flatten (functional: Captum's LRP has no rule for nn.Flatten)."""

    def __init__(self, pool: nn.Module, bias: bool) -> None:
        super().__init__()
        self.conv1, self.relu1, self.pool = nn.Conv2d(2, 4, 3, padding=1, bias=bias), nn.ReLU(), pool
        self.conv2, self.relu2 = nn.Conv2d(4, 5, 3, bias=bias), nn.ReLU()
        self.fc = nn.Linear(5 * 2 * 2, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        return self.fc(x.flatten(1))  # (batch, 20)


def _seeded(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 0.3 if name.endswith("bias") else param[0].numel() ** -0.5
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * scale)
    return model.double().eval()


def _model(kind: str, bias: bool = True, seed: int = 0) -> nn.Module:
    if kind == "mlp":
        model: nn.Module = nn.Sequential(nn.Linear(6, 12, bias=bias), nn.ReLU(), nn.Linear(12, 10, bias=bias),
                                         nn.ReLU(), nn.Linear(10, 3, bias=bias))
    else:
        model = _CNN(nn.MaxPool2d(2) if kind == "cnn-max" else nn.AvgPool2d(2), bias)
    return _seeded(model.double(), seed)


def _input(kind: str, *, nonnegative: bool = False, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (4, 6) if kind == "mlp" else (4, 2, 8, 8)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    return x.abs() if nonnegative else x


KINDS = ["mlp", "cnn-avg", "cnn-max"]


# ---------------------------------------------------------------- gradient family


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["saliency", "input_x_gradient", "guided_backprop", "deconvnet"])
def test_gradient_family_matches_captum(name: str, kind: str) -> None:
    model, x = _model(kind), _input(kind)
    target = torch.tensor([0, 1, 2, 1])
    if name == "saliency":
        want = Saliency(model).attribute(x, target=target, abs=False)
        got = relprop.explain(model, x, target, method="gradient").relevance
    elif name == "input_x_gradient":
        want = InputXGradient(model).attribute(x, target=target)
        got = relprop.explain(model, x, target, method="gradient_x_input").relevance
    elif name == "guided_backprop":
        want = GuidedBackprop(model).attribute(x, target=target)
        got = relprop.explain(model, x, target, method="guided_backprop").relevance
    else:
        want = Deconvolution(model).attribute(x, target=target)
        got = relprop.explain(model, x, target, method="deconvnet").relevance
    assert max_relative_error(got, want) <= TOLERANCE


@pytest.mark.parametrize("kind", ["cnn-avg", "cnn-max"])
@pytest.mark.parametrize("layer", ["conv1", "relu2"])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("upsample", ["bilinear", "nearest"])
def test_grad_cam_matches_captum(kind: str, layer: str, relu: bool, upsample: str) -> None:
    model, x = _model(kind), _input(kind)
    target = torch.tensor([0, 1, 2, 1])
    module = getattr(model, layer)
    cam = LayerGradCam(model, module).attribute(x, target=target, relu_attributions=relu)  # (batch, 1, h, w)
    want = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode=upsample)
    got = relprop.explain(model, x, target, method="grad_cam", layer=layer, relu=relu, upsample=upsample)
    assert max_relative_error(got.details["cam"], cam[:, 0]) <= TOLERANCE
    assert max_relative_error(got.relevance.sum(1, keepdim=True), want) <= TOLERANCE  # channels share the map
    torch.testing.assert_close(got.relevance[:, 0], got.relevance[:, 1])


@pytest.mark.parametrize("kind", ["cnn-avg", "cnn-max"])
@pytest.mark.parametrize("upsample", ["bilinear", "nearest"])
def test_guided_grad_cam_matches_captum(kind: str, upsample: str) -> None:
    model, x = _model(kind), _input(kind)
    target = torch.tensor([0, 1, 2, 1])
    want = GuidedGradCam(model, model.conv2).attribute(x, target=target, interpolate_mode=upsample)
    got = relprop.explain(model, x, target, method="guided_grad_cam", layer="conv2", upsample=upsample).relevance
    assert max_relative_error(got, want) <= TOLERANCE


@pytest.mark.parametrize("kind", ["mlp", "cnn-avg", "mlp-tanh-sigmoid"])
@pytest.mark.parametrize("baseline", ["zero", "random"])
def test_deeplift_matches_captum(kind: str, baseline: str) -> None:
    if kind == "mlp-tanh-sigmoid":
        layers = (nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 10), nn.Sigmoid(), nn.Linear(10, 3))
        model = _seeded(nn.Sequential(*layers), 0)
        x = _input("mlp")
    else:
        model, x = _model(kind), _input(kind)
    reference = torch.zeros_like(x) if baseline == "zero" else 0.3 * _input(kind.split("-")[0], seed=5)
    target = torch.tensor([0, 1, 2, 1])
    want, delta = DeepLift(model).attribute(x, target=target, baselines=reference, return_convergence_delta=True)
    got = relprop.explain(model, x, target, method="deeplift", baseline=reference)
    assert max_relative_error(got.relevance, want) <= TOLERANCE
    torch.testing.assert_close(got.details["summation_gap"], delta.detach(), rtol=0, atol=1e-10)  # both ~0


@pytest.mark.parametrize("kind", ["mlp", "cnn-avg"])
def test_deeplift_shap_matches_captum(kind: str) -> None:
    model, x = _model(kind), _input(kind)
    references = 0.3 * _input(kind, seed=6)[:3]  # (3, ...): each sample against each
    target = torch.tensor([0, 1, 2, 1])
    want, delta = DeepLiftShap(model).attribute(x, baselines=references, target=target,
                                                return_convergence_delta=True)
    got = relprop.explain(model, x, target, method="deeplift_shap", baselines=references)
    assert max_relative_error(got.relevance, want) <= TOLERANCE
    assert float(delta.abs().max()) < 1e-10 and float(got.details["summation_gap"].abs().max()) < 1e-10


def _quadrant_mask(channels: bool) -> Tensor:
    """Groups of _CNN's 8x8 input: its 4 quadrants (shared by both channels), or quadrant x channel (8 groups)."""
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    mask[..., :4, 4:], mask[..., 4:, :4], mask[..., 4:, 4:] = 1, 2, 3
    return mask + 4 * torch.arange(2).reshape(1, 2, 1, 1) if channels else mask


@pytest.mark.parametrize("mask", ["none", "quadrants"])
@pytest.mark.parametrize("baseline", [0.0, 0.5])
def test_feature_ablation_matches_captum(mask: str, baseline: float) -> None:
    model, x = _model("cnn-max"), _input("cnn-max")
    target = torch.tensor([0, 1, 2, 1])
    groups = None if mask == "none" else _quadrant_mask(channels=True)
    want = FeatureAblation(model).attribute(x, target=target, baselines=baseline, feature_mask=groups)
    got = relprop.explain(model, x, target, method="feature_ablation", baseline=baseline, feature_mask=groups)
    assert max_relative_error(got.relevance, want) <= TOLERANCE


@pytest.mark.parametrize("mask", ["none", "quadrants"])
@pytest.mark.parametrize("seed", [0, 3])
def test_feature_permutation_matches_captum(mask: str, seed: int) -> None:
    """The same random orders of the batch: relprop's seed, Captum's after ``torch.manual_seed(seed)``."""
    from captum.attr import FeaturePermutation

    model, x = _model("cnn-max"), _input("cnn-max")
    target = torch.tensor([0, 1, 2, 1])
    groups = None if mask == "none" else _quadrant_mask(channels=True)
    torch.manual_seed(seed)
    want = FeaturePermutation(model).attribute(x, target=target, feature_mask=groups)
    got = relprop.explain(model, x, target, method="feature_permutation", feature_mask=groups, seed=seed)
    assert max_relative_error(got.relevance, want) <= TOLERANCE


@pytest.mark.parametrize("baseline", [0.0, 0.5])
def test_exact_shapley_values_match_captum(baseline: float) -> None:
    """Captum's ShapleyValues runs every order of the 4 groups; relprop every coalition (the same values)."""
    model, x = _model("cnn-max"), _input("cnn-max")
    target = torch.tensor([0, 1, 2, 1])
    groups = _quadrant_mask(channels=False)
    want = ShapleyValues(model).attribute(x, target=target, baselines=baseline, feature_mask=groups)
    got = relprop.explain(model, x, target, method="shapley_values", baseline=baseline, feature_mask=groups)
    assert max_relative_error(got.relevance, want) <= TOLERANCE


@pytest.mark.filterwarnings("ignore:You are providing multiple inputs for Lime")  # Captum fits each sample alone
def test_kernel_shap_matches_captums_exact_shapley_values() -> None:
    """Over every coalition relprop's KernelSHAP is the Shapley values (to Captum's float32 accumulation); sampled,
    it and Captum's KernelShap (2000 coalitions each, their own draws) estimate them to a few percent."""
    model, x = _model("cnn-max"), _input("cnn-max")
    target = torch.tensor([0, 1, 2, 1])
    groups = _quadrant_mask(channels=True)  # 8 groups
    exact = ShapleyValues(model).attribute(x, target=target, feature_mask=_quadrant_mask(channels=False))
    every = relprop.explain(model, x, target, method="kernel_shap", feature_mask=_quadrant_mask(channels=False))
    assert max_relative_error(every.relevance, exact) <= TOLERANCE
    exact = relprop.explain(model, x, target, method="shapley_values", feature_mask=groups).relevance
    torch.manual_seed(0)
    theirs = KernelShap(model).attribute(x, target=target, feature_mask=groups, n_samples=2000)
    ours = relprop.explain(model, x, target, method="kernel_shap", feature_mask=groups, samples=2000).relevance
    assert max_relative_error(theirs, exact) < 0.08 and max_relative_error(ours, exact) < 0.08


@pytest.mark.parametrize("ridge", [0.0, 0.5])
def test_lime_matches_captums_lime_given_the_same_coalitions_kernel_and_fit(ridge: float) -> None:
    """Captum's Lime takes its sampler, kernel and linear model as arguments: given relprop's coalitions (drawn as
    relprop draws them, the full coalition first), LIME's cosine kernel and a weighted least-squares fit with an
    intercept (a ridge one with the same penalty), the two agree. (Captum's defaults differ: its own draws, and a
    Lasso.)"""
    sklearn_models = pytest.importorskip("captum._utils.models.linear_model")
    from captum.attr import Lime

    model, x = _model("cnn-max"), _input("cnn-max")
    target = torch.tensor([0, 1, 2, 1])
    groups = _quadrant_mask(channels=True)  # 8 groups
    samples, width = 300, 0.25
    generator = torch.Generator().manual_seed(0)
    coalitions = torch.rand(samples, 8, generator=generator) < 0.5
    coalitions[0] = True
    got = relprop.explain(model, x, target, method="lime", feature_mask=groups, samples=samples, ridge=ridge,
                          kernel_width=width)

    def kernel(original: Tensor, perturbed: Tensor, coalition: Tensor, **kwargs: object) -> float:
        kept = coalition.double().flatten()
        cosine = kept.sum() / (kept.norm() * 8**0.5)
        return float(torch.exp(-((1 - cosine) ** 2) / width**2))

    errors = []
    for i in range(len(x)):
        draws = iter(coalitions.long())
        fit = (sklearn_models.SkLearnLinearRegression() if ridge == 0
               else sklearn_models.SkLearnRidge(alpha=ridge))
        lime = Lime(model, interpretable_model=fit, similarity_func=kernel,
                    perturb_func=lambda original, draws=draws, **kwargs: next(draws).unsqueeze(0))
        want = lime.attribute(x[i:i + 1], target=int(target[i]), feature_mask=groups, n_samples=samples,
                              baselines=0.0)
        errors.append(max_relative_error(got.relevance[i:i + 1], want))
    assert max(errors) < 1e-5


def test_gradient_shap_agrees_with_captum_in_expectation() -> None:
    """Both draw at random (their own generators), so they agree as Monte Carlo estimates of the same expectation:
    with 2000 draws each, to a few percent of the largest attribution (2.6% with these seeds; the gap shrinks as
    1/sqrt)."""
    model, x = _model("cnn-avg"), _input("cnn-avg")
    references = 0.3 * _input("cnn-avg", seed=7)[:3]
    target = torch.tensor([0, 1, 2, 1])
    torch.manual_seed(0)
    np.random.seed(0)  # Captum draws its points on the path from numpy's global generator
    want = GradientShap(model).attribute(x, baselines=references, target=target, n_samples=2000)
    got = relprop.explain(model, x, target, method="gradient_shap", baselines=references, samples=2000)
    assert max_relative_error(got.relevance, want) < 0.05


@pytest.mark.parametrize(("layer", "at_input"), [("conv2", False), ("relu1", False), ("conv2", True)])
def test_gradient_shap_at_a_layer_agrees_with_captums_layer_gradient_shap_in_expectation(layer: str,
                                                                                         at_input: bool) -> None:
    """As GradientSHAP at the input: two Monte Carlo estimates of one expectation (2.2-2.7% apart with 2000 draws
    each and these seeds); the exact check is against a literal twin with the same draws (tests/unit/test_api.py).
    numpy is seeded too: Captum draws its points on the path from numpy's global generator, whose state the tests
    before left to chance (1.2-6.1% apart, and one CI run failed at 6.06%)."""
    from captum.attr import LayerGradientShap

    model, x = _model("cnn-avg"), _input("cnn-avg")
    references = 0.3 * _input("cnn-avg", seed=7)[:3]
    target = torch.tensor([0, 1, 2, 1])
    torch.manual_seed(0)
    np.random.seed(0)
    want = LayerGradientShap(model, getattr(model, layer)).attribute(
        x, baselines=references, target=target, n_samples=2000, attribute_to_layer_input=at_input)
    got = relprop.explain(model, x, target, method="gradient_shap", baselines=references, samples=2000,
                          layers=[layer], layer_at="input" if at_input else "output")
    assert max_relative_error(got.layers[layer], want) < 0.06


@pytest.mark.parametrize(("layer", "at_input"), [("conv2", False), ("relu1", False), ("conv2", True)])
def test_deeplift_at_a_layer_matches_captums_layer_deeplift(layer: str, at_input: bool) -> None:
    model, x = _model("cnn-avg"), _input("cnn-avg")
    reference = 0.3 * _input("cnn", seed=5)
    target = torch.tensor([0, 1, 2, 1])
    want = LayerDeepLift(model, getattr(model, layer)).attribute(x, target=target, baselines=reference,
                                                                  attribute_to_layer_input=at_input)
    got = relprop.explain(model, x, target, method="deeplift", baseline=reference, layers=[layer],
                          layer_at="input" if at_input else "output")
    assert max_relative_error(got.layers[layer], want) <= TOLERANCE
    assert float(got.details["summation_by_layer"].abs().max()) < 1e-12  # each layer sums to f(x) - f(x')


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_x_input_at_a_layer_matches_captums_layer_gradient_x_activation(kind: str) -> None:
    model, x = _model(kind), _input(kind)
    target = torch.tensor([0, 1, 2, 1])
    names = ["2", "3"] if kind == "mlp" else ["conv2", "relu1"]
    got = relprop.explain(model, x, target, method="gradient_x_input", layers=names)
    for name in names:
        want = LayerGradientXActivation(model, model.get_submodule(name)).attribute(x, target=target)
        assert max_relative_error(got.layers[name], want) <= TOLERANCE


def test_integrated_gradients_at_a_layer_is_captums_layer_conductance_in_the_limit() -> None:
    """Conductance at a ReLU with a tanh after it. Both sum ``df/da (a(x_k) - a(x_{k-1}))`` along the path, relprop
    with the gradient at each step's end and Captum at its start, so they differ at first order in 1 / steps:
    relprop's moves by 2e-4 from 4000 to 16000 steps, and Captum's Riemann sum converges to it (its error shrinks
    6-fold from 600 to 4800 steps). (Captum's Gauss-Legendre rule converges slowly here: the ReLU's kinks along
    the path are not smooth.)"""
    model, x = _model("mlp"), _input("mlp")
    model[3] = nn.Tanh().eval()
    target = torch.tensor([0, 1, 2, 1])
    got = relprop.explain(model, x, target, method="integrated_gradients", layers=["1"], steps=16000, baseline=0.0)
    errors = [max_relative_error(got.layers["1"], LayerConductance(model, model[1]).attribute(
        x, target=target, n_steps=steps, method="riemann_right")) for steps in (600, 4800)]
    assert errors[1] < 5e-4 and errors[0] / errors[1] > 5
    coarse = relprop.explain(model, x, target, method="integrated_gradients", layers=["1"], steps=4000, baseline=0.0)
    assert max_relative_error(coarse.layers["1"], got.layers["1"]) < 5e-4


@pytest.mark.parametrize(("quadrature", "captum_method"), [("right", "riemann_right"), ("left", "riemann_left"),
                                                         ("midpoint", "riemann_middle")])
@pytest.mark.parametrize(("layer", "at_input"), [("conv2", False), ("relu1", False), ("conv2", True)])
def test_internal_influence_matches_captums(layer: str, at_input: bool, quadrature: str, captum_method: str) -> None:
    """Captum's riemann_trapezoid is left out: its weights are 1 / n with halved ends, summing to (n - 1) / n."""
    from captum.attr import InternalInfluence

    model, x = _model("cnn-avg"), _input("cnn-avg")
    reference = 0.3 * _input("cnn", seed=5)
    target = torch.tensor([0, 1, 2, 1])
    want = InternalInfluence(model, getattr(model, layer)).attribute(
        x, baselines=reference, target=target, n_steps=20, method=captum_method, attribute_to_layer_input=at_input)
    got = relprop.explain(model, x, target, method="integrated_gradients", baseline=reference, steps=20,
                          quadrature=quadrature, layers=[layer], layer_at="input" if at_input else "output",
                          layer_quantity="internal_influence")
    assert max_relative_error(got.layers[layer], want) <= TOLERANCE


@pytest.mark.parametrize(("layer", "at_input"), [("conv2", False), ("relu1", False), ("conv2", True)])
def test_deeplift_shap_at_a_layer_matches_captums_layer_deeplift_shap(layer: str, at_input: bool) -> None:
    from captum.attr import LayerDeepLiftShap

    model, x = _model("cnn-avg"), _input("cnn-avg")
    references = 0.3 * torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 1])
    want = LayerDeepLiftShap(model, getattr(model, layer)).attribute(x, baselines=references, target=target,
                                                                      attribute_to_layer_input=at_input)
    got = relprop.explain(model, x, target, method="deeplift_shap", baselines=references, layers=[layer],
                          layer_at="input" if at_input else "output", batch_size=8)  # two chunks of references
    assert max_relative_error(got.layers[layer], want) <= TOLERANCE


def test_deeplift_on_a_stock_lstm_sums_to_delta_where_captum_does_not() -> None:
    """Captum's DeepLift sees no gate inside nn.LSTM's fused kernel and passes its gradient: 27% of f(x) - f(x')
    missing here, without a warning. relprop runs the module as explicit cells, whose products split exactly."""

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.out = nn.LSTM(16, 32, batch_first=True), nn.Linear(32, 10)

        def forward(self, x: Tensor) -> Tensor:
            return self.out(self.lstm(x)[0][:, -1])

    torch.manual_seed(0)
    model = Classifier().double().eval()
    x, target = torch.randn(4, 12, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    _, delta = DeepLift(model).attribute(x, target=target, return_convergence_delta=True)
    with torch.no_grad():
        difference = (model(x) - model(torch.zeros_like(x))).gather(1, target.reshape(-1, 1))[:, 0]
    got = relprop.explain(model, x, target, method="deeplift")
    assert float((delta.abs() / difference.abs()).max()) > 0.1
    assert float(got.details["summation_gap"].abs().max()) < 1e-12


class _FunctionalReLU(nn.Module):
    """_CNN with its first ReLU functional (torch.relu in the forward)."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.conv1, self.pool = nn.Conv2d(2, 4, 3, padding=1), pool
        self.conv2, self.relu2 = nn.Conv2d(4, 5, 3), nn.ReLU()
        self.fc = nn.Linear(5 * 2 * 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.relu2(self.conv2(self.pool(torch.relu(self.conv1(x))))).flatten(1))


@pytest.mark.parametrize("kind", ["cnn-max", "functional-relu"])
def test_deeplift_sums_to_delta_where_captum_does_not(kind: str) -> None:
    """Captum's DeepLift rescales activation modules only, so a functional ReLU passes its plain gradient; and on
    _CNN's max pooling its result does not sum to f(x) - f(x') either. relprop's gap is rounding."""
    model = _model("cnn-max") if kind == "cnn-max" else _seeded(_FunctionalReLU(nn.AvgPool2d(2)), 0)
    x, reference = _input("cnn-max"), 0.3 * _input("cnn-max", seed=5)
    target = torch.tensor([0, 1, 2, 1])
    _, delta = DeepLift(model).attribute(x, target=target, baselines=reference, return_convergence_delta=True)
    got = relprop.explain(model, x, target, method="deeplift", baseline=reference)
    assert float(delta.abs().max()) > 1e-2
    assert float(got.details["summation_gap"].abs().max()) < 1e-12


@pytest.mark.parametrize("kind", ["mlp", "cnn-avg"])
@pytest.mark.parametrize(("quadrature", "captum_method"), [("right", "riemann_right"), ("left", "riemann_left"),
                                                         ("midpoint", "riemann_middle")])
def test_integrated_gradients_matches_captum(quadrature: str, captum_method: str, kind: str) -> None:
    """Captum builds its alphas with float32 ``torch.linspace``; with 12 steps (k/12 is not a float32) that rounding
    (~1e-8) shows and stays within the tolerance."""
    model, x = _model(kind, seed=3), _input(kind)
    baseline = torch.full_like(x, 0.25)
    target = torch.tensor([2, 0, 1, 1])
    want = IntegratedGradients(model).attribute(x, baselines=baseline, target=target, n_steps=12, method=captum_method)
    got = relprop.explain(model, x, target, method="integrated_gradients", baseline=baseline, steps=12,
                          quadrature=quadrature).relevance
    assert max_relative_error(got, want) <= TOLERANCE


def test_trapezoid_differs_from_captum() -> None:
    """Captum's ``riemann_trapezoid`` places n points 1/(n-1) apart but weighs them with step 1/n (its weights sum
    to (n-1)/n); relprop uses the textbook trapezoid rule (step 1/(n-1)). So Captum's result is relprop's times
    (n-1)/n, and relprop's is the one that converges to the integral."""
    model, x = _model("mlp", seed=3), _input("mlp")
    target = torch.tensor([2, 0, 1, 1])
    steps = 8
    want = IntegratedGradients(model).attribute(x, target=target, n_steps=steps, method="riemann_trapezoid")
    got = relprop.explain(model, x, target, method="integrated_gradients", steps=steps,
                          quadrature="trapezoid").relevance
    assert max_relative_error(got * (steps - 1) / steps, want) <= TOLERANCE
    assert max_relative_error(got, want) > 0.05


@pytest.mark.parametrize("kind", ["mlp", "cnn-max"])
def test_smoothgrad_without_noise_matches_captum(kind: str) -> None:
    model, x = _model(kind, seed=4), _input(kind)
    target = torch.tensor([1, 1, 0, 2])
    want = NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=4, stdevs=0.0,
                                                  target=target, abs=False)
    got = relprop.explain(model, x, target, method="smoothgrad", noise=0.0, samples=4).relevance
    assert max_relative_error(got, want) <= TOLERANCE


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_around_integrated_gradients_without_noise_matches_captum(nt_type: str) -> None:
    model, x = _model("cnn-max", seed=4), _input("cnn-max")
    target = torch.tensor([1, 1, 0, 2])
    reference = 0.2 * _input("cnn-max", seed=6)  # one per sample: repeated for the copies, as Captum does
    want = NoiseTunnel(IntegratedGradients(model)).attribute(
        x, nt_type=nt_type, nt_samples=3, stdevs=0.0, target=target, baselines=reference, n_steps=12,
        method="riemann_right")
    got = relprop.explain(model, x, target, method="smoothgrad", noise=0.0, samples=3, of="integrated_gradients",
                          of_options={"steps": 12, "baseline": reference}, squared=nt_type == "smoothgrad_sq",
                          vargrad=nt_type == "vargrad").relevance
    if nt_type == "vargrad":  # the same copies: no variance on either side
        assert float(got.abs().max()) == 0 and float(want.abs().max()) < 1e-12
    else:
        assert max_relative_error(got, want) <= TOLERANCE


@pytest.mark.parametrize(("kind", "window", "stride"), [
    ("mlp", (2,), (2,)), ("mlp", (3,), (1,)), ("mlp", (4,), (3,)), ("cnn-avg", (1, 3, 3), (1, 1, 1)),
    ("cnn-max", (2, 4, 4), (2, 2, 2)), ("cnn-avg", (1, 3, 3), (1, 2, 2)),
])
def test_occlusion_matches_captum(kind: str, window: tuple[int, ...], stride: tuple[int, ...]) -> None:
    """Sliding windows, including shapes where (d - w) is not divisible by the stride (the last window is clipped).

    Captum divides its sums after a ``.float()`` cast, so its result is float32 (error ~1e-7).
    """
    model, x = _model(kind, seed=5), _input(kind)
    target = torch.tensor([0, 2, 1, 0])
    want = Occlusion(model).attribute(x, sliding_window_shapes=window, strides=stride, baselines=0.5,
                                      target=target)
    got = relprop.explain(model, x, target, method="occlusion", window=window, stride=stride, fill=0.5).relevance
    assert max_relative_error(got, want) <= TOLERANCE


# ---------------------------------------------------------------- LRP


def captum_lrp(model: nn.Module, x: Tensor, target: Tensor, make_rule: object) -> Tensor:
    """Captum's LRP with one fresh rule instance per linear layer (Captum keeps per-layer state in rules)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.rule = make_rule()  # type: ignore[operator]
    try:
        return LRP(model).attribute(x, target=target).detach()
    finally:
        for module in model.modules():
            if hasattr(module, "rule"):
                del module.rule


def _positive_target(model: nn.Module, x: Tensor) -> Tensor:
    """Argmax targets; the samples are chosen so that the target logit is positive."""
    logits = model(x)
    assert bool((logits.max(1).values > 0).all()), "pick another seed: a sample has no positive logit"
    return logits.argmax(1)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", KINDS)
def test_lrp_epsilon_matches_captum(kind: str, bias: bool) -> None:
    """Captum's default EpsilonRule (eps 1e-9, also on pooling layers) = relprop Epsilon(1e-9).

    On average pooling Captum's epsilon rule is relprop's Proportional(1e-9). On max pooling it sends
    ``R x_max / (x_max + 1e-9)`` to the winner, relprop's WinnerTakeAll sends ``R``: equal up to ~1e-9 / x_max.
    """
    model, x = _model(kind, bias, seed=6), _input(kind)
    target = torch.tensor([0, 1, 2, 1])
    want = captum_lrp(model, x, target, lambda: EpsilonRule(epsilon=1e-9))
    rule_map = RuleMap([(LINEAR_TYPES, rules.Epsilon(epsilon=1e-9)), (nn.AvgPool2d, rules.Proportional(1e-9))])
    got = lrp(model, x, target, rule_map=rule_map)
    assert max_relative_error(got, want) <= TOLERANCE


@pytest.mark.parametrize("at_input", [False, True], ids=["output", "input"])
@pytest.mark.parametrize("kind", KINDS)
def test_lrp_at_layers_matches_captums_layer_lrp(kind: str, at_input: bool) -> None:
    """``layers=`` with a rule map of one's own (epsilon 1e-9, as Captum's default rule) against ``LayerLRP``, at
    each linear layer's output or input (Captum's LayerLRP needs a layer with a rule)."""
    from captum.attr import LayerLRP

    model, x = _model(kind, True, seed=6), _input(kind)
    target = torch.tensor([0, 1, 2, 1])
    names = ["0", "2"] if kind == "mlp" else ["conv1", "conv2"]
    rule_map = RuleMap([(LINEAR_TYPES, rules.Epsilon(epsilon=1e-9)), (nn.AvgPool2d, rules.Proportional(1e-9))])
    got = relprop.explain(model, x, target, method="lrp", rule_map=rule_map, layers=names,
                          layer_at="input" if at_input else "output")
    for name in names:
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.rule = EpsilonRule(epsilon=1e-9)  # type: ignore[assignment]
        want = LayerLRP(model, model.get_submodule(name)).attribute(x, target=target,
                                                                    attribute_to_layer_input=at_input)
        assert max_relative_error(got.layers[name], want) <= TOLERANCE


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rule_id", ["gamma", "alpha1beta0"])
def test_lrp_positive_rules_match_captum_without_bias(rule_id: str, kind: str, bias: bool) -> None:
    """Non-negative inputs, bias left out (``set_bias_to_zero=True``): Captum's GammaRule = relprop Gamma(bias=False),
    Alpha1_Beta0_Rule = ZPlus(bias=False). relprop's Gamma mirrors its weights for outputs with z < 0; those get no
    relevance in a ReLU net (their ReLU output is 0), and targets are chosen with positive logits."""
    model, x = _model(kind, bias, seed=7), _input(kind, nonnegative=True)
    target = _positive_target(model, x)
    if rule_id == "gamma":
        want = captum_lrp(model, x, target, lambda: GammaRule(gamma=0.25, set_bias_to_zero=True))
        ours: object = rules.Gamma(1e-9, gamma=0.25, bias=False)
    else:
        want = captum_lrp(model, x, target, lambda: Alpha1_Beta0_Rule(set_bias_to_zero=True))
        ours = rules.ZPlus(1e-9, bias=False)
    rule_map = RuleMap([(LINEAR_TYPES, ours), (nn.AvgPool2d, rules.Proportional(1e-9))])
    got = lrp(model, x, target, rule_map=rule_map)
    assert max_relative_error(got, want) <= TOLERANCE


@dataclass(frozen=True)
class _RawBias(rules.ZRule):
    """Captum's convention: the weight modifier leaves the bias alone (``gamma=0`` with ``positive`` gives w+)."""

    gamma: float = 0.25
    positive_only: bool = False

    def weights(self, name: str, param: Tensor) -> Tensor:
        if name == "bias":
            return param
        return param.clamp(min=0) if self.positive_only else param + self.gamma * param.clamp(min=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rule_id", ["gamma", "alpha1beta0"])
def test_lrp_positive_rules_with_bias_differ_by_design(rule_id: str, kind: str) -> None:
    """With biases Captum keeps the raw bias in the denominator; relprop (like zennit) modifies it (b + gamma b+,
    b+). A ZRule whose ``weights()`` leaves the bias alone reproduces Captum; the built-in rule differs."""
    model, x = _model(kind, True, seed=8), _input(kind, nonnegative=True)
    target = _positive_target(model, x)
    if rule_id == "gamma":
        want = captum_lrp(model, x, target, lambda: GammaRule(gamma=0.25))
        variant, builtin = _RawBias(1e-9, gamma=0.25), rules.Gamma(1e-9, gamma=0.25)
    else:
        want = captum_lrp(model, x, target, Alpha1_Beta0_Rule)
        variant, builtin = _RawBias(1e-9, positive_only=True), rules.ZPlus(1e-9)
    pools = (nn.AvgPool2d, rules.Proportional(1e-9))
    got = lrp(model, x, target, rule_map=RuleMap([(LINEAR_TYPES, variant), pools]))
    assert max_relative_error(got, want) <= TOLERANCE
    different = lrp(model, x, target, rule_map=RuleMap([(LINEAR_TYPES, builtin), pools]))
    assert max_relative_error(different, want) > 1e-4


# ---------------------------------------------------------------- the functional-residual defect


class _Residual(nn.Module):
    """A functional residual written with ``+``, which module hooks cannot see; ``Sum()`` makes it a module.

    ``projection``: ``y = S x + relu(W2 relu(W1 x))`` (a ResNet-style projection shortcut).
    ``identity``: ``y = a + relu(W2 a)`` with ``a = relu(W1 x)``. Both end in ``W3 y``; no biases.
    """

    def __init__(self, kind: str, add: nn.Module | None = None) -> None:
        super().__init__()
        self.kind, self.add = kind, add
        self.lin1, self.relu1 = nn.Linear(6, 8, bias=False), nn.ReLU()
        self.lin2, self.relu2 = nn.Linear(8, 8, bias=False), nn.ReLU()
        self.lin3 = nn.Linear(8, 3, bias=False)
        if kind == "projection":
            self.skip = nn.Linear(6, 8, bias=False)

    def parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.kind == "projection":
            return self.skip(x), self.relu2(self.lin2(self.relu1(self.lin1(x))))
        a = self.relu1(self.lin1(x))
        return a, self.relu2(self.lin2(a))

    def forward(self, x: Tensor) -> Tensor:
        skip, branch = self.parts(x)
        return self.lin3(skip + branch if self.add is None else self.add(skip, branch))


@pytest.mark.parametrize("kind", ["projection", "identity"])
def test_functional_residual_breaks_captum_and_relprop_conserves(kind: str) -> None:
    """Captum's LRP back-propagates through the functional ``+`` as a plain gradient, so the relevance R_y of the
    sum goes in full down both paths. With a projection shortcut the input relevance then sums to exactly
    2 f(x) (bias-free, eps -> 0). With an identity shortcut the copy on the identity path is further multiplied
    by the activation ``a`` at Captum's input hook of ``lin2``: the sum is ``f(x) + sum_j a_j R_y,j``, with
    ``R_y = y * W3[target]``. relprop gives the functional ``+`` its proportional rule: it conserves, and equals
    the model with the sum written as a ``Sum`` module to the last digit."""
    model = _seeded(_Residual(kind), seed=9)
    x = _input("mlp", seed=10)
    logits = model(x)
    target = logits.argmax(1)
    score = logits.gather(1, target[:, None]).squeeze(1).detach()
    captum_total = captum_lrp(model, x, target, lambda: EpsilonRule(epsilon=1e-12)).sum(1)
    if kind == "projection":
        expected = 2 * score
    else:
        skip, branch = model.parts(x)
        expected = score + (skip * (skip + branch) * model.lin3.weight[target]).sum(1).detach()
    assert torch.allclose(captum_total, expected, rtol=1e-6, atol=0), (captum_total / score)
    assert not torch.allclose(captum_total, score, rtol=0.05, atol=0)

    functional = relprop.explain(model, x, target, method="lrp", preset="epsilon", epsilon=1e-12, stabilizer=1e-12)
    assert torch.allclose(functional.relevance.sum(1), score, rtol=1e-8, atol=0)

    fixed = _Residual(kind, add=Sum())
    fixed.load_state_dict(model.state_dict())
    fixed = fixed.double().eval()
    explanation = relprop.explain(fixed, x, target, method="lrp", preset="epsilon", epsilon=1e-12, stabilizer=1e-12)
    assert torch.allclose(explanation.relevance.sum(1), score, rtol=1e-8, atol=0)
    assert torch.equal(functional.relevance, explanation.relevance)


# ---------------------------------------------------------------- neurons


def _active_unit(model: nn.Module, x: Tensor, layer: str) -> tuple[int, ...]:
    """A unit of ``layer``'s output that is positive for the most samples (a ReLU unit silent on all of them would
    compare zeros)."""
    seen: list[Tensor] = []
    handle = getattr(model, layer).register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    active = (seen[0] > 0).sum(0)
    return tuple(int(i) for i in (active == active.max()).nonzero()[0])


@pytest.mark.parametrize("layer", ["conv2", "relu2", "relu1"])
@pytest.mark.parametrize("name", ["gradient", "integrated_gradients", "guided_backprop", "deconvnet", "deeplift",
                                  "deeplift_shap", "feature_ablation"])
def test_neuron_methods_match_captums(name: str, layer: str) -> None:
    """``explain(..., output=layer, target=unit)`` is Captum's ``Neuron*(model, layer).attribute(x, unit)``."""
    from captum.attr import (
        NeuronDeconvolution,
        NeuronDeepLift,
        NeuronDeepLiftShap,
        NeuronFeatureAblation,
        NeuronGradient,
        NeuronGuidedBackprop,
        NeuronIntegratedGradients,
    )

    model, x = _model("cnn-avg"), _input("cnn-avg")
    unit = _active_unit(model, x, layer)
    module = getattr(model, layer)
    reference = 0.3 * _input("cnn", seed=5)
    if name == "gradient":
        want = NeuronGradient(model, module).attribute(x, unit)
        got = relprop.explain(model, x, unit, method="gradient", output=layer)
    elif name == "integrated_gradients":
        want = NeuronIntegratedGradients(model, module).attribute(x, unit, baselines=reference, n_steps=16,
                                                                  method="riemann_right")
        got = relprop.explain(model, x, unit, method="integrated_gradients", output=layer, baseline=reference,
                              steps=16)
    elif name == "guided_backprop":
        want = NeuronGuidedBackprop(model, module).attribute(x, unit)
        got = relprop.explain(model, x, unit, method="guided_backprop", output=layer)
    elif name == "deconvnet":
        want = NeuronDeconvolution(model, module).attribute(x, unit)
        got = relprop.explain(model, x, unit, method="deconvnet", output=layer)
    elif name == "deeplift":
        want = NeuronDeepLift(model, module).attribute(x, unit, baselines=reference)
        got = relprop.explain(model, x, unit, method="deeplift", output=layer, baseline=reference)
    elif name == "deeplift_shap":
        want = NeuronDeepLiftShap(model, module).attribute(x, unit, baselines=reference[:3])
        got = relprop.explain(model, x, unit, method="deeplift_shap", output=layer, baselines=reference[:3])
    else:
        groups = _quadrant_mask(channels=True)
        want = NeuronFeatureAblation(model, module).attribute(x, unit, baselines=0.5, feature_mask=groups)
        got = relprop.explain(model, x, unit, method="feature_ablation", output=layer, baseline=0.5,
                              feature_mask=groups)
    assert max_relative_error(got.relevance, want) <= TOLERANCE


@pytest.mark.parametrize("layer", ["conv2", "relu2"])
def test_gradient_shap_of_a_unit_agrees_with_captums_neuron_gradient_shap_in_expectation(layer: str) -> None:
    """As GradientSHAP of a class: two Monte Carlo estimates of one expectation, 2000 draws each (1.0% and 1.8% apart;
    numpy seeded, as Captum draws its path points from numpy's global generator)."""
    from captum.attr import NeuronGradientShap

    model, x = _model("cnn-avg"), _input("cnn-avg")
    unit = _active_unit(model, x, layer)
    references = 0.3 * _input("cnn-avg", seed=7)[:3]
    torch.manual_seed(0)
    np.random.seed(0)
    want = NeuronGradientShap(model, getattr(model, layer)).attribute(x, unit, baselines=references,
                                                                      n_samples=2000)
    got = relprop.explain(model, x, unit, method="gradient_shap", output=layer, baselines=references, samples=2000)
    assert max_relative_error(got.relevance, want) < 0.05


@pytest.mark.parametrize("layer", ["conv2", "pool", "relu2"])
def test_integrated_gradients_through_a_unit_is_captums_neuron_conductance(layer: str) -> None:
    """``condition={layer: one-hot mask}`` lets the gradient through that unit only: integrated gradients then is
    Captum's ``NeuronConductance`` (the unit's share of each input's attribution to the target)."""
    from captum.attr import NeuronConductance

    model, x = _model("cnn-avg"), _input("cnn-avg")
    unit = _active_unit(model, x, layer)
    mask = torch.zeros_like(_layer_output(model, x, layer)[0])
    mask[unit] = 1
    reference = 0.3 * _input("cnn", seed=5)
    target = torch.tensor([0, 1, 2, 1])
    want = NeuronConductance(model, getattr(model, layer)).attribute(
        x, neuron_selector=unit, target=target, baselines=reference, n_steps=16, method="riemann_right")
    got = relprop.explain(model, x, target, method="integrated_gradients", baseline=reference, steps=16,
                          condition={layer: mask})
    assert max_relative_error(got.relevance, want) <= TOLERANCE


def test_a_neuron_selector_with_slices_matches_captums() -> None:
    """Captum sums the units a selector with slices picks; so does relprop."""
    from captum.attr import NeuronGradient, NeuronIntegratedGradients

    model, x = _model("cnn-avg"), _input("cnn-avg")
    unit = (slice(1, 4), 0, slice(None))
    want = NeuronGradient(model, model.conv2).attribute(x, unit)
    got = relprop.explain(model, x, unit, method="gradient", output="conv2")
    assert max_relative_error(got.relevance, want) <= TOLERANCE
    want = NeuronIntegratedGradients(model, model.conv2).attribute(x, unit, n_steps=16, method="riemann_right")
    got = relprop.explain(model, x, unit, method="integrated_gradients", output="conv2", steps=16)
    assert max_relative_error(got.relevance, want) <= TOLERANCE


# ---------------------------------------------------------------- from a layer


def _layer_output(model: nn.Module, x: Tensor, layer: str) -> Tensor:
    seen: list[Tensor] = []
    handle = getattr(model, layer).register_forward_hook(lambda module, args, out: seen.append(out.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("layer", ["conv1", "pool", "relu2"])
@pytest.mark.parametrize("name", ["integrated_gradients", "feature_ablation", "feature_permutation"])
def test_methods_from_a_layer_match_captums_layer_methods(name: str, layer: str) -> None:
    """``explain(..., from_layer=layer)`` is Captum's ``LayerIntegratedGradients``, ``LayerFeatureAblation`` and
    ``LayerFeaturePermutation``; Captum's LayerIntegratedGradients takes its baseline in the input space and runs it
    to the layer, relprop takes the layer's value there."""
    from captum.attr import LayerFeatureAblation, LayerFeaturePermutation, LayerIntegratedGradients

    model, x = _model("cnn-avg"), _input("cnn-avg")
    target = torch.tensor([0, 1, 2, 1])
    module = getattr(model, layer)
    if name == "integrated_gradients":
        reference = 0.3 * _input("cnn", seed=5)
        want = LayerIntegratedGradients(model, module).attribute(x, baselines=reference, target=target, n_steps=16,
                                                                 method="riemann_right")
        got = relprop.explain(model, x, target, method=name, from_layer=layer, steps=16,
                              baseline=_layer_output(model, reference, layer))
    elif name == "feature_ablation":
        want = LayerFeatureAblation(model, module).attribute(x, target=target, layer_baselines=0.25)
        got = relprop.explain(model, x, target, method=name, from_layer=layer, baseline=0.25)
    else:  # Captum's LayerFeaturePermutation takes the target out twice: given a function of one score per sample
        torch.manual_seed(3)
        want = LayerFeaturePermutation(lambda inputs: model(inputs)[torch.arange(len(inputs)), target],
                                       module).attribute(x)
        got = relprop.explain(model, x, target, method=name, from_layer=layer, seed=3)
    assert max_relative_error(got.relevance, want) <= TOLERANCE


# ---------------------------------------------------------------- metrics


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_matches_captums_with_the_same_perturbations(normalize: bool) -> None:
    """Captum's ``infidelity`` repeats each sample ``n_perturb_samples`` times in a row; fed relprop's draws in
    that order through ``perturb_func`` (x - I, as relprop perturbs), it gives relprop's values."""
    from captum.metrics import infidelity

    from relprop.metrics import Infidelity

    model, x = _model("cnn-avg"), _input("cnn-avg")
    target = torch.tensor([0, 1, 2, 1])
    metric = Infidelity(scale=0.1, samples=5, seed=2, normalize=normalize)
    attributions = relprop.explain(model, x, target, method="integrated_gradients", steps=8).relevance
    draws = torch.stack(metric.perturbations(x.shape), 1).reshape(-1, *x.shape[1:])  # sample-major, as Captum

    def perturb(inputs: Tensor) -> tuple[Tensor, Tensor]:
        return draws, inputs - draws

    want = infidelity(model, perturb, x, attributions, target=target, n_perturb_samples=5, normalize=normalize)
    got = metric(model, x, target, lambda m, inputs, t: attributions)
    assert max_relative_error(got, want) <= TOLERANCE


def test_relevance_summary_matches_captums_class_summarizer() -> None:
    """explain_dataset(..., summarize=True) keeps Captum's ClassSummarizer(CommonStats()) statistics, overall and
    per class. (Captum is given the labels as ints: tensor labels key its classes by object, one class per sample.)"""
    from captum.attr import ClassSummarizer, CommonStats

    model, x = _model("cnn-avg"), _input("cnn-avg", seed=3)
    batches = [torch.cat([x, _input("cnn-avg", seed=seed)]) for seed in (4, 5, 6)]
    result = relprop.explain_dataset(model, batches, method="integrated_gradients", steps=8, summarize=True,
                                     progress=False)
    captum = ClassSummarizer(CommonStats())
    for batch in batches:
        explanation = relprop.explain(model, batch, method="integrated_gradients", steps=8)
        captum.update(explanation.relevance, explanation.target.tolist())
    assert result.summary is not None
    names = {"mean": "mean", "sample_variance": "sample_variance", "sample_std": "sample_std_dev",
             "minimum": "min", "maximum": "max"}
    (overall,) = captum.summary
    assert set(result.summary.by_class) == set(captum.class_summaries) and len(captum.class_summaries) > 1
    for ours, theirs in names.items():
        assert max_relative_error(getattr(result.summary.overall, ours), overall[theirs]) <= TOLERANCE
        for label, stats in result.summary.by_class.items():
            (want,) = captum.class_summaries[label]
            assert max_relative_error(getattr(stats, ours), want[theirs]) <= TOLERANCE, (label, ours)


# ---------------------------------------------------------------- concepts


def test_layer_activations_are_captums_layer_activation() -> None:
    from captum.attr import LayerActivation

    from relprop import concepts

    model, x = _model("cnn-max"), _input("cnn-max")
    for layer in ("conv1", "pool", "relu2"):
        want = LayerActivation(model, getattr(model, layer)).attribute(x)
        assert torch.equal(concepts.layer_activations(model, layer, x, flatten=False), want)
        assert torch.equal(concepts.layer_activations(model, layer, x), want.flatten(1))


def test_tcav_scores_match_captums_tcav_with_the_same_cav(tmp_path) -> None:
    """Captum's TCAV trains its own classifier; given relprop's CAV (a classifier that returns it), its sign count
    and magnitude are relprop's (Captum scores in float32)."""
    from captum.concept import TCAV, Concept
    from captum.concept._utils.classifier import Classifier
    from torch.utils.data import DataLoader

    from relprop import concepts

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    striped = torch.randn(60, 6, dtype=torch.float64) + torch.tensor([2.0, 0, 0, 0, 0, -1], dtype=torch.float64)
    random = torch.randn(60, 6, dtype=torch.float64)
    x = torch.randn(20, 6, dtype=torch.float64)
    cav = concepts.learn_cav(model, "1", striped, random)
    got = concepts.tcav(model, x, 2, cav)

    class Given(Classifier):  # the concept (id 0) along the CAV, the random set (id 1) against it
        def __init__(self) -> None:
            pass

        def train_and_eval(self, dataloader: object, **kwargs: object) -> dict[str, Tensor]:
            return {"accs": torch.tensor(cav.accuracy)}

        def weights(self) -> Tensor:
            return torch.stack([cav.vector, -cav.vector]).float()

        def classes(self) -> list[int]:
            return [0, 1]

    tcav = TCAV(model, layers=["1"], classifier=Given(), save_path=str(tmp_path))
    sets = [[Concept(0, "striped", DataLoader(striped, batch_size=20)), Concept(1, "random", DataLoader(random))]]
    want = tcav.interpret(x, experimental_sets=sets, target=2)["0-1"]["1"]
    assert round(float(want["sign_count"][0]) * len(x)) == round(float(got.sign_count) * len(x))  # the same count
    torch.testing.assert_close(want["magnitude"][0].double(), got.magnitude, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- token ids


def _bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, num_labels=3)
    return transformers.BertForSequenceClassification(config).double().eval()


@pytest.mark.parametrize("reference", ["ids", "vectors"])
def test_integrated_gradients_on_token_ids_is_captums_layer_integrated_gradients(reference: str) -> None:
    """IG on token ids runs in the word-embedding space, as Captum's LayerIntegratedGradients at the word
    embedding; the reference tokens ([MASK]-like id 7 at every position) go in as ids or as their vectors."""
    from captum.attr import LayerIntegratedGradients

    model = _bert()
    ids = torch.randint(1, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    reference_ids = torch.full_like(ids, 7)
    words = model.bert.embeddings.word_embeddings
    baseline = reference_ids if reference == "ids" else words(reference_ids).detach()
    got = relprop.explain(model, ids, 1, method="integrated_gradients", steps=32, baseline=baseline,
                          model_kwargs={"attention_mask": mask})
    want = LayerIntegratedGradients(lambda i: model(i, attention_mask=mask).logits, words).attribute(
        ids, baselines=reference_ids, target=1, n_steps=32, method="riemann_right")
    assert max_relative_error(got.details["embedding_relevance"], want) <= TOLERANCE
    torch.testing.assert_close(got.relevance, want.sum(-1), rtol=1e-9, atol=1e-12)


def test_token_id_references_of_integrated_gradients_and_gradient_shap_are_their_embeddings() -> None:
    model = _bert()
    ids = torch.randint(1, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    words = model.bert.embeddings.word_embeddings
    kwargs = {"model_kwargs": {"attention_mask": torch.ones_like(ids)}}
    references = torch.randint(1, 50, (3, 9), generator=torch.Generator().manual_seed(4))
    for method, name, value in [("integrated_gradients", "baseline", references[:1]),
                                ("gradient_shap", "baselines", references)]:
        extra = {"samples": 4, "seed": 0} if method == "gradient_shap" else {}
        by_ids = relprop.explain(model, ids, 1, method=method, **{name: value}, **extra, **kwargs)
        by_vectors = relprop.explain(model, ids, 1, method=method, **{name: words(value).detach()}, **extra,
                                     **kwargs)
        torch.testing.assert_close(by_ids.relevance, by_vectors.relevance, rtol=0, atol=0)
    with pytest.raises(relprop.ConfigError, match="outside the embedding's vocabulary"):
        relprop.explain(model, ids, 1, method="integrated_gradients", baseline=torch.full_like(ids, 50), **kwargs)
    with pytest.raises(relprop.ConfigError, match="do not broadcast"):
        relprop.explain(model, ids, 1, method="integrated_gradients", baseline=ids[:, :4], **kwargs)
    with pytest.raises(relprop.ConfigError, match=r"reference sequences shaped \(n, 9\)"):
        relprop.explain(model, ids, 1, method="gradient_shap", baselines=references[:, :4], **kwargs)
