"""The ``relprop.explain`` facade: its errors, the Explanation result, embeddings, residuals and in-place ReLUs."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import relprop
from counting import Counting
from own_forward import SamePerCallConv, same_pads
from relprop import rules
from relprop.canonizers import MergeBatchNorm
from relprop.composites import LINEAR_TYPES, PRESETS, RuleMap, get_preset
from relprop.core import ExplanationError
from relprop.errors import ConfigError
from relprop.layers import Sum
from relprop.methods import lrp


@pytest.fixture
def x() -> Tensor:
    return torch.randn(2, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# ---------------------------------------------------------------- argument errors


def test_unknown_method_lists_valid_names(mlp, x) -> None:
    with pytest.raises(ConfigError, match="unknown method 'saliencyy'") as error:
        relprop.explain(mlp, x, method="saliencyy")
    for name in relprop.METHODS:
        assert name in str(error.value)


def test_unknown_option_lists_accepted_ones(mlp, x) -> None:
    with pytest.raises(ConfigError, match="stepz") as error:
        relprop.explain(mlp, x, method="integrated_gradients", stepz=3)
    for name in ("baseline", "steps", "quadrature"):
        assert name in str(error.value)


def test_unknown_lrp_option_lists_accepted_ones(mlp, x) -> None:
    with pytest.raises(ConfigError, match="epsilonn") as error:
        relprop.explain(mlp, x, method="lrp", preset="epsilon", epsilonn=0.1)
    assert "stabilizer" in str(error.value) and "'epsilon'" in str(error.value).replace("preset 'epsilon'", "")


def test_unknown_preset_lists_presets(mlp, x) -> None:
    with pytest.raises(ConfigError, match="unknown LRP preset 'epsilon_plus_flatt'") as error:
        relprop.explain(mlp, x, method="lrp", preset="epsilon_plus_flatt")
    for name in PRESETS:
        assert name in str(error.value)


def test_preset_with_missing_bounds_says_what_to_pass(cnn) -> None:
    with pytest.raises(ConfigError, match="low= and high="):
        relprop.explain(cnn, torch.zeros(1, 2, 8, 8, dtype=torch.float64), method="lrp", preset="dtd")


@pytest.mark.parametrize(("target", "pattern"), [
    (3, "out of range.*3 outputs"),
    (-1, "out of range"),
    (torch.tensor([0, 3]), "out of range"),
    (torch.tensor([0.0, 1.0]), "integer"),
    (torch.tensor([0, 1, 2]), r"shape \(2,\)"),
    (torch.tensor([[0], [1], [0]]), r"must be \(2, k\)"),
    (torch.tensor([[0, 3], [1, 1]]), "out of range"),
    ("some", "'all'"),
    (1.0, "int, a LongTensor"),
    (True, "int, a LongTensor"),
])
def test_bad_target(mlp, x, target: object, pattern: str) -> None:
    with pytest.raises(ExplanationError, match=pattern):
        relprop.explain(mlp, x, target, method="gradient")


def test_good_targets(mlp, x) -> None:
    argmax = relprop.explain(mlp, x, method="gradient")
    assert torch.equal(argmax.target, mlp(x).argmax(1))
    as_int = relprop.explain(mlp, x, 1, method="gradient")
    as_int32 = relprop.explain(mlp, x, torch.tensor([1, 1], dtype=torch.int32), method="gradient")
    assert as_int.target.dtype == torch.long and torch.equal(as_int.relevance, as_int32.relevance)
    assert torch.equal(as_int.score, mlp(x)[:, 1].detach())


@pytest.mark.parametrize("method", ["gradient", "lrp", "integrated_gradients"])
def test_targets_as_lists_and_numpy_arrays_are_the_tensor_targets(mlp, x, method: str) -> None:
    """Classes given as Captum takes them (a list, a numpy array, a numpy integer) explain what the tensor does."""
    np = pytest.importorskip("numpy")
    one = relprop.explain(mlp, x, torch.tensor([1, 2]), method=method)
    for target in ([1, 2], np.array([1, 2]), np.array([1, 2], dtype=np.int32), np.array([1, 2], dtype=np.uint8)):
        same = relprop.explain(mlp, x, target, method=method)
        assert torch.equal(same.relevance, one.relevance) and torch.equal(same.target, one.target)
    as_int = relprop.explain(mlp, x, 2, method=method)
    for target in (np.int64(2), torch.tensor(2)):
        assert torch.equal(relprop.explain(mlp, x, target, method=method).relevance, as_int.relevance)
    several = relprop.explain(mlp, x, torch.tensor([[0, 1], [2, 0]]), method=method)
    assert torch.equal(relprop.explain(mlp, x, [[0, 1], [2, 0]], method=method).relevance, several.relevance)


@pytest.mark.parametrize(("target", "pattern"), [
    ([1.0, 2.0], "integer"),
    ([0, 1, 2], r"shape \(2,\)"),
    ([[1], [2, 0]], "int, a LongTensor"),
    ([0, 3], "out of range"),
    ((1, 2), "int, a LongTensor"),
])
def test_bad_list_targets(mlp, x, target: object, pattern: str) -> None:
    with pytest.raises(ExplanationError, match=pattern):
        relprop.explain(mlp, x, target, method="gradient")


@pytest.mark.parametrize("function", [relprop.methods.gradient, relprop.methods.guided_backprop, relprop.methods.lrp,
                                      relprop.methods.integrated_gradients, relprop.methods.smoothgrad])
def test_building_blocks_check_their_targets(mlp, x, function) -> None:
    """The methods called directly take an int or a list as well as a LongTensor, and a target that does not fit
    the batch or the model is an error, not a relevance of zeros (a tensor of 3 classes for 2 samples used to be
    repeated 0 times) or an indexing error from torch."""
    def relevance(target: object) -> Tensor:
        torch.manual_seed(0)  # SmoothGrad's noise
        result = function(mlp, x, target)
        return result.relevance if hasattr(result, "relevance") else result

    tensor = relevance(torch.tensor([2, 2]))
    assert tensor.abs().sum() > 0
    assert torch.equal(relevance(2), tensor) and torch.equal(relevance([2, 2]), tensor)
    with pytest.raises(ExplanationError, match="3 classes for a model output of"):
        relevance(torch.tensor([1, 2, 0]))
    with pytest.raises(ExplanationError, match="out of range"):
        relevance(torch.tensor([5, 0]))


@pytest.mark.parametrize(("bad", "pattern"), [
    (torch.randn(6, dtype=torch.float64), r"batched.*\(6,\).*unsqueeze"),
    (torch.zeros(0, 6, dtype=torch.float64), "empty batch"),
    (torch.tensor([[float("nan")] * 6], dtype=torch.float64), "NaN or infinite"),
    (torch.tensor([[0.0, float("inf")] * 3], dtype=torch.float64), "NaN or infinite"),
    (torch.zeros(2, 6, dtype=torch.long), "token embedding.*has 0 nn.Embedding"),
    (torch.zeros(2, 6, dtype=torch.bool), "dtype torch.bool"),
    (torch.zeros(2, 6, dtype=torch.complex128), "dtype torch.complex128"),
    ([[0.0] * 6], "torch.Tensor"),
])
def test_bad_input(mlp, bad: object, pattern: str) -> None:
    with pytest.raises(ExplanationError, match=pattern):
        relprop.explain(mlp, bad, method="gradient")  # type: ignore[arg-type]


@pytest.mark.parametrize("model", [lambda x: x, "resnet18", None])
def test_a_model_that_is_no_module(x, model: object) -> None:
    """A function or a name was an AttributeError from inside relprop's lock ('named_modules')."""
    with pytest.raises(ConfigError, match=f"model must be a torch.nn.Module, got {type(model).__name__}"):
        relprop.explain(model, x, method="gradient")  # type: ignore[arg-type]


def test_model_in_training_mode(mlp, x) -> None:
    mlp.train()
    with pytest.raises(ExplanationError, match="training mode.*eval()"):
        relprop.explain(mlp, x)


@pytest.mark.parametrize("method", ["gradient", "lrp", "occlusion"])
def test_wrong_input_shape_names_the_shape(mlp, method: str) -> None:
    with pytest.raises(ExplanationError, match=re.escape("shape (2, 5)")):
        relprop.explain(mlp, torch.randn(2, 5, dtype=torch.float64), method=method)


# ---------------------------------------------------------------- models LRP cannot explain as they are


class _WithLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin, self.relu = nn.Linear(6, 3), nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.lin(x))


def test_uncovered_module_names_module_and_fix(x) -> None:
    """A linear layer needs a z-rule of the user's choosing: a RuleMap without one names the layer and the fix."""
    model = _WithLinear().double().eval()
    with pytest.raises(ExplanationError, match="'lin' \\(Linear\\).*rules.Epsilon"):
        relprop.explain(model, x, method="lrp", rule_map=RuleMap([(nn.ReLU, rules.Pass())]))
    assert relprop.explain(model, x, method="gradient").relevance.shape == x.shape  # gradients need no rule


class _Bilinear(nn.Module):
    """A module with its own parameter and no rule: transparent, its einsum gets the product rule."""

    def __init__(self) -> None:
        super().__init__()
        self.form = nn.Parameter(torch.randn(3, 6, 6))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bi,kij,bj->bk", x, self.form, x)


def test_module_without_rule_is_transparent(x) -> None:
    """x^T A x: the two factors on the relevance path share each output's relevance equally (uniform rule)."""
    model = _Bilinear().double().eval()
    explanation = relprop.explain(model, x, method="lrp", preset="epsilon", stabilizer=1e-12)
    assert torch.allclose(explanation.relevance.sum(1), explanation.score, rtol=1e-8, atol=0)


class _Residual(nn.Module):
    """``out(x + relu(lin(x)))``, functional or with a Sum module; no biases."""

    def __init__(self, add: nn.Module | None = None) -> None:
        super().__init__()
        self.lin, self.relu, self.add = nn.Linear(6, 6, bias=False), nn.ReLU(), add
        self.out = nn.Linear(6, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        branch = self.relu(self.lin(x))
        return self.out(x + branch if self.add is None else self.add(x, branch))


class _Uses(nn.Module):
    """Linear, ReLU, then ``op(self, h)`` (``self.w`` a parameter it may use), then Linear: an op on the path."""

    def __init__(self, op: Any) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.op = op
        self.a, self.b = nn.Linear(6, 4, bias=False), nn.Linear(4, 3, bias=False)
        self.w = nn.Parameter(torch.randn(4, 4) / 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.op(self, torch.relu(self.a(x))))  # type: ignore[no-any-return]


_ADDED = {"sum": lambda m, h: h + h @ m.w, "addmm": lambda m, h: torch.addmm(h, h, m.w),
          "linear": lambda m, h: torch.nn.functional.linear(h, m.w.T, h),
          "baddbmm": lambda m, h: torch.baddbmm(h[:, None], h[:, None], m.w.expand(len(h), 4, 4))[:, 0]}


@pytest.mark.parametrize("form", ["addmm", "linear", "baddbmm"])
@pytest.mark.parametrize("preset", ["epsilon", "attnlrp"])
def test_a_path_term_added_to_a_product_keeps_its_share(x, form: str, preset: str) -> None:
    """``addmm(h, h, W)`` is ``h + h @ W``: the added term is a summand, not a second factor of the product (the
    equal split among the path operands gave each half, and half the relevance was lost)."""
    sum_form = _Uses(_ADDED["sum"]).double().eval()
    fused = _Uses(_ADDED[form]).double().eval()
    options = {"epsilon": 1e-12, "stabilizer": 1e-12}
    expected = relprop.explain(sum_form, x, 0, method="lrp", preset=preset, **options)
    got = relprop.explain(fused, x, 0, method="lrp", preset=preset, **options)
    torch.testing.assert_close(got.relevance, expected.relevance, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got.details["conservation_gap"], torch.zeros(2, dtype=torch.float64), atol=1e-9,
                               rtol=0)


@pytest.mark.parametrize("op", [torch.nn.functional.logsigmoid, lambda h: torch.nn.functional.threshold(h, 0.1, 0.0),
                                lambda h: torch.nn.functional.threshold(h, 0.1, 0.0, inplace=True)],
                         ids=["logsigmoid", "threshold", "threshold_inplace"])
def test_activations_under_their_torch_names_pass_relevance(x, op: Any) -> None:
    """F.logsigmoid and F.threshold call torch's log_sigmoid and _threshold: activations, as the list meant."""
    model = _Uses(lambda m, h: op(h)).double().eval()
    explanation = relprop.explain(model, x, 0, method="lrp", preset="epsilon", epsilon=1e-12)
    torch.testing.assert_close(explanation.details["conservation_gap"], torch.zeros(2, dtype=torch.float64),
                               atol=1e-9, rtol=0)


@pytest.mark.parametrize("op", [lambda h: torch.div(h, 2, rounding_mode="floor"),
                                lambda h: h.div(2, rounding_mode="trunc")], ids=["floor", "trunc"])
def test_rounding_division_on_the_path_is_refused(x, op: Any) -> None:
    """A step function, as x // 2 is; it used to pass all relevance as a product with a constant."""
    with pytest.raises(ExplanationError, match="rounding_mode=.* rounds a tensor on the relevance path"):
        relprop.explain(_Uses(lambda m, h: op(h)).double().eval(), x, 0, method="lrp", preset="epsilon")


@pytest.mark.parametrize(("op", "fix"), [
    (lambda m, h: torch.clamp(h, min=h * 0.5), r"write torch.maximum\(x, y\) or torch.minimum\(x, y\)"),
    (lambda m, h: h.detach(), r"does not depend on the explained input: a .detach\(\), torch.no_grad\(\)"),
], ids=["clamp_to_a_path_bound", "detached"])
def test_errors_say_what_to_write_instead(x, op: Any, fix: str) -> None:
    with pytest.raises(ExplanationError, match=fix):
        relprop.explain(_Uses(op).double().eval(), x, 0, method="lrp", preset="epsilon")


def test_functional_residual_equals_sum_module_and_conserves(x) -> None:
    functional = _Residual().double().eval()
    model = _Residual(Sum()).double().eval()
    model.load_state_dict(functional.state_dict())
    explanation = relprop.explain(model, x, method="lrp", preset="epsilon", epsilon=1e-12, stabilizer=1e-12)
    assert torch.equal(explanation.output, functional(x).detach())
    assert torch.allclose(explanation.relevance.sum(1), explanation.score, rtol=1e-9, atol=0)
    assert bool((explanation.details["conservation_gap"].abs() < 1e-9).all())
    plain = relprop.explain(functional, x, method="lrp", preset="epsilon", epsilon=1e-12, stabilizer=1e-12)
    assert torch.equal(plain.relevance, explanation.relevance)


class _LSTMClassifier(nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.lstm, self.out = nn.LSTM(6, 5, batch_first=True, bias=bias), nn.Linear(5, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.lstm(x)[0][:, -1])  # (batch, hidden) at the last step


def test_stock_lstm_is_never_explained_silently() -> None:
    """A stock nn.LSTM hides its gates: without the recurrent canonizer LRP refuses it; the presets apply
    ExplicitRecurrent, and then a bias-free LSTM conserves (gates take no relevance) and the model is untouched."""
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = _LSTMClassifier(bias=False).double().eval()
    x = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    without = RuleMap([(LINEAR_TYPES, rules.Epsilon())], canonizers=(MergeBatchNorm(),))
    with pytest.raises(ExplanationError, match="lstm"):
        relprop.explain(model, x, method="lrp", rule_map=without)

    state = {k: v.clone() for k, v in model.state_dict().items()}
    explanation = relprop.explain(model, x, method="lrp", preset="epsilon", epsilon=1e-12, stabilizer=1e-12)
    assert explanation.relevance.shape == x.shape
    assert torch.allclose(explanation.relevance.sum((1, 2)), explanation.score, rtol=1e-8, atol=0)
    assert [name for name, _ in model.named_modules()] == ["", "lstm", "out"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert relprop.explain(model, x, method="gradient").relevance.shape == x.shape


# ---------------------------------------------------------------- the Explanation result


class _TokenClassifier(nn.Module):
    """Embedding -> Conv1d over positions -> ReLU -> max over time -> Linear; no biases."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(11, 4)
        self.conv, self.relu = nn.Conv1d(4, 5, 2, bias=False), nn.ReLU()
        self.pool, self.out = nn.AdaptiveMaxPool1d(1), nn.Linear(5, 3, bias=False)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embedding(ids).transpose(1, 2)  # (batch, embedding, tokens)
        return self.out(self.pool(self.relu(self.conv(h))).flatten(1))


@pytest.mark.parametrize("method", ["lrp", "gradient_x_input", "integrated_gradients"])
def test_embedding_inputs_give_per_token_relevance(method: str) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _TokenClassifier().double().eval()
    ids = torch.tensor([[1, 4, 2, 9, 3], [0, 0, 7, 7, 10]])
    explanation = relprop.explain(model, ids, method=method)
    per_dimension = explanation.details["embedding_relevance"]
    assert explanation.relevance.shape == (2, 5) and per_dimension.shape == (2, 5, 4)
    assert torch.allclose(explanation.relevance, per_dimension.sum(-1), rtol=1e-12, atol=0)
    assert torch.equal(explanation.output, model(ids).detach())
    embedded = model.embedding(ids).detach().requires_grad_()
    if method == "gradient_x_input":
        (grad,) = torch.autograd.grad(model.out(model.pool(model.relu(model.conv(embedded.transpose(1, 2))))
                                                .flatten(1)).gather(1, explanation.target[:, None]).sum(), embedded)
        assert torch.allclose(per_dimension, grad * embedded, rtol=1e-12, atol=1e-15)
    if method == "lrp":  # bias-free ReLU net: the token relevances add up to the logit
        assert torch.allclose(explanation.relevance.sum(1), explanation.score, rtol=1e-5, atol=0)
    assert torch.allclose(explanation.per_step, explanation.relevance, rtol=1e-12, atol=0)


def test_a_get_input_embeddings_that_raises_falls_back_to_the_one_embedding() -> None:
    """A Hugging Face model without a token embedding raises NotImplementedError from get_input_embeddings (was a
    crash); relprop looks for the model's one nn.Embedding instead."""

    class Raising(_TokenClassifier):
        def get_input_embeddings(self) -> nn.Module:
            raise NotImplementedError("not auto-handled")

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model, plain = Raising().double().eval(), _TokenClassifier().double().eval()
    plain.load_state_dict(model.state_dict())
    ids = torch.tensor([[1, 4, 2, 9, 3]])
    assert torch.equal(relprop.explain(model, ids).relevance, relprop.explain(plain, ids).relevance)


def test_an_embedding_that_returns_no_tensor_is_refused() -> None:
    """A quantised embedding (I-BERT's) returns the embeddings and their scale: a clear refusal, not a crash."""

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding, self.out = nn.Embedding(11, 4), nn.Linear(4, 2)

        def forward(self, ids: Tensor) -> Tensor:
            return self.out(self.embedding(ids).mean(1))  # type: ignore[no-any-return]

    model = Scaled().eval()
    model.embedding.register_forward_hook(lambda module, args, output: (output, torch.ones(())))
    with pytest.raises(relprop.ExplanationError, match="returns tuple, not a tensor of embedding vectors"):
        relprop.explain(model, torch.tensor([[1, 2, 3]]))
    for method in ("deeplift", "integrated_gradients"):  # a baseline of ids was embedded first: an AttributeError
        with pytest.raises(relprop.ExplanationError, match="returns tuple, not a tensor of embedding vectors"):
            relprop.explain(model, torch.tensor([[1, 2, 3]]), method=method,
                            baseline=torch.zeros(1, 3, dtype=torch.long))


def test_explanation_is_frozen(mlp, x) -> None:
    explanation = relprop.explain(mlp, x, method="lrp")
    with pytest.raises(dataclasses.FrozenInstanceError):
        explanation.relevance = torch.zeros_like(x)  # type: ignore[misc]
    assert explanation.method == "lrp" and explanation.output.shape == (2, 3) and explanation.target.shape == (2,)
    assert not explanation.relevance.requires_grad and not explanation.output.requires_grad


def test_lrp_results_carry_no_graph(mlp, x) -> None:
    explanation = relprop.explain(mlp, x, method="lrp")
    assert not explanation.details["conservation_gap"].requires_grad
    assert not lrp(mlp, x, explanation.target).requires_grad


def test_per_step_sums_over_the_rest() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double().eval()
    x = torch.randn(2, 4, 3, dtype=torch.float64)  # (batch, steps, features)
    explanation = relprop.explain(model, x, method="gradient_x_input")
    assert explanation.per_step.shape == (2, 4)
    assert torch.allclose(explanation.per_step, explanation.relevance.sum(-1), rtol=1e-12, atol=0)


def test_integrated_gradients_reports_completeness_gap(mlp, x) -> None:
    baseline = torch.full_like(x, 0.3)
    explanation = relprop.explain(mlp, x, 2, method="integrated_gradients", baseline=baseline, steps=16)
    gap = explanation.details["completeness_gap"]
    expected = explanation.relevance.sum(1) - (mlp(x)[:, 2] - mlp(baseline)[:, 2]).detach()
    assert gap.shape == (2,) and torch.allclose(gap, expected, rtol=1e-10, atol=1e-14)
    assert "conservation_gap" not in explanation.details


# ---------------------------------------------------------------- in-place ReLU


def _torchvision_style(inplace: bool) -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=inplace), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(16, 8), nn.ReLU(inplace=inplace), nn.Linear(8, 3),
        )
    return model.double().eval()


@pytest.mark.parametrize(("method", "options"), [
    ("lrp", {"preset": "epsilon_gamma_box", "low": -1.0, "high": 1.0}), ("lrp", {"preset": "epsilon_plus_flat"}),
    ("lrp", {"preset": "alpha2beta1"}), ("gradient", {}), ("guided_backprop", {}), ("deconvnet", {}),
    ("integrated_gradients", {"steps": 4}),
])
def test_inplace_relu_equals_non_inplace(method: str, options: dict[str, object]) -> None:
    x = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2 - 1
    inplace = relprop.explain(_torchvision_style(True), x, method=method, **options)
    plain = relprop.explain(_torchvision_style(False), x, method=method, **options)
    assert torch.equal(inplace.output, plain.output)
    assert torch.allclose(inplace.relevance, plain.relevance, rtol=1e-12, atol=1e-15)
    assert plain.relevance.abs().max() > 0


class _Doubling(nn.Module):
    """Writes into the tensor it is given (an input normalisation done in place)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.mul_(2.0))  # type: ignore[no-any-return]


class _HalfDoubling(_Doubling):
    """The same model out of place."""

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x * 2.0)  # type: ignore[no-any-return]


@pytest.mark.parametrize("method", ["gradient", "gradient_x_input", "integrated_gradients", "smoothgrad",
                                    "guided_backprop", "occlusion", "lrp"])
@pytest.mark.parametrize(("writer", "how"), [  # (from _Doubling's one layer, nothing is left to write into)
    *[(writer, how) for writer in ("relu_inplace", "mul_") for how in ("plain", "output_module", "model_kwargs")],
    ("relu_inplace", "from_layer")])
def test_a_model_that_writes_into_its_input_gets_a_copy(method: str, writer: str, how: str) -> None:
    """Such a model changed the caller's x (up to x 4), occlusion explained the changed input without an error, and
    the gradient methods failed with autograd's in-place error; then it was refused. Now the first plain pass (on a
    copy) finds it, and every pass after gives it a copy: it is explained as the same model out of place, with
    output=, from_layer= and model_kwargs (each a different way in), and the caller's x is kept."""
    torch.manual_seed(0)
    linear = nn.Linear(4, 3).double()
    if writer == "relu_inplace":
        model, twin = nn.Sequential(nn.ReLU(inplace=True), linear), nn.Sequential(nn.ReLU(), linear)
    else:
        model, twin = _Doubling().double(), _HalfDoubling().double()
        twin.linear = model.linear = linear
    model, twin = model.eval(), twin.eval()
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    kept = x.clone()
    options: dict[str, Any] = {"window": (1,)} if method == "occlusion" else {}
    last = "1" if writer == "relu_inplace" else "linear"
    if how == "output_module":
        options["output"], target = last, 0
    elif how == "from_layer":
        options["from_layer"], target = "0", 0
    else:
        target = 0
    if how == "model_kwargs":
        options["model_kwargs"], options["output"] = {}, lambda out: out
    got = relprop.explain(model, x, target, method=method, **options)
    assert torch.equal(x, kept)
    expected = relprop.explain(twin, x, target, method=method, **options)
    torch.testing.assert_close(got.relevance, expected.relevance, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got.output, expected.output, rtol=0, atol=0)


class _ScalingEmbeddings(nn.Module):
    """Scales its token embeddings in place, as CTRL does (``inputs_embeds *= sqrt(d_model)``), or out of place."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.in_place, self.embedding, self.out = in_place, nn.Embedding(11, 4), nn.Linear(4, 2)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embedding(ids)
        if self.in_place:
            h.mul_(2.0)
        else:
            h = h * 2.0
        return self.out(torch.tanh(h).mean(1))  # type: ignore[no-any-return]


@pytest.mark.parametrize(("method", "options"), [
    ("gradient", {}), ("integrated_gradients", {"steps": 4}), ("smoothgrad", {"samples": 3}), ("deeplift", {}),
    ("guided_backprop", {}), ("lrp", {"preset": "epsilon"}), ("feature_ablation", {}),
])
def test_a_model_scaling_its_embeddings_in_place_equals_the_out_of_place_one(method: str, options: dict[str, Any]
                                                                              ) -> None:
    """The embedded input reaches the model as a copy. Before, the model scaled relprop's own tensor: integrated
    gradients and guided backprop failed inside autograd, SmoothGrad and DeepLIFT gave other numbers silently."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model, written_out = _ScalingEmbeddings(True).double().eval(), _ScalingEmbeddings(False).double().eval()
    written_out.load_state_dict(model.state_dict())
    ids = torch.tensor([[1, 4, 2, 9, 3], [2, 2, 5, 7, 1]])
    got = relprop.explain(model, ids, 1, method=method, **options).relevance
    want = relprop.explain(written_out, ids, 1, method=method, **options).relevance
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- the scores of the explained forward pass


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lrp_takes_scores_and_targets_from_its_own_forward_pass(mlp, x, dtype: torch.dtype) -> None:
    """One forward pass for a single class per sample: the explained pass's scores are the model's, bit for bit."""
    model, inputs = mlp.to(dtype), x.to(dtype)
    counting = Counting(model)
    explanation = relprop.explain(counting, inputs, method="lrp", preset="epsilon_plus_flat")
    assert counting.calls == 1
    assert torch.equal(explanation.output, model(inputs).detach())
    assert torch.equal(explanation.target, model(inputs).argmax(1))
    assert torch.equal(explanation.relevance, lrp(model, inputs, model(inputs).argmax(1), preset="epsilon_plus_flat"))


@pytest.mark.parametrize(("target", "pattern"), [
    (3, "out of range.*3 outputs"),
    (torch.tensor([0, 3]), "out of range"),
    (torch.tensor([0.0, 1.0]), "integer"),
    (torch.tensor([0, 1, 2]), r"shape \(2,\)"),
    (True, "int, a LongTensor"),
])
def test_bad_target_for_lrp(mlp, x, target: object, pattern: str) -> None:
    with pytest.raises(ExplanationError, match=pattern):
        relprop.explain(mlp, x, target, method="lrp")


class _Masked(nn.Module):
    """A class masked out with a score of -inf (as constrained decoding does): the other scores can be explained."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.linear(x), torch.full((len(x), 1), -float("inf"))], 1)


def test_scores_from_a_plain_forward_pass_where_the_explained_one_differs() -> None:
    """A canonizer that rewrites the model (a stock LSTM as explicit cells) rounds differently, and a relayed
    identity turns an overflow (inf) into NaN: there the scores come from a plain forward pass, as the model gives
    them."""
    with torch.random.fork_rng():
        torch.manual_seed(5)
        lstm = _LSTMClassifier(bias=True).eval()
    x = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(6))
    counting = Counting(lstm)
    explanation = relprop.explain(counting, x, method="lrp", preset="epsilon")
    assert counting.calls == 2
    assert torch.equal(explanation.output, lstm(x).detach())

    overflow = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 1, bias=False)).eval()
    with torch.no_grad():
        overflow[0].weight.fill_(2.0)
        overflow[2].weight.fill_(1.0)
    with pytest.raises(ExplanationError, match=r"model's explained output holds NaN or infinite values for "
                                               r"samples \[0\] \(a plain forward pass gives them too\)"):
        relprop.explain(overflow, torch.tensor([[2e38]]), 0, method="lrp")  # (it was returned as inf)
    explanation = relprop.explain(_Masked().eval(), torch.randn(2, 2), 0, method="gradient")
    assert torch.isfinite(explanation.relevance).all() and torch.isinf(explanation.output[:, 2]).all()


def test_an_integer_seed_is_smoothgrads_noise_seed() -> None:
    """README lists seed among SmoothGrad's options, but explain's output seed took it: with a target it was
    refused, without one it failed with a TypeError ('int' object is not callable)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    default = relprop.explain(model, x, 1, method="smoothgrad").relevance  # seed 0
    assert torch.equal(relprop.explain(model, x, 1, method="smoothgrad", seed=0).relevance, default)
    assert torch.equal(relprop.explain(model, x, method="smoothgrad", seed=0).relevance,
                       relprop.explain(model, x, method="smoothgrad").relevance)
    assert not torch.equal(relprop.explain(model, x, 1, method="smoothgrad", seed=3).relevance, default)
    with pytest.raises(ConfigError, match="method 'gradient' draws nothing at random"):
        relprop.explain(model, x, 1, method="gradient", seed=3)
    # the noise is drawn in float64 and then cast: float32 gives the same explanation to float32's precision (its
    # own float32 draws differed by 63%)
    single = relprop.explain(model.float(), x.float(), 1, method="smoothgrad", seed=3).relevance
    double = relprop.explain(model.double(), x, 1, method="smoothgrad", seed=3).relevance
    torch.testing.assert_close(single.double(), double, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="got str"):
        relprop.explain(model, x, method="gradient", seed="3")


def test_vargrad_is_the_variance_of_smoothgrads_gradients() -> None:
    """Over the same noisy copies (the same seed): Var g = E[g^2] - E[g]^2, the squared variant minus the square of
    the plain one; for k targets at once as for each alone."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    options = {"method": "smoothgrad", "seed": 5, "samples": 6}
    variance = relprop.explain(model, x, 1, vargrad=True, **options).relevance
    mean, mean_square = (relprop.explain(model, x, 1, squared=s, **options).relevance for s in (False, True))
    torch.testing.assert_close(variance, mean_square - mean**2, rtol=1e-9, atol=1e-14)
    assert bool((variance > 0).all())
    every = relprop.explain(model, x, "all", vargrad=True, **options).relevance
    torch.testing.assert_close(every[:, 1], variance)
    with pytest.raises(ConfigError, match="squared=True .* or vargrad=True .* not both"):
        relprop.explain(model, x, 1, squared=True, vargrad=True, **options)


@pytest.mark.parametrize(("shape", "advice"), [((2, 5, 7), "out.logits[:, -1]"), ((2, 3, 4, 4), "out.mean((2, 3))"),
                                               ((2,), "out.unsqueeze(1)")])
def test_scores_of_another_shape_get_advice_for_that_shape(shape: tuple[int, ...], advice: str) -> None:
    """A language model's (batch, positions, vocabulary) logits are told how to pick the next-token scores."""
    model = (nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)) if len(shape) == 1 else
             nn.Sequential(nn.Linear(4, math.prod(shape[1:])), nn.Unflatten(1, shape[1:])))
    with pytest.raises(ExplanationError, match=re.escape(advice)):
        relprop.explain(model.eval(), torch.randn(2, 4), method="gradient")


class _StandardisedConv(nn.Conv2d):
    """Weight standardisation in its forward (timm's StdConv2d, BiT, NFNet): not nn.Conv2d's map of its weight."""

    def forward(self, x: Tensor) -> Tensor:
        weight = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / self.weight.std((1, 2, 3), keepdim=True)
        return self._conv_forward(x, weight, self.bias)


class _TypedLinear(nn.Linear):
    """A forward of its own that computes the stock map (timm's Linear only adds TorchScript typing)."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


@pytest.mark.parametrize("preset", ["epsilon", "epsilon_plus_flat", "alpha2beta1"])
def test_a_weight_standardised_convolution_is_explained_with_the_weight_it_uses(preset: str) -> None:
    """The z-rules computed with module.weight and the stock map: on a StdConv2d they explained the raw weights
    (conservation gap 1.2 under epsilon, a heatmap 7.7x off under epsilon_gamma_box), with no error; then it was
    refused. Now the rules take the weight its forward passes to F.conv2d: the heatmap of an nn.Conv2d holding the
    standardised weight. timm's BiT (resnetv2_*_bit) and NFNets use such layers."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    model = nn.Sequential(_StandardisedConv(3, 4, 3, bias=False), nn.ReLU(), nn.Flatten(), _TypedLinear(144, 3))
    model = model.double().eval()
    stock = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).double().eval()
    with torch.no_grad():
        weight = model[0].weight
        stock[0].weight.copy_((weight - weight.mean((1, 2, 3), keepdim=True)) / weight.std((1, 2, 3), keepdim=True))
    stock[3].load_state_dict(model[3].state_dict())  # the typed Linear computes the stock map
    got, want = (relprop.explain(m, x, 0, method="lrp", preset=preset).relevance for m in (model, stock))
    assert torch.allclose(got, want, rtol=0, atol=1e-12 * float(want.abs().max()))


class _ConvThenReLU(nn.Conv2d):
    """A forward that adds a nonlinearity: linear in neither the weight nor the input."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(super().forward(x))


class _TwoMaps(nn.Linear):
    """A forward that sums two linear maps: no one weight to give the rules."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight, self.bias) + nn.functional.linear(x, self.weight.flip(1))


class _CubedInput(nn.Linear):
    """A forward that cubes its input before the linear map: the rules would explain the cube."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x**3, self.weight, self.bias)


@pytest.mark.parametrize("layer", [_ConvThenReLU(3, 4, 3), _TwoMaps(48, 3), _CubedInput(48, 3)],
                         ids=["relu-after-the-call", "two-calls", "cubed-input"])
def test_a_layer_subclass_whose_forward_is_not_one_linear_call_is_refused(layer: nn.Module) -> None:
    """Only a forward that returns one F.linear/F.convNd call's result, on its input transformed linearly, can be
    run with a rule's weights: others are refused by the check, on both the Sequential plan and the general
    path."""
    torch.manual_seed(0)
    head: list[nn.Module] = [nn.Flatten(), nn.Linear(144, 3)] if isinstance(layer, nn.Conv2d) else [nn.Flatten(),
                                                                                                     layer]
    body = [layer, nn.ReLU()] if isinstance(layer, nn.Conv2d) else [nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(),
                                                                    nn.AvgPool2d(2)]
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    for container in (nn.Sequential, type("General", (nn.Sequential,), {})):
        model = container(*body, *head).double().eval()
        with pytest.raises(ExplanationError, match="and not one F.linear/F.convNd call either"):
            relprop.explain(model, x, 0, method="lrp", preset="epsilon_plus_flat")


def _same_per_call_model(padded: bool, seed: int = 0) -> nn.Sequential:
    """Conv (stride 2, "same" padding (0, 1) per axis on 8 x 8) -> batch norm -> ReLU -> Flatten -> Linear, the
    padding computed per call (timm's Conv2dSame), or an nn.ZeroPad2d before a stock Conv2d with the same weights."""
    torch.manual_seed(seed)
    conv = SamePerCallConv(3, 4, 3, stride=2)
    norm = nn.BatchNorm2d(4)
    with torch.no_grad():
        norm.running_mean.uniform_(-0.5, 0.5), norm.running_var.uniform_(0.5, 1.5), norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.3, 0.3)
    head = nn.Linear(64, 3)
    body: list[nn.Module] = [conv]
    if padded:
        stock = nn.Conv2d(3, 4, 3, stride=2)
        stock.load_state_dict(conv.state_dict())
        pads = same_pads((8, 8), conv.kernel_size, conv.stride, conv.dilation)
        body = [nn.ZeroPad2d([p for pair in reversed(pads) for p in pair]), stock]
    return nn.Sequential(*body, norm, nn.ReLU(), nn.Flatten(), head).double().eval()


@pytest.mark.parametrize("path", ["plan", "general"])
@pytest.mark.parametrize("rule", [rules.Epsilon(1e-6), rules.AlphaBeta(alpha=2.0, beta=1.0), rules.ZPlus()],
                         ids=["epsilon", "alpha2beta1", "zplus"])
def test_a_convolution_padding_per_call_is_explained_through_its_forward(rule: Any, path: str) -> None:
    """timm's Conv2dSame (the tf_ EfficientNets and MobileNets) was refused: nn.Conv2d's map of its weight is not
    its map. Run with the rule's weights, its own forward gives the relevance of a zero-pad module before a stock
    convolution (zero-padded inputs contribute nothing), also merged with the batch norm it feeds."""
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1
    rule_map = RuleMap([(nn.Conv2d, rule), (nn.Linear, rules.Epsilon(1e-6))])
    models = [_same_per_call_model(padded) for padded in (False, True)]
    if path == "general":
        models = [type("General", (nn.Sequential,), {})(*model) for model in models]
    own, padded = (lrp(model, x, torch.tensor([0, 2]), rule_map=rule_map) for model in models)
    assert torch.allclose(own, padded, rtol=0, atol=1e-12 * float(padded.abs().max()))
    # the batch norm folded into the layer by hand gives the same heatmap: so the pair was explained as one map
    conv, norm = models[0][0], models[0][1]
    folded = copy.deepcopy(models[0][:1] + models[0][2:])
    scale = norm.weight / (norm.running_var + norm.eps).sqrt()
    with torch.no_grad():
        folded[0].weight.mul_(scale[:, None, None, None])
        folded[0].bias.copy_((conv.bias - norm.running_mean) * scale + norm.bias)
    merged = lrp(folded, x, torch.tensor([0, 2]), rule_map=rule_map)
    assert torch.allclose(own, merged, rtol=0, atol=1e-12 * float(merged.abs().max()))


def test_a_convolution_padding_per_call_conserves_relevance() -> None:
    """Bias-free, under epsilon: the heatmap sums to the logit (the padding holds zeros, which take nothing)."""
    torch.manual_seed(3)
    model = nn.Sequential(SamePerCallConv(3, 4, 3, stride=2, bias=False), nn.ReLU(),
                          SamePerCallConv(4, 4, 3, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 3, bias=False)).double().eval()
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64) * 2 - 1
    logits = model(x).detach()
    explanation = relprop.explain(model, x, method="lrp", preset="epsilon", epsilon=1e-12)
    chosen = logits.gather(1, explanation.target[:, None])[:, 0]
    assert torch.allclose(explanation.relevance.sum((1, 2, 3)), chosen, rtol=1e-9, atol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_a_torchscript_module_is_refused_by_the_rule_methods() -> None:
    """Rules cannot be attached to a ScriptModule (no hooks) and the op guard cannot see inside it: a scripted
    residual branch lost 12% of the relevance without an error."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    model[2] = torch.jit.script(model[2])
    x = torch.randn(2, 4)
    for method in ("lrp", "guided_backprop"):
        with pytest.raises(ExplanationError, match="module '2' is a TorchScript module"):
            relprop.explain(model, x, 0, method=method)
    relprop.explain(model, x, 0, method="gradient")  # autograd runs through TorchScript


def _doubled_relu(h: torch.Tensor) -> torch.Tensor:
    return torch.relu(h) * 2.0


def _unseen(h: torch.Tensor) -> torch.Tensor:
    with torch._C.DisableTorchFunction():  # the op guard is a torch-function mode: it sees none of this
        return _doubled_relu(h)


class _HiddenBranch(nn.Module):
    """A residual block whose branch runs in ``branch``; ``where`` says where its result goes."""

    def __init__(self, branch: Any, where: str) -> None:
        super().__init__()
        self.first, self.last = nn.Linear(4, 4, bias=False), nn.Linear(4, 3, bias=False)  # conserving
        self.branch, self.where = branch, where
        self.scale = nn.Parameter(torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x) * self.scale.exp()  # a constant computed from a parameter: off the path, and allowed
        if self.where == "sum":
            return self.last(h + self.branch(h))
        if self.where == "module":
            return self.last(self.branch(h))
        if self.where == "output":
            return self.branch(self.last(h))
        return self.last(h) + self.branch(self.last(h)).detach()  # declared a constant


class _NewGelu(nn.Module):
    """GPT-2's tanh-GELU written as a formula, as Hugging Face's NewGELUActivation: its ops alone have no rule."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class _StrayHead(nn.Module):
    """Activation modules that are not part of the model: one made on every call (Hugging Face heads call
    ``ACT2FN[name](x)``) and one kept in a plain list, with a Linear there too; or all registered (``registered``)."""

    def __init__(self, registered: bool) -> None:
        super().__init__()
        self.first, self.last = nn.Linear(4, 6), nn.Linear(6, 3)
        self.registered = registered
        if registered:
            self.made, self.kept, self.middle = nn.Tanh(), _NewGelu(), nn.Linear(6, 6)
        else:
            self.plain = [_NewGelu(), nn.Linear(6, 6)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        made = self.made if self.registered else nn.Tanh()
        kept, middle = (self.kept, self.middle) if self.registered else self.plain
        return self.last(kept(middle(made(self.first(x)))))


def test_modules_called_in_forward_but_not_registered_get_their_rules() -> None:
    """An activation module made per call is not in the model's tree, so no rule was attached to it: its formula
    met the op guard (GPT-2's tanh-GELU: refused, big_bird's classification head under attnlrp). Such modules get
    the rule of their type, as registered ones do."""
    torch.manual_seed(0)
    registered = _StrayHead(registered=True).double().eval()
    stray = _StrayHead(registered=False).double().eval()
    stray.first, stray.last = registered.first, registered.last
    stray.plain[1].double().load_state_dict(registered.middle.state_dict())  # .double() does not reach a list
    x = torch.randn(3, 4, dtype=torch.float64)
    for preset in ("epsilon", "epsilon_plus_flat", "attnlrp"):
        rule_map = get_preset(preset).with_rules((_NewGelu, rules.Pass()))  # as a library activation
        want = relprop.explain(registered, x, 0, method="lrp", rule_map=rule_map).relevance
        got = relprop.explain(stray, x, 0, method="lrp", rule_map=rule_map).relevance
        assert torch.equal(got, want), preset
    hooks = torch.nn.modules.module
    assert not hooks._global_forward_hooks and not hooks._global_forward_pre_hooks  # removed again
    for model in (registered, stray):  # without a rule for it, the formula's ops meet the op guard, as before
        with pytest.raises(ExplanationError, match=r"at .*test_api.py:\d+"):
            relprop.explain(model, x, 0, method="lrp", preset="epsilon")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:FutureWarning")
@pytest.mark.parametrize("hide", ["script", "trace", "no_torch_function"])
def test_a_path_computed_where_the_op_guard_cannot_see_is_refused(hide: str) -> None:
    """A TorchScript function called in forward ran unseen by the op guard: on h + f(h) its result counted as a
    constant, and LRP-epsilon's conservation gap was 66% of the score in the median sample, without an error."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, dtype=torch.float64)
    branch = {"script": torch.jit.script(_doubled_relu),
              "trace": torch.jit.trace(_doubled_relu, torch.randn(2, 4, dtype=torch.float64)),
              "no_torch_function": _unseen}[hide]
    line = r" at .*test_api.py:\d+"
    users = {"sum": (f"an input of 'add'{line}",) * 2,  # what takes the hidden result, under LRP and guided backprop
             "module": (r"an input of module 'last' \(Linear\)", f"an input of 'linear'{line}"),  # GB rules ReLUs
             "output": ("the output of _HiddenBranch",) * 2}
    for where, user in users.items():
        model = _HiddenBranch(branch, where).double().eval()
        for method, taker in zip(("lrp", "guided_backprop"), user):
            with pytest.raises(ExplanationError, match=f"{taker} is computed from the explained input by code that "
                                                       "relprop cannot see"):
                relprop.explain(model, x, 0, method=method)
    seen = _HiddenBranch(_doubled_relu, "sum").double().eval()
    seen.load_state_dict(model.state_dict())
    gap = relprop.explain(seen, x, 0, method="lrp", preset="epsilon").details["conservation_gap"]
    assert gap.abs().max() < 1e-3  # the same model, its branch in plain PyTorch: explained, and conserving
    model = _HiddenBranch(branch, "detached").double().eval()
    for method in ("lrp", "guided_backprop"):
        assert relprop.explain(model, x, 0, method=method).relevance.shape == x.shape


@pytest.mark.parametrize(("of", "of_options"), [
    ("integrated_gradients", {"steps": 8, "baseline": 0.1}), ("lrp", {"preset": "epsilon_plus_flat"}),
    ("guided_backprop", {}),
])
def test_smoothgrad_of_another_method_is_its_mean_over_the_same_noisy_copies(of: str, of_options: dict) -> None:
    """The literal twin: the method on each noisy copy by itself (the copies drawn as smoothgrad draws them)."""
    from relprop.methods.gradient import noisy_copies

    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3)).double().eval()
    x = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = torch.tensor([0, 2, 1])
    options = {"noise": 0.2, "samples": 4, "seed": 3}
    got = relprop.explain(model, x, target, method="smoothgrad", of=of, of_options=of_options, **options)
    copies = noisy_copies(x, 0.2, 4, 3).reshape(4, *x.shape)
    each = torch.stack([relprop.explain(model, copy, target, method=of, **of_options).relevance for copy in copies])
    torch.testing.assert_close(got.relevance, each.mean(0), rtol=1e-10, atol=1e-13)
    squared = relprop.explain(model, x, target, method="smoothgrad", of=of, of_options=of_options, squared=True,
                              **options)
    torch.testing.assert_close(squared.relevance, (each**2).mean(0), rtol=1e-10, atol=1e-13)
    several = relprop.explain(model, x, torch.tensor([[0, 1]] * 3), method="smoothgrad", of=of,
                              of_options=of_options, **options)
    torch.testing.assert_close(several.relevance[:, 0], relprop.explain(
        model, x, 0, method="smoothgrad", of=of, of_options=of_options, **options).relevance)
    assert (got.relevance - relprop.explain(model, x, target, method=of, **of_options).relevance).abs().max() > 0


def test_smoothgrad_of_refuses_what_it_cannot_smooth() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double().eval()
    x = torch.rand(2, 4, dtype=torch.float64)
    for of, of_options, message in [("smoothgrad", {}, "takes another method"), ("nope", {}, "takes another method"),
                                    (["lrp"], {}, "takes another method"),
                                    ("gradient_x_input", {"layers": ["0"]}, "cannot ask for layers"),
                                    ("integrated_gradients", {"steps": 0}, "steps=0 must be a positive integer")]:
        with pytest.raises(ConfigError, match=message):
            relprop.explain(model, x, 0, method="smoothgrad", of=of, of_options=of_options)
    model[0].register_full_backward_hook(lambda *args: None)
    with pytest.raises(ExplanationError, match="backward hook"):
        relprop.explain(model, x, 0, method="smoothgrad", of="lrp")
    relprop.explain(model, x, 0, method="smoothgrad")  # the gradient's is fine with it


@pytest.mark.parametrize("at", ["output", "input"])
def test_gradient_shap_at_a_layer_matches_its_literal_twin(at: str) -> None:
    """``(a(x~) - a(b)) df/da`` at ``b + alpha (x~ - b)``, averaged over the same draws (one generator: the
    references' indices, the points, the noise), each draw run by itself with a hook at the layer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3)).double().eval()
    x = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pool = torch.rand(4, 2, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.3
    samples, noise, target = 5, 0.1, torch.tensor([0, 2, 1])
    got = relprop.explain(model, x, target, method="gradient_shap", baselines=pool, samples=samples, noise=noise,
                          seed=4, layers=["1"], layer_at=at)
    generator = torch.Generator().manual_seed(4)
    chosen = torch.randint(len(pool), (samples,), generator=generator)
    alphas = torch.rand(samples, generator=generator, dtype=torch.float64)
    eps = torch.randn((samples, 1, 2, 8, 8), generator=generator, dtype=torch.float64)

    def at_layer(inputs: Tensor) -> tuple[Tensor, Tensor]:
        seen: list[Tensor] = []
        if at == "output":
            handle = model[1].register_forward_hook(lambda m, a, out: seen.append(out))
        else:
            handle = model[1].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        try:
            output = model(inputs)
        finally:
            handle.remove()
        return seen[0], output

    total = torch.zeros(3, 4, 8, 8, dtype=torch.float64)
    for s in range(samples):
        reference, noisy = pool[chosen[s]].expand_as(x), x + noise * eps[s]
        point = (reference + alphas[s] * (noisy - reference)).requires_grad_()
        value, output = at_layer(point)
        (grad,) = torch.autograd.grad(output.gather(1, target[:, None]).sum(), value)
        with torch.no_grad():
            total += (at_layer(noisy)[0] - at_layer(reference)[0]) * grad
    torch.testing.assert_close(got.layers["1"], total / samples, rtol=1e-12, atol=1e-14)
    plain = relprop.explain(model, x, target, method="gradient_shap", baselines=pool, samples=samples, noise=noise,
                            seed=4)
    torch.testing.assert_close(got.relevance, plain.relevance, rtol=0, atol=0)  # the same draws at the input


def test_gradient_shap_at_a_module_that_runs_twice_gives_each_class_its_calls() -> None:
    """(batch, k, calls, ...) for k classes, as gradient x input gives it; each class as its own explanation."""
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(torch.relu(self.shared(torch.relu(self.shared(x)))))  # type: ignore[no-any-return]

    torch.manual_seed(0)
    model = Twice().double().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    options = {"method": "gradient_shap", "baselines": torch.randn(3, 4, dtype=torch.float64) * 0.1, "samples": 4,
               "layers": ["shared"]}
    both = relprop.explain(model, x, torch.tensor([[0, 2]] * 2), **options).layers["shared"]
    assert both.shape == relprop.explain(model, x, torch.tensor([[0, 2]] * 2), method="gradient_x_input",
                                         layers=["shared"]).layers["shared"].shape == (2, 2, 2, 4)
    for j, c in enumerate([0, 2]):
        torch.testing.assert_close(both[:, j], relprop.explain(model, x, c, **options).layers["shared"])


class _Caching(nn.Module):
    """Writes its hidden values into a buffer of its own in the forward pass, as a cache does, then reads them."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.linear, self.head = how, nn.Linear(4, 4), nn.Linear(4, 2)
        self.register_buffer("cache", torch.zeros(3, 4))

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear(x)
        if self.how == "copy_":
            self.cache[:len(x)].copy_(h)
        else:
            self.cache[:len(x)] = h
        return self.head(torch.relu(self.cache[:len(x)]))  # type: ignore[no-any-return]


@pytest.mark.parametrize("how", ["copy_", "setitem"])
@pytest.mark.parametrize("method", ["lrp", "gradient", "guided_backprop"])
def test_a_model_writing_into_its_own_buffer_keeps_no_autograd_history(how: str, method: str) -> None:
    """The buffer held the explained pass's autograd history after the call, which a plain forward pass does not
    leave: the next explanation refused it as computed by code relprop cannot see. It keeps the values the forward
    pass wrote, and explaining again gives the same result."""
    torch.manual_seed(0)
    model = _Caching(how).double().eval()
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    first = relprop.explain(model, x, 0, method=method)
    assert model.cache.grad_fn is None and not model.cache.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(model.cache, model.linear(x), rtol=0, atol=0)
    again = relprop.explain(model, x, 0, method=method)
    torch.testing.assert_close(again.relevance, first.relevance, rtol=0, atol=0)
