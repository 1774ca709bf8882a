"""Properties of relprop's rules and methods, checked with hypothesis over shapes, seeds and epsilon.

Conservation, sign, linearity, degenerate equivalences (LRP-0 = gradient x input, IG(1 step) = gradient x input,
SmoothGrad(noise 0) = gradient), batch independence, no side effects (hooks, parameters, modes) after success or
failure, and reversible canonizers.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import relprop
from relprop import rules
from relprop.canonizers import MergeBatchNorm
from relprop.composites import PRESETS
from relprop.core import ExplanationError
from relprop.methods import learn_patterns

seeds = st.integers(0, 2**16)
sizes = st.tuples(st.integers(2, 8), st.integers(3, 10), st.integers(3, 10), st.integers(2, 4))  # in, h1, h2, out
batches = st.integers(1, 4)


# ---------------------------------------------------------------- conservation


@given(seed=seeds, shape=sizes, batch=batches, epsilon=st.sampled_from([0.0, 1e-12]))
def test_lrp0_conserves_on_bias_free_relu_mlp(make_mlp, seed: int, shape: tuple[int, ...], batch: int,
                                               epsilon: float) -> None:
    model = make_mlp(shape, bias=False, seed=seed)
    x = torch.randn(batch, shape[0], generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    explanation = relprop.explain(model, x, method="lrp", preset="epsilon", epsilon=epsilon)
    gap = explanation.relevance.sum(1) - explanation.score
    assert torch.allclose(explanation.details["conservation_gap"], gap, rtol=0, atol=1e-12)
    assert bool((gap.abs() <= 1e-8 * (1 + explanation.score.abs())).all()), gap


@given(seed=seeds, pool=st.sampled_from(["avg", "max"]), dims=st.sampled_from([1, 2]))
def test_lrp0_and_zplus_conserve_on_bias_free_relu_cnn(make_cnn, seed: int, pool: str, dims: int) -> None:
    model = make_cnn(pool=pool, dims=dims, bias=False, seed=seed)
    x = torch.rand(3, 2, *(8,) * dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for preset, options in [("epsilon", {"epsilon": 0.0}), ("zplus", {})]:
        explanation = relprop.explain(model, x, method="lrp", preset=preset, stabilizer=1e-12, **options)
        score = explanation.score
        keep = score > 0  # z+ starts from the argmax logit; conservation needs it positive
        gap = (explanation.relevance.flatten(1).sum(1) - score)[keep]
        assert bool((gap.abs() <= 1e-8 * (1 + score[keep].abs())).all()), (preset, gap)


@given(seed=seeds, shape=sizes, batch=batches)
def test_zplus_conserves_and_is_nonnegative_on_positive_inputs(make_mlp, seed: int, shape: tuple[int, ...],
                                                               batch: int) -> None:
    """Bias-free: sum R = f(x); with biases (b+ joins the denominator) relevance is still >= 0 for f(x) > 0."""
    x = torch.rand(batch, shape[0], generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    model = make_mlp(shape, bias=False, seed=seed)
    explanation = relprop.explain(model, x, method="lrp", preset="zplus", stabilizer=1e-12)
    score, keep = explanation.score, explanation.score > 0
    gap = (explanation.relevance.sum(1) - score)[keep]
    assert bool((gap.abs() <= 1e-8 * (1 + score[keep].abs())).all()), gap

    biased = make_mlp(shape, bias=True, seed=seed)
    explanation = relprop.explain(biased, x, method="lrp", preset="zplus")
    keep = explanation.score > 0
    assert bool((explanation.relevance[keep] >= 0).all())


def _layer(kind: str, seed: int, n_in: int, n_out: int, bias: bool) -> tuple[nn.Module, Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = nn.Linear(n_in, n_out, bias=bias) if kind == "linear" else nn.Conv2d(n_in, n_out, 3, padding=1,
                                                                                     bias=bias)
        shape = (3, n_in) if kind == "linear" else (3, n_in, 5, 4)
        x = torch.randn(shape, dtype=torch.float64)
    return layer.double().eval(), x


def _apply(module: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    return F.linear(x, weight) if isinstance(module, nn.Linear) else module._conv_forward(x, weight, None)


PER_LAYER_RULES: list[tuple[str, Any]] = [
    ("lrp0", rules.Epsilon(epsilon=0.0)),
    ("zplus", rules.ZPlus(1e-30)),
    ("alpha1beta0", rules.AlphaBeta(1e-30, alpha=1.0, beta=0.0)),
    ("alpha2beta1", rules.AlphaBeta(1e-30, alpha=2.0, beta=1.0)),
    ("alpha1.5beta0.5", rules.AlphaBeta(1e-30, alpha=1.5, beta=0.5)),
    ("gamma", rules.Gamma(1e-30, gamma=0.5)),
    ("zbox", rules.ZBox(1e-30, low=-4.0, high=4.0)),
    ("wsquare", rules.WSquare(1e-30)),
    ("flat", rules.Flat(1e-30)),
]


def _healthy(rule: Any, module: nn.Module, x: Tensor) -> Tensor:
    """Outputs whose denominators are clearly non-zero (where conservation holds for the rule)."""
    w = module.weight
    z = _apply(module, x, w)
    p = _apply(module, x.clamp(min=0), w.clamp(min=0)) + _apply(module, x.clamp(max=0), w.clamp(max=0))
    n = z - p
    if isinstance(rule, rules.AlphaBeta):
        return (p > 1e-3) & ((n < -1e-3) if rule.beta else True)
    if isinstance(rule, rules.ZPlus):
        return p > 1e-3
    return z.abs() > 1e-3 if isinstance(rule, (rules.Epsilon, rules.Gamma)) else torch.ones_like(z, dtype=torch.bool)


@pytest.mark.parametrize("rule_id", [r[0] for r in PER_LAYER_RULES])
@given(seed=seeds, kind=st.sampled_from(["linear", "conv"]), n_in=st.integers(1, 6), n_out=st.integers(1, 5))
def test_rule_conserves_per_layer(rule_id: str, seed: int, kind: str, n_in: int, n_out: int) -> None:
    """sum_j R_j = sum_k R_k on bias-free layers, for outputs whose denominators are non-zero."""
    rule = dict(PER_LAYER_RULES)[rule_id]
    module, x = _layer(kind, seed, n_in, n_out, bias=False)
    output = module(x).detach()
    with torch.random.fork_rng():
        torch.manual_seed(seed + 7)
        relevance_out = torch.randn(output.shape, dtype=torch.float64) * _healthy(rule, module, x).detach()
    (relevance_in,) = rule.relevance(module, (x,), output, relevance_out)
    got, want = relevance_in.flatten(1).sum(1), relevance_out.flatten(1).sum(1)
    scale = relevance_in.abs().flatten(1).sum(1) + relevance_out.abs().flatten(1).sum(1)
    assert bool(((got - want).abs() <= 1e-10 * scale + 1e-300).all()), (got, want)


@given(seed=seeds, kind=st.sampled_from(["linear", "conv"]), epsilon=st.floats(1e-9, 10.0))
def test_epsilon_absorbs_exactly_its_share(seed: int, kind: str, epsilon: float) -> None:
    """Bias-free: sum_j R_j = sum_k R_k z_k / (z_k + eps sign(z_k)), the relevance the stabilizer does not absorb."""
    module, x = _layer(kind, seed, 4, 3, bias=False)
    output = module(x).detach()
    relevance_out = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (relevance_in,) = rules.Epsilon(epsilon=epsilon).relevance(module, (x,), output, relevance_out)
    kept = relevance_out * output / (output + epsilon * torch.where(output >= 0, 1.0, -1.0).to(output))
    got, want = relevance_in.flatten(1).sum(1), kept.flatten(1).sum(1)
    scale = relevance_in.abs().flatten(1).sum(1) + kept.abs().flatten(1).sum(1)
    assert bool(((got - want).abs() <= 1e-10 * scale).all()), (got, want)


# ---------------------------------------------------------------- rule identities and linearity


@given(seed=seeds, kind=st.sampled_from(["linear", "conv"]), bias=st.booleans(), n_in=st.integers(1, 6),
       n_out=st.integers(1, 5))
def test_alpha1beta0_equals_zplus(seed: int, kind: str, bias: bool, n_in: int, n_out: int) -> None:
    module, x = _layer(kind, seed, n_in, n_out, bias)
    output = module(x).detach()
    relevance_out = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (a,) = rules.AlphaBeta(alpha=1.0, beta=0.0).relevance(module, (x,), output, relevance_out)
    (b,) = rules.ZPlus().relevance(module, (x,), output, relevance_out)
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_alpha1beta0_preset_equals_zplus_preset(mlp, cnn) -> None:
    generator = torch.Generator().manual_seed(0)
    for model, shape in [(mlp, (3, 6)), (cnn, (3, 2, 8, 8))]:
        x = torch.randn(shape, generator=generator, dtype=torch.float64)
        a = relprop.explain(model, x, method="lrp", preset="alpha1beta0").relevance
        b = relprop.explain(model, x, method="lrp", preset="zplus").relevance
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


ALL_RULES = PER_LAYER_RULES + [("epsilon", rules.Epsilon()), ("zbox-bias", rules.ZBox()),
                               ("gamma-bias", rules.Gamma()), ("zplus-bias", rules.ZPlus())]


@pytest.mark.parametrize("rule_id", [r[0] for r in ALL_RULES])
@given(seed=seeds, kind=st.sampled_from(["linear", "conv"]), bias=st.booleans(),
       factor=st.floats(-4, 4).filter(lambda f: abs(f) > 1e-3))
def test_rule_is_linear_in_relevance(rule_id: str, seed: int, kind: str, bias: bool, factor: float) -> None:
    rule = dict(ALL_RULES)[rule_id]
    module, x = _layer(kind, seed, 3, 4, bias)
    output = module(x).detach()
    relevance_out = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (once,) = rule.relevance(module, (x,), output, relevance_out)
    (doubled,) = rule.relevance(module, (x,), output, 2 * relevance_out)
    (scaled,) = rule.relevance(module, (x,), output, factor * relevance_out)
    assert torch.allclose(doubled, 2 * once, rtol=1e-12, atol=1e-14)
    assert torch.allclose(scaled, factor * once, rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------- degenerate equivalences


@given(seed=seeds, model_kind=st.sampled_from(["mlp", "cnn-avg", "cnn-max"]), bias=st.booleans())
def test_lrp0_equals_gradient_x_input_on_relu_nets(make_mlp, make_cnn, seed: int, model_kind: str,
                                                   bias: bool) -> None:
    generator = torch.Generator().manual_seed(seed + 1)
    if model_kind == "mlp":
        model, x = make_mlp(bias=bias, seed=seed), torch.randn(3, 6, generator=generator, dtype=torch.float64)
    else:
        model = make_cnn(pool=model_kind[4:], bias=bias, seed=seed)
        x = torch.randn(3, 2, 8, 8, generator=generator, dtype=torch.float64)
    lrp0 = relprop.explain(model, x, method="lrp", preset="epsilon", epsilon=0.0, stabilizer=1e-30).relevance
    gxi = relprop.explain(model, x, method="gradient_x_input").relevance
    assert torch.allclose(lrp0, gxi, rtol=1e-9, atol=1e-12 * float(gxi.abs().max()))


@given(seed=seeds, shape=sizes, batch=batches)
def test_one_step_ig_with_zero_baseline_is_gradient_x_input(make_mlp, seed: int, shape: tuple[int, ...],
                                                            batch: int) -> None:
    model = make_mlp(shape, seed=seed, activation=nn.Tanh)
    x = torch.randn(batch, shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ig = relprop.explain(model, x, 0, method="integrated_gradients", steps=1, baseline=0.0).relevance
    gxi = relprop.explain(model, x, 0, method="gradient_x_input").relevance
    assert torch.allclose(ig, gxi, rtol=1e-12, atol=1e-15)


@given(seed=seeds, shape=sizes)
def test_ig_completeness_gap_shrinks_with_steps(make_mlp, seed: int, shape: tuple[int, ...]) -> None:
    """Right Riemann sums: gap(n) = c1 / n + O(1 / n^2), so |gap(64)| < |gap(4)|. A sample whose 4-step gap is an
    accidental cancellation of the two terms (it is then smaller than the 8-step gap) says nothing and is skipped
    (about 1 sample in 100)."""
    model = make_mlp(shape, seed=seed, activation=nn.Tanh)
    x = torch.randn(2, shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    gaps = {steps: relprop.explain(model, x, 0, method="integrated_gradients", steps=steps)
            .details["completeness_gap"].abs() for steps in (4, 8, 64)}
    regular = gaps[8] <= gaps[4]
    assert bool((gaps[64][regular] < gaps[4][regular]).all()), gaps


@given(seed=seeds, samples=st.integers(1, 5))
def test_smoothgrad_without_noise_is_gradient(make_cnn, seed: int, samples: int) -> None:
    model = make_cnn(seed=seed)
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    smooth = relprop.explain(model, x, 1, method="smoothgrad", noise=0.0, samples=samples).relevance
    assert torch.allclose(smooth, relprop.explain(model, x, 1, method="gradient").relevance, rtol=1e-12, atol=0)


# ---------------------------------------------------------------- batch independence


_QUADRANTS = (torch.arange(8).reshape(1, 1, 8, 1) // 4) * 2 + torch.arange(8).reshape(1, 1, 1, 8) // 4  # 4 groups


def _options(method: str) -> list[tuple[str, dict[str, Any]]]:
    if method == "lrp":
        bounds = {"low": -3.0, "high": 3.0}
        return [(f"lrp-{p}", {"preset": p, **(bounds if p in ("dtd", "epsilon_gamma_box") else {})})
                for p in sorted(PRESETS)]
    extra: dict[str, dict[str, Any]] = {
        "integrated_gradients": {"steps": 6, "baseline": 0.1}, "smoothgrad": {"noise": 0.0, "samples": 3},
        "occlusion": {"window": (1, 3, 3), "stride": 2},
        "grad_cam": {"layer": "2"}, "guided_grad_cam": {"layer": "2"},  # a (batch, 4, h, w) map in both models
        "deeplift_shap": {"baselines": torch.linspace(-0.5, 0.5, 2 * 2 * 8 * 8, dtype=torch.float64)
                          .reshape(2, 2, 8, 8)},
        "feature_ablation": {"feature_mask": _QUADRANTS}, "shapley_values": {"feature_mask": _QUADRANTS},
        "kernel_shap": {"feature_mask": _QUADRANTS}, "lime": {"feature_mask": _QUADRANTS, "samples": 32},
        "gradient_shap": {"baselines": torch.linspace(-0.5, 0.5, 2 * 2 * 8 * 8, dtype=torch.float64)
                          .reshape(2, 2, 8, 8), "samples": 3},
        "pattern_net": {"patterns": _LEARNED}, "pattern_attribution": {"patterns": _LEARNED},
    }
    return [(method, extra.get(method, {}))]


_LEARNED = "learned from the model explained"  # pattern methods: by learn_patterns, in the test


def _for(model: nn.Module, options: dict[str, Any]) -> dict[str, Any]:
    """The options with patterns learned from ``model`` (on 64 inputs in [-1, 1]) where they are asked for."""
    if options.get("patterns") is not _LEARNED:
        return options
    data = torch.rand(64, 2, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 - 1
    return {**options, "patterns": learn_patterns(model, data, show_progress=False)}


CASES = [case for name in sorted(relprop.METHODS) for case in [(name, *c) for c in _options(name)]]
# feature_permutation shuffles each group across the batch: the batch is what it explains with
PER_SAMPLE = [case for case in CASES if case[0] != "feature_permutation"]


@pytest.mark.parametrize(("method", "case_id", "options"), PER_SAMPLE, ids=[c[1] for c in PER_SAMPLE])
def test_batch_independence(cnn, make_cnn, method: str, case_id: str, options: dict[str, Any]) -> None:
    if options.get("patterns") is _LEARNED:  # average pooling has no pattern: max pooling
        cnn = make_cnn(pool="max")
    options = _for(cnn, options)
    x = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    target = torch.tensor([2, 0, 1])
    batched = relprop.explain(cnn, x, target, method=method, **options).relevance
    for i in range(len(x)):
        single = relprop.explain(cnn, x[i:i + 1], target[i:i + 1], method=method, **options).relevance
        assert torch.allclose(batched[i:i + 1], single, rtol=1e-9, atol=1e-13), (case_id, i)


def test_smoothgrad_with_noise_is_batch_independent(cnn) -> None:
    x = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batched = relprop.explain(cnn, x, 1, method="smoothgrad", noise=0.1, samples=4).relevance
    single = relprop.explain(cnn, x[1:2], 1, method="smoothgrad", noise=0.1, samples=4).relevance
    assert torch.allclose(batched[1:2], single, rtol=1e-9, atol=1e-13)


# ---------------------------------------------------------------- no side effects


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
               "_state_dict_hooks", "_load_state_dict_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "params": [(name, p, p.requires_grad) for name, p in model.named_parameters()],
        "training": [m.training for m in model.modules()],
        "attributes": [sorted(vars(m)) for m in model.modules()],
    }


def _assert_untouched(model: nn.Module, before: dict[str, Any]) -> None:
    for module in model.modules():
        for name in _HOOK_DICTS:
            assert not getattr(module, name, {}), f"{name} left on {type(module).__name__}"
    for name in _GLOBAL_HOOKS:
        assert not getattr(torch.nn.modules.module, name), name
    assert not torch.overrides._get_current_function_mode_stack(), "a TorchFunctionMode is still active"
    state = model.state_dict()
    assert state.keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(state[key], value), f"{key} changed"
    for (name, param, flag), (name_now, param_now) in zip(before["params"], model.named_parameters()):
        assert name == name_now and param is param_now and param.requires_grad == flag and param.grad is None, name
    assert [m.training for m in model.modules()] == before["training"]
    assert [sorted(vars(m)) for m in model.modules()] == before["attributes"]


class _Boom(nn.ReLU):
    """A ReLU (so every method covers it) that works in one plain forward pass (no grad) and raises in every other
    call: inside the method, with its hooks attached. explain's plain forward pass comes first, or (LRP, which
    takes the scores from its own forward pass) after the failure, to tell a model error from a bad input."""

    def __init__(self) -> None:
        super().__init__()
        self.calls, self.plain_done = 0, False

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if torch.is_grad_enabled() or self.plain_done:
            raise RuntimeError("boom in the middle of the forward pass")
        self.plain_done = True
        return super().forward(x)


def _with_batchnorm(boom: nn.Module | None = None, batch_norm: bool = True) -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        norm = nn.BatchNorm2d(4)
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2), norm.weight.data.uniform_(0.5, 2)
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), norm if batch_norm else nn.Identity(),
                              nn.ReLU(), boom or nn.Identity(),
                              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 3))
    return model.double().eval()


@pytest.mark.parametrize(("method", "case_id", "options"), CASES, ids=[c[1] for c in CASES])
def test_no_side_effects_after_success_and_failure(method: str, case_id: str, options: dict[str, Any]) -> None:
    x = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    batch_norm = options.get("patterns") is not _LEARNED  # a batch norm has no pattern: the model without it
    model = _with_batchnorm(batch_norm=batch_norm)
    options = _for(model, options)  # (the same names and weights in the failing model below)
    before = _snapshot(model)
    relprop.explain(model, x, method=method, **options)
    _assert_untouched(model, before)

    boom = _Boom()
    failing = _with_batchnorm(boom, batch_norm=batch_norm)
    before = _snapshot(failing)
    with pytest.raises(RuntimeError, match="boom"):  # the model's own error, with its own type and traceback
        relprop.explain(failing, x, method=method, **options)
    assert boom.calls >= 2, "the failure must happen inside the method, and explain's plain forward pass work"
    _assert_untouched(failing, before)


@pytest.mark.parametrize(("method", "case_id", "options"), CASES, ids=[c[1] for c in CASES])
def test_a_model_that_writes_into_its_input_is_explained_as_written(make_cnn, method: str, case_id: str,
                                                                    options: dict[str, Any]) -> None:
    """nn.ReLU(inplace=True) first (as torchvision's models have it after a stem) writes into the tensor the model
    is given. Every method explains it as the same model with the ReLU out of place, and the caller's x is kept."""
    layers = list(make_cnn(pool="max" if options.get("patterns") is _LEARNED else "avg"))
    writer, twin = nn.Sequential(nn.ReLU(inplace=True), *layers).eval(), nn.Sequential(nn.ReLU(), *layers).eval()
    options = _for(twin, options)
    x = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    kept = x.clone()
    got = relprop.explain(writer, x, 1, method=method, **options)
    assert torch.equal(x, kept), "the caller's input changed"
    expected = relprop.explain(twin, x, 1, method=method, **options)
    assert torch.equal(got.output, expected.output)
    torch.testing.assert_close(got.relevance, expected.relevance, rtol=1e-12, atol=1e-15)


class _Uncovered(nn.Module):
    """Linear + BatchNorm (merged while explaining), then something relprop refuses in the middle of the forward."""

    def __init__(self, refused: str) -> None:
        super().__init__()
        self.refused = refused
        self.block = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.out = nn.Linear(4, 2)
        self.block[1].running_mean.fill_(0.5), self.block[1].running_var.fill_(2.0)

    def forward(self, x: Tensor) -> Tensor:
        h = self.block(x)
        if self.refused == "cumsum":
            h = torch.cumsum(h, dim=1)
        elif self.refused == "softmax":
            h = torch.softmax(h, dim=1)
        else:
            h = h * x  # a product of two path tensors, neither a sigmoid gate
        return self.out(h)


@pytest.mark.parametrize("refused", ["cumsum", "softmax", "ungated-product"])
def test_no_side_effects_after_rule_errors(refused: str) -> None:
    """Errors raised by relprop itself in the middle of the LRP forward pass (ops without a rule)."""
    model = _Uncovered(refused).double().eval()
    before = _snapshot(model)
    with pytest.raises(ExplanationError):
        relprop.explain(model, torch.randn(2, 4, dtype=torch.float64), method="lrp")
    _assert_untouched(model, before)


# ---------------------------------------------------------------- canonizers


@given(seed=seeds, kind=st.sampled_from(["linear", "conv"]), bias=st.booleans(), affine=st.booleans())
def test_merge_batchnorm_is_exact_and_reversible(seed: int, kind: str, bias: bool, affine: bool) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "linear":
            model, x = nn.Sequential(nn.Linear(5, 4, bias=bias), nn.BatchNorm1d(4, affine=affine)), torch.randn(3, 5)
        else:
            model, x = (nn.Sequential(nn.Conv2d(2, 4, 3, bias=bias), nn.BatchNorm2d(4, affine=affine)),
                        torch.randn(3, 2, 5, 5))
        norm = model[1]
        norm.running_mean.normal_(), norm.running_var.uniform_(0.2, 3.0)
        if affine:
            norm.weight.data.normal_(), norm.bias.data.normal_()
    model, x = model.double().eval(), x.double()
    before_output, before = model(x).detach(), _snapshot(model)
    weight, had_bias = model[0].weight, model[0].bias is not None

    undo = MergeBatchNorm().apply(model)
    merged = model(x).detach()
    assert torch.allclose(merged, before_output, rtol=1e-10, atol=1e-12)
    assert torch.allclose(model[0](x), before_output, rtol=1e-10, atol=1e-12)  # the norm is now the identity
    undo()

    assert torch.equal(model(x), before_output)
    assert model[0].weight is weight and (model[0].bias is not None) == had_bias
    assert not hasattr(model[1], "_relprop_merged")
    _assert_untouched(model, before)


def test_lrp_through_batchnorm_equals_lrp_on_the_merged_model() -> None:
    """While explaining, the BatchNorm is merged: LRP sees one affine layer, and the model is restored after."""
    model = _with_batchnorm()
    x = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    before = _snapshot(model)
    got = relprop.explain(model, x, 0, method="lrp", preset="epsilon").relevance
    _assert_untouched(model, before)
    undo = MergeBatchNorm().apply(model)
    merged = nn.Sequential(model[0], model[2], model[4], model[5], model[6]).eval()
    want = relprop.explain(merged, x, 0, method="lrp", preset="epsilon").relevance
    undo()
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-14)
