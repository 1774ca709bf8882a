"""DeepLIFT-Rescale: against a literal twin written from its formula, for summation to delta on models whose ops are
functional, and its refusals. (Against Captum's DeepLift: tests/reference/test_against_captum.py.)"""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relprop
from relprop import ExplanationError
from relprop.errors import ConfigError


def _randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _literal(layers: list[nn.Linear], activations: list[str], x: Tensor, ref: Tensor, target: int) -> Tensor:
    """DeepLIFT-Rescale on an MLP written out: each activation's multiplier is its secant (g(z) - g(z')) / (z - z'),
    and the input's multipliers are the chain of W^T and those secants from the target's output down."""
    functions = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
    a, a_ref, secants = x, ref, []
    for layer, name in zip(layers[:-1], activations):
        z, z_ref = layer(a), layer(a_ref)
        g = functions[name]
        secants.append((g(z) - g(z_ref)) / (z - z_ref))
        a, a_ref = g(z), g(z_ref)
    multiplier = layers[-1].weight[target].expand(len(x), -1)
    for layer, secant in zip(reversed(layers[:-1]), reversed(secants)):
        multiplier = (multiplier * secant) @ layer.weight
    return (x - ref) * multiplier


@pytest.mark.parametrize("baseline", ["zero", "random"])
def test_deeplift_is_the_formula_on_an_mlp(baseline: str) -> None:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 9), nn.Linear(9, 7), nn.Linear(7, 5), nn.Linear(5, 3)]
    activations = ["relu", "tanh", "sigmoid"]
    model = nn.Sequential(layers[0], nn.ReLU(), layers[1], nn.Tanh(), layers[2], nn.Sigmoid(), layers[3])
    model = model.double().eval()
    x = _randn(4, 6)
    ref = torch.zeros_like(x) if baseline == "zero" else 0.5 * _randn(4, 6, seed=1)
    with torch.no_grad():
        want = _literal(list(model[::2]), activations, x, ref, target=2)
    explanation = relprop.explain(model, x, 2, method="deeplift", baseline=ref)
    torch.testing.assert_close(explanation.relevance, want, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        delta = model(x)[:, 2] - model(ref)[:, 2]
    torch.testing.assert_close(explanation.relevance.sum(1), delta, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(explanation.details["summation_gap"], torch.zeros(4, dtype=torch.float64),
                               rtol=0, atol=1e-12)


class _Functional(nn.Module):
    """Every op functional: ReLU, a residual sum, a gate x * sigmoid(x), max pooling, a minimum with a constant, a
    product of two feature maps and a max over channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4 + 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x))
        h = h + self.conv2(h)  # residual
        h = h * torch.sigmoid(h)  # SiLU written out: two factors on the way
        h = F.max_pool2d(h, 2)
        h = torch.minimum(h, torch.tensor(1.5, dtype=h.dtype))
        pair = h[:, :2] * h[:, 2:]  # a product of two tensors on the way
        top = h.amax(1)  # a max over channels
        return self.head(torch.cat([h.flatten(1), pair.flatten(1) + top.flatten(1).repeat(1, 2)], 1)[:, :80])


@pytest.mark.parametrize("baseline", ["zero", "random"])
def test_summation_to_delta_through_functional_ops(baseline: str) -> None:
    torch.manual_seed(0)
    model = _Functional().double().eval()
    x = _randn(3, 2, 8, 8)
    ref = torch.zeros_like(x) if baseline == "zero" else 0.3 * _randn(3, 2, 8, 8, seed=2)
    explanation = relprop.explain(model, x, "all", method="deeplift", baseline=ref)
    with torch.no_grad():
        delta = model(x) - model(ref)
    assert explanation.relevance.shape == (3, 3, 2, 8, 8)
    torch.testing.assert_close(explanation.relevance.flatten(2).sum(2), delta, rtol=1e-9, atol=1e-12)
    assert float(explanation.details["summation_gap"].abs().max()) < 1e-9 * float(delta.abs().max())
    gradient = relprop.explain(model, x, "all", method="gradient").relevance
    assert not torch.allclose(explanation.relevance, (x - ref).unsqueeze(1) * gradient)  # not the plain gradient


def test_several_targets_equal_the_loop_and_a_seed_is_linear() -> None:
    torch.manual_seed(1)
    model = _Functional().double().eval()
    x = _randn(2, 2, 8, 8, seed=3)
    every = relprop.explain(model, x, "all", method="deeplift")
    for k in range(3):
        torch.testing.assert_close(every.relevance[:, k], relprop.explain(model, x, k, method="deeplift").relevance)
    contrast = relprop.explain(model, x, seed=lambda out: out[:, 0] - out[:, 2], method="deeplift")
    torch.testing.assert_close(contrast.relevance, every.relevance[:, 0] - every.relevance[:, 2])


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "densenet121"])
def test_torchvision_models_sum_to_delta(name: str) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=4).double().eval()
    with torch.no_grad():  # activations whose differences are far from those where the derivative replaces the secant
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.mul_(3.0)
    x, ref = _randn(2, 3, 64, 64), 0.2 * _randn(2, 3, 64, 64, seed=4)
    explanation = relprop.explain(model, x, method="deeplift", baseline=ref)
    with torch.no_grad():
        delta = (model(x) - model(ref)).gather(1, explanation.target.reshape(-1, 1))[:, 0]
    assert bool((delta.abs() > 1e-3).all())
    torch.testing.assert_close(explanation.relevance.flatten(1).sum(1), delta, rtol=1e-8, atol=0)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("scale", [1.0, 1e-14])
def test_a_relu_net_is_the_literal_rescale_at_any_scale(scale: float) -> None:
    """R = ((w2 * m) W1) * (x - x'), m = (relu(z) - relu(z')) / (z - z') the secant of each hidden unit, at weights
    of any size. With Captum's absolute 1e-10, weights of 1e-14 (values that have shrunk, as in a random
    MobileNetV2, whose scores are about 1e-23) made every unit take its derivative, and a unit whose z and z' have
    opposite signs then gave z - z' where relu(z) - relu(z') = z: the sum missed f(x) - f(x') by about that much."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2)).double().eval()
    with torch.no_grad():
        model[0].weight.mul_(scale), model[0].bias.mul_(scale)
    x, ref = _randn(4, 6, seed=5), _randn(4, 6, seed=6)
    explanation = relprop.explain(model, x, 1, method="deeplift", baseline=ref)
    with torch.no_grad():
        z, z_ref = model[0](x), model[0](ref)
        m = (F.relu(z) - F.relu(z_ref)) / (z - z_ref)
        literal = ((model[2].weight[1] * m) @ model[0].weight) * (x - ref)
        delta = (F.relu(z) - F.relu(z_ref)) @ model[2].weight[1]  # f(x) - f(x') without the bias's rounding
    assert bool(((z > 0) != (z_ref > 0)).any())  # units whose two values lie on both sides of the kink
    torch.testing.assert_close(explanation.relevance, literal, rtol=1e-10, atol=0)
    torch.testing.assert_close(explanation.relevance.sum(1), delta, rtol=1e-10, atol=0)


def test_float32_agrees_with_float64() -> None:
    """A random EfficientNet-B0 against a reference close to the input: float32's attributions lie 2.8e-5 from
    float64's (relative, in the 2-norm). With Captum's absolute 1e-10 in float32, secants of differences in the
    last digits put them 4.1e-4 away."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.efficientnet_b0(num_classes=4).eval()
    x = _randn(2, 3, 32, 32, seed=1)
    ref = x + 0.05 * _randn(2, 3, 32, 32, seed=2)
    wide = relprop.explain(copy.deepcopy(model).double(), x, 1, method="deeplift", baseline=ref).relevance
    narrow = relprop.explain(model, x.float(), 1, method="deeplift", baseline=ref.float()).relevance
    assert float((narrow.double() - wide).norm() / wide.norm()) < 1e-4


def test_a_difference_below_the_scores_rounding_is_not_refused() -> None:
    """f(x) = 1 + 1e-6 w . x in float32: the attributions are w (x - x') 1e-6 exactly, while f(x) - f(x') is known only
    to a unit of the last place of 1 (1.2e-7). That gap was refused as a batch folded with another dimension; it is
    the scores' own rounding (16 units of their last place are allowed; timm's random ConvMixer, RepVGG and CSPNeXt
    hit it)."""
    model = nn.Linear(8, 1)
    with torch.no_grad():
        model.weight.copy_(1e-6 * torch.linspace(-1, 1, 8)), model.bias.fill_(1.0)
    x = torch.rand(3, 8, generator=torch.Generator().manual_seed(0))
    explanation = relprop.explain(model.eval(), x, 0, method="deeplift")
    torch.testing.assert_close(explanation.relevance, model.weight[0].detach() * x, rtol=1e-6, atol=0)
    gap = explanation.details["summation_gap"]
    assert bool((gap != 0).any()) and float(gap.abs().max()) <= 16 * torch.finfo(torch.float32).eps


class _PickedAndCancelled(nn.Module):
    """The larger of features 0 and 1 (the first of a descending sort: the input's and the reference's at other
    places, which the summation check catches, as a top-k selection is caught at the op) plus ``scale`` times
    features 2 and 3, equal in every sample, taken apart: attributions of +-scale that cancel exactly."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        picked = x[:, :2].sort(dim=1, descending=True).values[:, :1]
        return picked + self.scale * (x[:, 2:3] - x[:, 3:4])


def test_a_gap_hidden_by_cancelling_attributions_is_refused() -> None:
    """sort routes the input's half at the input's maximum and the reference's at its own, so the sum misses
    f(x) - f(x') by x'_i - x'_j where the two maxima lie apart. The 1e-3 of the attributions' absolute sum that the
    check allowed was 2 here, and the gap of 0.5 passed silently; the allowance is now the square root of
    the precision (1.5e-8 in float64) of that sum, the derivatives' bound, besides 1e-3 of the difference."""
    x = torch.tensor([[2.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    ref = torch.tensor([[0.0, 0.5, 0.0, 0.0]], dtype=torch.float64)  # the maximum at feature 1, the input's at 0
    for scale in (0.0, 1e3):  # (without the cancelling pair the old check refused it too)
        with pytest.raises(ExplanationError, match=r"do not sum to f\(x\) - f\(x'\) \(gap 0.5 against 1.5\)"):
            relprop.explain(_PickedAndCancelled(scale).eval(), x, 0, method="deeplift", baseline=ref)


@pytest.mark.parametrize(("scale", "dtype", "advice"), [(200.0, torch.float32, ", or explain in float64"),
                                                       (2000.0, torch.float64, "")])
def test_a_softmax_whose_exponentials_underflow_is_refused_with_the_distance(scale: float, dtype: torch.dtype,
                                                                            advice: str) -> None:
    """The input's largest softmax score lies ``scale`` above the reference's, whose exponentials then all underflow
    (beyond 87 in float32, 708 in float64). float64 helps only where the distance is below its bound."""
    model = nn.Sequential(nn.Linear(2, 3, bias=False), nn.Softmax(-1)).to(dtype).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[scale, 0.0], [0.0, scale], [0.0, 0.0]]))
    x, ref = torch.tensor([[1.0, 0.5]], dtype=dtype), torch.tensor([[-1.0, -1.0]], dtype=dtype)
    with pytest.raises(ExplanationError, match=rf"maxima by up to {re.escape(f'{scale:.3g}')}.*closer to the input"
                                               rf"{advice}$"):
        relprop.explain(model, x, 0, method="deeplift", baseline=ref)


class _CastNorm(nn.Module):
    """An RMS norm computed in float32 inside a float64 model (``cast``, as Hugging Face's LLaMA computes it), or
    in the model's dtype; its input at the zero reference is the first layer's bias, 1e-4 of its weights' scale."""

    def __init__(self, cast: bool) -> None:
        super().__init__()
        self.cast, self.linear, self.head = cast, nn.Linear(6, 8), nn.Linear(8, 2)
        with torch.no_grad():
            self.linear.bias.mul_(1e-4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear(x)
        inner = h.float() if self.cast else h
        normed = inner * torch.rsqrt(inner.pow(2).mean(-1, keepdim=True) + 1e-12)
        return self.head(normed.to(h.dtype))  # type: ignore[no-any-return]


def test_cancellation_is_judged_by_the_precision_the_model_computes_in() -> None:
    """The attributions add up to 6.4e4 times f(x) - f(x') (the norm's secant at the reference is huge): float64
    knows their sum to 1.4e-11 of it, and they are explained; where the model computes its norm in float32, to
    7.6e-3, and they are refused as cancelling, naming float32. (Hugging Face's DeepSeek-V3, a tiny config without
    experts, with token 0 as the reference passed unseen, its sum off by 19 times the difference; Gemma and Qwen3
    by 0.8% and 0.4%.)"""
    torch.manual_seed(0)
    model, cast = _CastNorm(False).double().eval(), _CastNorm(True).double().eval()
    cast.load_state_dict(model.state_dict())
    x = _randn(3, 6, seed=1)
    explanation = relprop.explain(model, x, 0, method="deeplift")
    assert float((explanation.relevance.abs().sum(1) / explanation.relevance.sum(1).abs()).max()) > 1e4
    assert float(explanation.details["summation_gap"].abs().max()) < 1e-9
    with pytest.raises(ExplanationError, match=r"cancel.*torch.float32's rounding.*computes some of its values in "
                                               r"torch.float32"):
        relprop.explain(cast, x, 0, method="deeplift")


class _Affine(nn.Module):
    """``addcmul`` as timm's affine layers (one factor on the way) and ConvNeXt V2's response norm (two) call it, or
    the same written out."""

    def __init__(self, written: bool) -> None:
        super().__init__()
        self.written, self.linear = written, nn.Linear(6, 6)
        self.weight, self.bias = nn.Parameter(torch.randn(6)), nn.Parameter(torch.randn(6))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.linear(x))
        if self.written:
            h = self.bias + self.weight * h
            return (h + 0.5 * (h * torch.sigmoid(h))).sum(1, keepdim=True)
        h = torch.addcmul(self.bias, self.weight, h)
        return h.addcmul(h, torch.sigmoid(h), value=0.5).sum(1, keepdim=True)


def test_addcmul_runs_as_its_sum_and_products() -> None:
    torch.manual_seed(2)
    model, written = _Affine(False).double().eval(), _Affine(True).double().eval()
    written.load_state_dict(model.state_dict())
    x, ref = _randn(4, 6, seed=3), 0.5 * _randn(4, 6, seed=4)
    explanation = relprop.explain(model, x, 0, method="deeplift", baseline=ref)
    expected = relprop.explain(written, x, 0, method="deeplift", baseline=ref)
    torch.testing.assert_close(explanation.relevance, expected.relevance, rtol=1e-13, atol=1e-15)
    assert float(explanation.details["summation_gap"].abs().max()) < 1e-12


class _TwoWays(nn.Module):
    """``w . extremum(A x, B x)``: an element-wise maximum or minimum of two tensors on the way, by ``kind``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.a, self.b, self.head = kind, nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.a(x), self.b(x)
        h = {"maximum": lambda: torch.maximum(a, b), "swapped": lambda: torch.maximum(b, a),
             "max": lambda: torch.max(a, b), "fmax": lambda: torch.fmax(a, b), "method": lambda: a.maximum(b),
             "minimum": lambda: torch.minimum(a, b), "min": lambda: torch.min(b, a)}[self.kind]()
        return self.head(h)  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["maximum", "swapped", "max", "fmax", "method", "minimum", "min"])
def test_an_extremum_of_two_tensors_is_the_literal_rescale_of_its_difference(kind: str) -> None:
    """The literal DeepLIFT of y = max(a, b) = a + relu(b - a): with d = b - a and m = (relu(d) - relu(d')) /
    (d - d') (its derivative where d = d'), y - y' = (1 - m)(a - a') + m (b - b'), and a = A x, b = B x pass it to
    x linearly (the minimum a - relu(a - b), with d = a - b: the same sum). The same whichever tensor comes
    first."""
    torch.manual_seed(0)
    model = _TwoWays(kind).double().eval()
    x, ref = _randn(5, 6), 0.4 * _randn(5, 6, seed=8)
    explanation = relprop.explain(model, x, 2, method="deeplift", baseline=ref)
    a, b, a_ref, b_ref = model.a(x), model.b(x), model.a(ref), model.b(ref)
    minimum = kind in ("minimum", "min")
    d, d_ref = (a - b, a_ref - b_ref) if minimum else (b - a, b_ref - a_ref)
    apart = (d - d_ref).abs() >= 1e-10
    m = torch.where(apart, (F.relu(d) - F.relu(d_ref)) / torch.where(apart, d - d_ref, 1.0), (d > 0).double())
    w = model.head.weight[2]
    literal = ((1 - m) * w @ model.a.weight + m * w @ model.b.weight) * (x - ref)
    torch.testing.assert_close(explanation.relevance, literal.detach(), rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        delta = model(x)[:, 2] - model(ref)[:, 2]
    torch.testing.assert_close(explanation.relevance.sum(1), delta, rtol=1e-12, atol=1e-14)


class _OverDimension(nn.Module):
    """A maximum (minimum) over a dimension, as ``x.max(dim)`` returning its indices too, or as ``amax``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.linear, self.head = kind, nn.Linear(6, 12), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear(x).reshape(-1, 3, 4)
        if self.kind == "max":
            top = h.max(dim=1)
            assert torch.equal(top.indices, h.detach().argmax(1))  # the indices of each sample's own maximum
            h = top.values
        elif self.kind == "min":
            h = torch.min(h, 1, keepdim=True)[0][:, 0]
        else:
            h = h.amin(1) if self.kind == "amin" else h.amax(1)
        return self.head(F.relu(h))  # type: ignore[no-any-return]


@pytest.mark.parametrize(("kind", "twin"), [("max", "amax"), ("min", "amin")])
def test_an_extremum_over_a_dimension_with_its_indices_equals_amax(kind: str, twin: str) -> None:
    """Hugging Face's Hiera pools with ``x.view(...).max(dim=1).values``: the values are amax's (with Captum's
    split of a maximum), the indices each half's own, a constant."""
    torch.manual_seed(1)
    model, same = _OverDimension(kind).double().eval(), _OverDimension(twin).double().eval()
    same.load_state_dict(model.state_dict())
    x, ref = _randn(4, 6, seed=2), 0.4 * _randn(4, 6, seed=3)
    explanation = relprop.explain(model, x, "all", method="deeplift", baseline=ref)
    torch.testing.assert_close(explanation.relevance,
                               relprop.explain(same, x, "all", method="deeplift", baseline=ref).relevance,
                               rtol=0, atol=0)
    assert float(explanation.details["summation_gap"].abs().max()) < 1e-12


class _Refused(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.linear = kind, nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear(x)
        if self.kind == "topk":  # the input's two largest against the reference's, at other places
            return torch.cat([h.topk(2, dim=1).values, h], 1)
        if self.kind == "sort":  # the same by a sort, which only the summation check catches
            return torch.cat([h.sort(dim=1, descending=True).values[:, :2], h], 1)
        if self.kind == "topk_over_batch":  # the largest sample of each feature: across the input and the reference
            return h - h.topk(1, dim=0).values
        if self.kind == "scalar":  # scaled by a sum over the whole batch: the input's and the reference's together
            return h * h.sum()
        return F.relu(h.unsqueeze(1).transpose(0, 1)).transpose(0, 1)[:, 0]  # the batch in dimension 1


@pytest.mark.parametrize(("kind", "message"), [
    ("topk", r"DeepLIFT at topk at .*test_deeplift\.py:\d+: the input and the reference select different values "
             r"in [1-3] of 3 rows"),
    ("sort", r"do not sum to f\(x\) - f\(x'\).*places found from the values themselves \(sort"),
    ("topk_over_batch", r"DeepLIFT at topk at .*: the selection runs over dimension 0"),
    ("scalar", r"at mul .* a tensor on the way is a scalar, computed over the whole batch"),
    ("time_major", r"shape \(1, 6, 4\), not the batch \(6\) in dimension 0"),
])
def test_ops_without_a_deeplift_rule_are_refused(kind: str, message: str) -> None:
    model = _Refused(kind).double().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ExplanationError, match=message):
        relprop.explain(model, _randn(3, 4), 0, method="deeplift")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class _Folded(nn.Module):
    """A ReLU over the batch folded with the steps: (batch * steps, ...) batch outermost, or steps outermost."""

    def __init__(self, batch_outermost: bool) -> None:
        super().__init__()
        self.batch_outermost, self.linear, self.head = batch_outermost, nn.Linear(4, 4), nn.Linear(12, 2)

    def forward(self, x: Tensor) -> Tensor:  # x: (batch, 3 steps, 4)
        h = self.linear(x)
        if self.batch_outermost:
            return self.head(F.relu(h.reshape(-1, 4)).reshape(len(x), 12))
        folded = F.relu(h.transpose(0, 1).reshape(-1, 4))  # (steps * batch, 4)
        return self.head(folded.reshape(3, len(x), 4).transpose(0, 1).reshape(len(x), 12))


def test_a_folded_batch_is_explained_batch_outermost_and_refused_otherwise() -> None:
    torch.manual_seed(0)
    outer, inner = _Folded(True).double().eval(), _Folded(False).double().eval()
    inner.load_state_dict(outer.state_dict())
    x, ref = _randn(2, 3, 4), 0.5 * _randn(2, 3, 4, seed=6)
    explanation = relprop.explain(outer, x, 1, method="deeplift", baseline=ref)
    assert float(explanation.details["summation_gap"].abs().max()) < 1e-12
    with torch.no_grad():  # the same function
        torch.testing.assert_close(outer(x), inner(x))
    with pytest.raises(ExplanationError, match=r"do not sum to f\(x\) - f\(x'\).*time-major"):
        relprop.explain(inner, x, 1, method="deeplift", baseline=ref)


def test_a_bad_baseline_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double().eval()
    x = _randn(2, 4)
    with pytest.raises(ConfigError, match=r"baseline of shape \(3,\) does not broadcast to the shape of x \(2, 4\)"):
        relprop.explain(model, x, 0, method="deeplift", baseline=torch.zeros(3))
    with pytest.raises(ConfigError, match="baseline contains NaN"):
        relprop.explain(model, x, 0, method="deeplift", baseline=torch.full((4,), float("nan")))
    one = relprop.explain(model, x, 0, method="deeplift", baseline=torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(one.relevance, relprop.explain(model, x, 0, method="deeplift", baseline=1.0).relevance)


def test_a_model_with_a_backward_hook_is_refused() -> None:
    """A backward hook would see DeepLIFT's multipliers as a gradient."""
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double().eval()
    handle = model[1].register_full_backward_hook(lambda module, grad_in, grad_out: None)
    try:
        with pytest.raises(ExplanationError, match=r"have backward hooks"):
            relprop.explain(model, _randn(2, 4), 0, method="deeplift")
        with pytest.raises(ExplanationError, match=r"have backward hooks"):
            relprop.explain(model, _randn(2, 4), 0, method="deeplift_shap", baselines=_randn(2, 4))
    finally:
        handle.remove()


def test_deeplift_shap_is_the_mean_over_the_references() -> None:
    torch.manual_seed(0)
    model = _Functional().double().eval()
    x, references = _randn(2, 2, 8, 8), 0.3 * _randn(4, 2, 8, 8, seed=7)
    got = relprop.explain(model, x, 1, method="deeplift_shap", baselines=references)
    each = [relprop.explain(model, x, 1, method="deeplift", baseline=b).relevance for b in references]
    torch.testing.assert_close(got.relevance, torch.stack(each).mean(0), rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        delta = model(x)[:, 1] - model(references)[:, 1].mean()
    torch.testing.assert_close(got.relevance.flatten(1).sum(1), delta, rtol=1e-9, atol=1e-12)
    chunked = relprop.explain(model, x, 1, method="deeplift_shap", baselines=references, batch_size=4)
    torch.testing.assert_close(chunked.relevance, got.relevance, rtol=1e-12, atol=1e-14)
    contrast = relprop.explain(model, x, seed=lambda out: out[:, 1] - out[:, 0], method="deeplift_shap",
                               baselines=references)
    zero = relprop.explain(model, x, 0, method="deeplift_shap", baselines=references)
    torch.testing.assert_close(contrast.relevance, got.relevance - zero.relevance, rtol=1e-9, atol=1e-12)


def test_deeplift_shap_options_are_checked() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double().eval()
    x = _randn(2, 4)
    with pytest.raises(ConfigError, match="needs baselines="):
        relprop.explain(model, x, 0, method="deeplift_shap")
    with pytest.raises(ConfigError, match=r"baselines must have shape \(n, 4\)"):
        relprop.explain(model, x, 0, method="deeplift_shap", baselines=torch.zeros(3, 5))
    with pytest.raises(ConfigError, match="baselines contain NaN"):
        relprop.explain(model, x, 0, method="deeplift_shap", baselines=torch.full((2, 4), float("inf")))
    with pytest.raises(ConfigError, match="option batch_size=0 must be a positive integer"):
        relprop.explain(model, x, 0, method="deeplift_shap", baselines=torch.zeros(2, 4), batch_size=0)


def test_layers_sum_to_delta_for_one_and_several_targets() -> None:
    torch.manual_seed(0)
    model = _Functional().double().eval()
    x, ref = _randn(2, 2, 8, 8), 0.3 * _randn(2, 2, 8, 8, seed=8)
    one = relprop.explain(model, x, 1, method="deeplift", baseline=ref, layers=["conv1", "conv2"])
    assert one.layers["conv1"].shape == (2, 4, 8, 8)
    gaps = one.details["summation_by_layer"]  # conv1 is on every path, conv2 beside the residual: only a part
    assert float(gaps[:, 0].abs().max()) < 1e-12 and float(gaps[:, 1].abs().min()) > 1e-3
    every = relprop.explain(model, x, "all", method="deeplift", baseline=ref, layers=["conv1", "conv2"])
    assert every.layers["conv2"].shape == (2, 3, 4, 8, 8)
    torch.testing.assert_close(every.layers["conv2"][:, 1], one.layers["conv2"])
    torch.testing.assert_close(every.relevance[:, 1], one.relevance)
    assert every.details["summation_by_layer"].shape == (2, 3, 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_half_precision_is_explained_and_its_rounding_not_taken_for_a_folded_batch(dtype: torch.dtype) -> None:
    """The summation check allows 16 units of the last place in float16 and bfloat16 (it refused bfloat16 once)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 3)).to(dtype).eval()
    x = torch.randn(4, 40, dtype=dtype)
    explanation = relprop.explain(model, x, 0, method="deeplift", baseline=0.1)
    assert explanation.relevance.dtype == dtype
    with torch.no_grad():
        delta = (model(x) - model(torch.full_like(x, 0.1)))[:, 0].double()
    gap = (explanation.relevance.double().sum(1) - delta).abs()
    assert float(gap.max()) < 64 * torch.finfo(dtype).eps * float(explanation.relevance.double().abs().sum(1).max())


class _Stock(nn.Module):
    """A classifier on a stock recurrent module (2 layers, bidirectional), scoring the last step."""

    def __init__(self, kind: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn = kind(5, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.out = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        output, _ = self.rnn(x)
        return self.out(output[:, -1])


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_stock_recurrent_modules_run_as_explicit_cells_and_sum_to_delta(kind: type[nn.RNNBase]) -> None:
    torch.manual_seed(0)
    model = _Stock(kind).double().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, ref = _randn(3, 7, 5), 0.2 * _randn(3, 7, 5, seed=9)
    explanation = relprop.explain(model, x, "all", method="deeplift", baseline=ref)
    with torch.no_grad():
        delta = model(x) - model(ref)
    torch.testing.assert_close(explanation.relevance.flatten(2).sum(2), delta, rtol=1e-9, atol=1e-12)
    assert [name for name, _ in model.named_children()] == ["rnn", "out"]  # the twin is gone
    assert "forward" not in model.rnn.__dict__
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


class _Norm(nn.Module):
    """Linear, a normalisation (the module, or the same written out with means, products and rsqrt), tanh, head."""

    def __init__(self, kind: str, written_out: bool) -> None:
        super().__init__()
        self.kind, self.written_out = kind, written_out
        self.linear, self.head = nn.Linear(6, 8), nn.Linear(8 * 3, 3)
        self.norm = {"layer": nn.LayerNorm(8), "layer_divided": nn.LayerNorm(8), "rms": nn.RMSNorm(8, eps=1e-6),
                     "group": nn.GroupNorm(2, 8),
                     "instance": nn.InstanceNorm1d(8, affine=True),
                     "instance_running": nn.InstanceNorm1d(8, affine=True, track_running_stats=True)}[kind]
        with torch.no_grad():
            for name, parameter in self.norm.named_parameters():
                parameter.copy_(torch.linspace(0.5, 1.5, len(parameter)) if name == "weight"
                                else torch.linspace(-0.3, 0.2, len(parameter)))
            if kind == "instance_running":
                self.norm.running_mean.copy_(torch.linspace(-1, 1, 8))
                self.norm.running_var.copy_(torch.linspace(0.5, 2, 8))

    def forward(self, x: Tensor) -> Tensor:  # x: (batch, 3, 6)
        h = self.linear(x)  # (batch, 3, 8)
        if self.kind in ("group", "instance", "instance_running"):
            h = h.transpose(1, 2)  # (batch, 8 channels, 3)
        h = self._written_out(h) if self.written_out else self.norm(h)
        if self.kind in ("group", "instance", "instance_running"):
            h = h.transpose(1, 2)
        return self.head(torch.tanh(h).flatten(1))  # type: ignore[no-any-return]

    def _written_out(self, h: Tensor) -> Tensor:
        norm = self.norm
        if self.kind == "layer":
            u = h - h.mean(-1, keepdim=True)
            return u * torch.rsqrt((u * u).mean(-1, keepdim=True) + norm.eps) * norm.weight + norm.bias
        if self.kind == "layer_divided":  # as Hugging Face's ConvNext writes it: a division by a tensor on the path
            u = h - h.mean(-1, keepdim=True)
            return u / torch.sqrt(u.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight + norm.bias
        if self.kind == "rms":
            return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
        channel = (1, -1, 1)
        if self.kind == "instance_running":
            scale = torch.rsqrt(norm.running_var + norm.eps).reshape(channel)
            return (h - norm.running_mean.reshape(channel)) * scale * norm.weight.reshape(channel) + \
                norm.bias.reshape(channel)
        groups = h.reshape(len(h), 2 if self.kind == "group" else 8, -1)
        u = groups - groups.mean(-1, keepdim=True)
        normalised = (u * torch.rsqrt((u * u).mean(-1, keepdim=True) + norm.eps)).reshape(h.shape)
        return normalised * norm.weight.reshape(channel) + norm.bias.reshape(channel)


@pytest.mark.parametrize("kind", ["layer", "layer_divided", "rms", "group", "instance", "instance_running"])
def test_a_norm_is_explained_as_the_same_norm_written_out(kind: str) -> None:
    """A norm runs as its elementary ops (means, a product of two tensors on the path, the Rescale of rsqrt): its
    attributions equal those of the norm written out by hand, and sum to delta exactly."""
    torch.manual_seed(0)
    module, written = _Norm(kind, False).double().eval(), _Norm(kind, True).double().eval()
    written.load_state_dict(module.state_dict())
    x, ref = _randn(4, 3, 6), 0.3 * _randn(4, 3, 6, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(module(x), written(x))
    got = relprop.explain(module, x, 1, method="deeplift", baseline=ref)
    want = relprop.explain(written, x, 1, method="deeplift", baseline=ref)
    torch.testing.assert_close(got.relevance, want.relevance, rtol=1e-10, atol=1e-13)
    with torch.no_grad():
        delta = module(x)[:, 1] - module(ref)[:, 1]
    torch.testing.assert_close(got.relevance.flatten(1).sum(1), delta, rtol=1e-10, atol=1e-13)


def test_the_softmax_is_the_literal_chain_of_its_elementary_ops() -> None:
    """y = softmax(W x + b), score v . y: the literal DeepLIFT of y = e / S with e = exp(a - c) (the Rescale of exp),
    S = sum e, r = 1 / S (the Rescale of 1 / s) and e * r (the product split) from its formulas."""
    torch.manual_seed(0)
    linear, head = nn.Linear(5, 4).double(), nn.Linear(4, 2).double()
    model = nn.Sequential(linear, nn.Softmax(-1), head).eval()
    x, ref = _randn(3, 5), 0.5 * _randn(3, 5, seed=3)
    got = relprop.explain(model, x, 1, method="deeplift", baseline=ref).relevance
    with torch.no_grad():
        a, a_ref = linear(x), linear(ref)
        c = torch.maximum(a.amax(-1, keepdim=True), a_ref.amax(-1, keepdim=True))
        e, e_ref = (a - c).exp(), (a_ref - c).exp()
        s, s_ref = e.sum(-1, keepdim=True), e_ref.sum(-1, keepdim=True)
        r, r_ref = 1 / s, 1 / s_ref
        g = head.weight[1].expand(3, -1)  # the score's multipliers at y
        at_r = (g * (e + e_ref) / 2).sum(-1, keepdim=True)  # y = e * r: r's share of the product split
        at_s = at_r * (r - r_ref) / (s - s_ref)  # the Rescale of 1 / s
        at_e = g * (r + r_ref) / 2 + at_s  # e's share of the product, and through the sum
        at_a = at_e * (e - e_ref) / (a - a_ref)  # the Rescale of exp
        want = (x - ref) * (at_a @ linear.weight)
        delta = model(x)[:, 1] - model(ref)[:, 1]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(got.sum(1), delta, rtol=1e-10, atol=1e-13)


def _transformers() -> dict[str, nn.Module]:
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.convnext import CNBlockConfig

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=3)
    nn.init.normal_(vit.heads.head.weight, std=0.5)  # (torchvision starts the head at zero: delta 0)
    swin = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                              window_size=[2, 2], num_classes=3)
    convnext = torchvision.models.ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=3)
    return {"vit": vit, "swin": swin, "convnext": convnext}


@pytest.mark.parametrize("name", ["vit", "swin", "convnext"])
def test_transformers_and_convnext_sum_to_delta(name: str) -> None:
    """Layer norms, nn.MultiheadAttention (its projections and softmax), windowed attention with its masks, a
    ConvNeXt block's layer scale and in-place residual: every op gets its rule, and the sum is exact."""
    model = _transformers()[name].double().eval()
    x, ref = _randn(2, 3, 16, 16), 0.3 * _randn(2, 3, 16, 16, seed=5)
    explanation = relprop.explain(model, x, method="deeplift", baseline=ref)
    with torch.no_grad():
        delta = (model(x) - model(ref)).gather(1, explanation.target.reshape(-1, 1))[:, 0]
    assert bool((delta.abs() > 1e-6).all())
    torch.testing.assert_close(explanation.relevance.flatten(1).sum(1), delta, rtol=1e-9, atol=1e-12)


def test_a_bert_with_padding_sums_to_delta_per_token() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, num_labels=3)
    bert = transformers.BertForSequenceClassification(config).double().eval()
    ids, mask = torch.randint(1, 50, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    reference = torch.zeros_like(ids)
    explanation = relprop.explain(bert, ids, 2, method="deeplift", baseline=reference,
                                  model_kwargs={"attention_mask": mask})
    with torch.no_grad():
        delta = bert(ids, attention_mask=mask).logits[:, 2] - bert(reference, attention_mask=mask).logits[:, 2]
    assert explanation.relevance.shape == (2, 7)
    torch.testing.assert_close(explanation.relevance.sum(1), delta, rtol=1e-9, atol=1e-12)


class _Divided(nn.Module):
    def __init__(self, constant_numerator: bool) -> None:
        super().__init__()
        self.constant_numerator, self.linear, self.head = constant_numerator, nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear(x)
        numerator = torch.linspace(1.0, 2.0, 4, dtype=x.dtype) if self.constant_numerator else h
        return self.head(torch.div(numerator, h * h + 1.0))  # type: ignore[no-any-return]


@pytest.mark.parametrize("constant_numerator", [False, True])
def test_a_division_by_a_tensor_on_the_path_is_the_literal_product_with_its_reciprocal(
        constant_numerator: bool) -> None:
    """``a / b``: a gets ``(1/b + 1/b') / 2``, b gets ``-(a + a') / 2 / (b b')``, then b = h h + 1 the product
    split ``2 (h + h') / 2``; written out here from those formulas."""
    torch.manual_seed(0)
    model = _Divided(constant_numerator).double().eval()
    x, ref = _randn(3, 4), 0.4 * _randn(3, 4, seed=6)
    got = relprop.explain(model, x, 1, method="deeplift", baseline=ref).relevance
    with torch.no_grad():
        h, h_ref = model.linear(x), model.linear(ref)
        b, b_ref = h * h + 1, h_ref * h_ref + 1
        a, a_ref = (torch.linspace(1.0, 2.0, 4, dtype=x.dtype).expand(3, 4),) * 2 if constant_numerator else (h, h_ref)
        g = model.head.weight[1].expand(3, -1)
        at_b = -g * (a + a_ref) / 2 / (b * b_ref)
        at_h = at_b * (h + h_ref) + (0 if constant_numerator else g * (1 / b + 1 / b_ref) / 2)
        want = (x - ref) * (at_h @ model.linear.weight)
        delta = model(x)[:, 1] - model(ref)[:, 1]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(got.sum(1), delta, rtol=1e-10, atol=1e-13)


class _Statistics(nn.Module):
    """Linear, a normalisation written with a statistic, tanh, head."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.linear, self.head = kind, nn.Linear(5, 6), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear(x)
        centred = h - h.mean(-1, keepdim=True)
        if self.kind == "layer_norm":
            h = F.layer_norm(h, (6,), eps=1e-5)
        elif self.kind == "var":
            h = centred / torch.sqrt(h.var(-1, keepdim=True, unbiased=False) + 1e-5)
        elif self.kind == "var_mean":
            variance, mean = torch.var_mean(h, dim=-1, keepdim=True, correction=0)
            h = (h - mean) * torch.rsqrt(variance + 1e-5)
        elif self.kind == "std":
            h = centred / (h.std(-1, keepdim=True) + 1e-5)
        elif self.kind == "norm":
            h = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        elif self.kind == "normalize":
            h = F.normalize(h, dim=-1)
        elif self.kind == "var_of_everything":
            h = h * h.var()
        return self.head(torch.tanh(h))  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["var", "var_mean", "std", "norm", "normalize"])
def test_statistics_run_as_their_ops_and_sum_to_delta(kind: str) -> None:
    """var, std, var_mean and the 2-norm (and F.normalize) run as their elementary ops: exact, and a layer norm
    written with var or var_mean equals F.layer_norm, F.normalize the division by the norm."""
    torch.manual_seed(0)
    model = _Statistics(kind).double().eval()
    x, ref = _randn(3, 5), 0.3 * _randn(3, 5, seed=7)
    got = relprop.explain(model, x, 1, method="deeplift", baseline=ref).relevance
    with torch.no_grad():
        delta = model(x)[:, 1] - model(ref)[:, 1]
    torch.testing.assert_close(got.sum(1), delta, rtol=1e-10, atol=1e-13)
    twin = {"var": "layer_norm", "var_mean": "layer_norm", "normalize": "norm"}.get(kind)
    if twin is not None:
        other = _Statistics(twin).double().eval()
        other.load_state_dict(model.state_dict())
        want = relprop.explain(other, x, 1, method="deeplift", baseline=ref).relevance
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)


def test_a_statistic_over_the_whole_batch_is_refused() -> None:
    with pytest.raises(ExplanationError, match="mixes the samples of the batch"):
        relprop.explain(_Statistics("var_of_everything").double().eval(), _randn(3, 5), 1, method="deeplift")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attributions_that_cancel_beyond_the_dtypes_precision_are_refused(dtype: torch.dtype) -> None:
    """A layer norm fed by a bias-free layer sees zeros at a zero reference: its secant is 1 / sqrt(eps) there, and
    those of four such norms multiply. The attributions' absolute values then exceed f(x) - f(x') by far more than
    the dtype's rounding lets the sum be checked: refused, where a noise reference is explained."""
    torch.manual_seed(0)
    blocks = [module for _ in range(4) for module in (nn.Linear(8, 8, bias=False), nn.LayerNorm(8, eps=1e-12))]
    model = nn.Sequential(nn.Linear(6, 8, bias=False), *blocks, nn.Linear(8, 3)).to(dtype).eval()
    x = _randn(2, 6).to(dtype)
    with pytest.raises(ExplanationError, match="attributions cancel.*choose a reference"):
        relprop.explain(model, x, 1, method="deeplift", baseline=0.0)
    explanation = relprop.explain(model, x, 1, method="deeplift", baseline=0.3 * _randn(2, 6, seed=8).to(dtype))
    assert float(explanation.details["summation_gap"].abs().max()) < 1e-4


class _InstanceNorm(nn.Module):
    """An instance norm through the module (F.instance_norm) or through torch.instance_norm, which takes the weight
    and bias before the running statistics."""

    def __init__(self, direct: bool) -> None:
        super().__init__()
        self.direct, self.linear, self.head = direct, nn.Linear(4, 12), nn.Linear(12, 2)
        self.norm = nn.InstanceNorm1d(3, affine=True)
        with torch.no_grad():
            self.norm.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
            self.norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear(x).reshape(len(x), 3, 4)
        if self.direct:
            h = torch.instance_norm(h, self.norm.weight, self.norm.bias, None, None, True, 0.1, 1e-5, False)
        else:
            h = self.norm(h)
        return self.head(torch.tanh(h.flatten(1)))  # type: ignore[no-any-return]


def test_torch_instance_norm_is_read_in_its_own_argument_order() -> None:
    torch.manual_seed(0)
    direct, module = _InstanceNorm(True).double().eval(), _InstanceNorm(False).double().eval()
    module.load_state_dict(direct.state_dict())
    x, ref = _randn(2, 4), 0.3 * _randn(2, 4, seed=9)
    got = relprop.explain(direct, x, 1, method="deeplift", baseline=ref).relevance
    want = relprop.explain(module, x, 1, method="deeplift", baseline=ref).relevance
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


class _TopPooled(nn.Module):
    """ReLU units, the 3 largest of them (``topk``, or a gather at ``places`` given: the literal twin of a selection
    that the input and the reference share), then a linear head."""

    def __init__(self, places: Tensor | None = None) -> None:
        super().__init__()
        self.places, self.units, self.head = places, nn.Linear(8, 6), nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.units(x))
        if self.places is None:
            return self.head(h.topk(3, dim=1).values)  # type: ignore[no-any-return]
        return self.head(h.gather(1, self.places.repeat(len(h) // len(self.places), 1)))  # type: ignore[no-any-return]


def test_a_top_k_selection_of_tied_values_is_the_gather_at_the_input_places() -> None:
    """At the zero reference every unit is 0 (the bias is -5), so the reference's top 3 are ties at other places than
    the input's, of the same values: the selection is then a gather at the input's places, exactly."""
    torch.manual_seed(0)
    model = _TopPooled().double().eval()
    with torch.no_grad():
        model.units.bias.fill_(-5.0)
    x = 4 * _randn(4, 8, seed=1)
    with torch.no_grad():
        places = torch.relu(model.units(x)).topk(3, dim=1).indices
    assert bool((places != torch.arange(3)).any())  # the reference's own choice (0, 1, 2) is another one
    twin = _TopPooled(places).double().eval()
    twin.load_state_dict(model.state_dict())
    explanation = relprop.explain(model, x, 0, method="deeplift")
    torch.testing.assert_close(explanation.relevance, relprop.explain(twin, x, 0, method="deeplift").relevance,
                               rtol=0, atol=0)
    assert float(explanation.details["summation_gap"].abs().max()) < 1e-12


class _DenseMixture(nn.Module):
    """A mixture of 4 experts, each token's top 2 by a bias-free router, their weights renormalised, every expert
    run on every token (no rows regrouped): a scaled input (0.5 x) is routed as the input, a noise reference not."""

    def __init__(self) -> None:
        super().__init__()
        self.router, self.experts = nn.Linear(6, 4, bias=False), nn.ModuleList(nn.Linear(6, 3) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:  # x: (batch, tokens, 6)
        out = torch.stack([F.relu(expert(x)) for expert in self.experts], 2)  # (batch, tokens, 4, 3)
        weights, chosen = F.softmax(self.router(x), -1).topk(2, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        picked = out.gather(2, chosen.unsqueeze(-1).expand(-1, -1, -1, 3))  # (batch, tokens, 2, 3)
        return (picked * weights.unsqueeze(-1)).sum((1, 2))  # type: ignore[no-any-return]


def test_a_mixture_of_experts_is_explained_where_the_reference_is_routed_alike_and_refused_at_its_router() -> None:
    torch.manual_seed(0)
    model = _DenseMixture().double().eval()
    x = _randn(2, 5, 6, seed=1)
    explanation = relprop.explain(model, x, 1, method="deeplift", baseline=0.5 * x)
    delta = model(x)[:, 1] - model(0.5 * x)[:, 1]
    assert float((explanation.details["summation_gap"] / delta.detach()).abs().max()) < 1e-12
    with pytest.raises(ExplanationError, match=r"DeepLIFT at topk at .*test_deeplift\.py:\d+: the input and the "
                                               r"reference select different values in [12] of 2 rows .*mixture of"):
        relprop.explain(model, x, 1, method="deeplift", baseline=_randn(2, 5, 6, seed=2))

