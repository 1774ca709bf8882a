"""An exact ``nn.Sequential`` of ruled modules runs :class:`relprop.core.SequentialPlan`: no wrappers, no op guard,
nothing attached to the model; made of ruled modules and reshapes only, it runs without autograd
(:class:`relprop.core.PlanTrace`). Its relevance must be bitwise that of the general path, and any call that the
plan could not run as the general path would (hooks, a user's ``forward``, a torch-function mode, layer records)
must take the general path."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import relprop
from relprop import rules
from relprop.composites import RuleMap, get_preset
from relprop.core import PlanTrace, SequentialPlan


class _General(nn.Sequential):
    """The same modules in a subclass of nn.Sequential: the general path (wrappers and the op guard)."""


def _mlp(dtype: torch.dtype = torch.float64, inplace: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 5), nn.ReLU(inplace=inplace), nn.Sequential(nn.Linear(5, 4), nn.Tanh()),
        nn.Linear(4, 4, bias=False), nn.Sigmoid(), nn.Linear(4, 3),
    ).to(dtype).eval()


def _conv() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2),
                         nn.AdaptiveAvgPool2d(1)).double().eval()


def _uses_plan(model: nn.Module, preset: str = "epsilon", **options: Any) -> bool:
    return get_preset(preset, **options).plan(model) is not None


def _both(model: nn.Sequential, x: Tensor, target: object, **options: Any) -> tuple[relprop.Explanation, ...]:
    """The explanation through the plan and through the general path (the same module objects)."""
    assert _uses_plan(model, options.get("preset", "epsilon"),
                      **{k: v for k, v in options.items() if k != "preset"})
    planned = relprop.explain(model, x, target, **options)
    general = relprop.explain(_General(*model).eval(), x, target, **options)
    return planned, general


@pytest.mark.parametrize("preset", ["epsilon", "epsilon_plus_flat", "zplus", "alpha2beta1", "epsilon_gamma_box"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("target", [1, "all"])
def test_the_plan_is_bitwise_the_general_path(preset: str, dtype: torch.dtype, target: object) -> None:
    options = {"low": -1.0, "high": 1.0} if preset == "epsilon_gamma_box" else {}
    x = torch.rand(3, 6, dtype=dtype) * 2 - 1
    planned, general = _both(_mlp(dtype), x, target, preset=preset, **options)
    assert torch.equal(planned.relevance, general.relevance)
    assert torch.equal(planned.details["conservation_gap"], general.details["conservation_gap"])
    assert torch.equal(planned.output, general.output) and torch.equal(planned.target, general.target)


def test_the_plan_covers_convolutions_pools_and_in_place_activations() -> None:
    image = torch.rand(2, 2, 7, 7, dtype=torch.float64) * 2 - 1
    model = _conv()
    flat = RuleMap([(nn.Conv2d, rules.Epsilon())])
    assert flat.plan(model) is not None
    # the model returns (batch, 4, 1, 1): the scores are selected by a seed of the output's shape
    seed = torch.zeros(2, 4, 1, 1, dtype=torch.float64)
    seed[:, 2] = 1.0
    planned = relprop.explain(model, image, seed=seed, rule_map=flat).relevance
    general = relprop.explain(_General(*model).eval(), image, seed=seed, rule_map=flat).relevance
    assert torch.equal(planned, general)

    x = torch.rand(3, 6, dtype=torch.float64) * 2 - 1
    planned_, general_ = _both(_mlp(inplace=True), x, 2)
    assert torch.equal(planned_.relevance, general_.relevance)


def test_the_plan_reads_its_modules_again_on_every_call() -> None:
    """What a rule reads of a module (the bias in Epsilon's denominator, ``inplace``) may change without the tree
    changing; the plan keeps the rule assignment only."""
    model = _mlp()
    x = torch.rand(2, 6, dtype=torch.float64) * 2 - 1
    before = relprop.explain(model, x, 0).relevance
    model[0].bias = None
    model[1].inplace = True
    planned, general = _both(model, x, 0)
    assert torch.equal(planned.relevance, general.relevance)
    assert not torch.allclose(planned.relevance, before)  # the layer without its bias


def test_the_plan_is_cached_per_structure_and_never_attaches_anything() -> None:
    model = _mlp()
    rule_map = get_preset("epsilon")
    plan = rule_map.plan(model)
    assert isinstance(plan, SequentialPlan) and rule_map.plan(model) is plan
    relprop.explain(model, torch.rand(2, 6, dtype=torch.float64), 0)
    for module in model.modules():
        assert "forward" not in vars(module) and not module._forward_hooks and not module._forward_pre_hooks
    model.append(nn.ReLU())
    replanned = rule_map.plan(model)
    assert replanned is not None and replanned is not plan and len(replanned.steps) == len(plan.steps) + 1


def test_a_cached_plan_does_not_keep_its_model_alive() -> None:
    model = _mlp()
    relprop.explain(model, torch.rand(2, 6, dtype=torch.float64), 0)
    assert get_preset("epsilon").plan(model) is not None
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None


def _cnn() -> nn.Sequential:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.3, inplace=True),
        nn.Conv2d(4, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Identity(), nn.Linear(4 * 1 * 1, 8),
        nn.BatchNorm1d(8), nn.ReLU(), nn.Unflatten(1, (2, 4)), nn.Flatten(), nn.Linear(8, 3),
    ).double()
    for norm in (model[1], model[10]):  # non-trivial running statistics for the merged batch norms
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("preset", ["epsilon", "epsilon_plus_flat", "zplus", "alpha2beta1", "epsilon_gamma_box"])
@pytest.mark.parametrize("target", [1, "all"])
def test_stock_children_without_a_rule_run_under_the_op_guard(preset: str, target: object) -> None:
    """Flatten, Unflatten, Identity, Dropout, max pooling and batch norms (merged into the layer before them) have
    no rule of their own: the plan runs them under the op guard, and the relevance stays bitwise the general path's."""
    options = {"low": -1.0, "high": 1.0} if preset == "epsilon_gamma_box" else {}
    image = torch.rand(3, 2, 6, 6, dtype=torch.float64) * 2 - 1
    planned, general = _both(_cnn(), image, target, preset=preset, **options)
    assert torch.equal(planned.relevance, general.relevance)
    assert torch.equal(planned.details["conservation_gap"], general.details["conservation_gap"])


def test_the_op_guard_still_refuses_inside_a_plan() -> None:
    model = _cnn()
    model[4].train()  # dropout in training mode would randomise the explanation
    assert _uses_plan(model)
    with pytest.raises(relprop.ExplanationError, match="dropout in training mode"):
        relprop.methods.lrp(model, torch.rand(2, 2, 6, 6, dtype=torch.float64), torch.tensor([0, 1]))


@pytest.mark.parametrize("child", [nn.LayerNorm(4), nn.Softmax(dim=1), nn.Upsample(scale_factor=1.0)],
                         ids=["layer_norm", "softmax", "upsample"])
def test_any_other_child_without_a_rule_takes_the_general_path(child: nn.Module) -> None:
    """Only the stock modules of _PLAN_OP_MODULES run under the guard inside a plan; any other module without a
    rule sends the model to the general path (which rules its ops, or refuses them)."""
    model = nn.Sequential(nn.Linear(6, 4), child, nn.Linear(4, 3)).double().eval()
    assert not _uses_plan(model)


def _hooked(kind: str) -> Callable[[nn.Sequential, list[str]], Any]:
    def on_child(model: nn.Sequential, seen: list[str]) -> Any:
        return model[2][0].register_forward_hook(lambda *_: seen.append(kind))

    def on_container(model: nn.Sequential, seen: list[str]) -> Any:
        return model.register_forward_pre_hook(lambda *_: seen.append(kind))

    def everywhere(model: nn.Sequential, seen: list[str]) -> Any:
        return nn.modules.module.register_module_forward_hook(lambda *_: seen.append(kind))

    def backward(model: nn.Sequential, seen: list[str]) -> Any:
        return model[0].register_full_backward_hook(lambda *_: seen.append(kind))

    return {"child": on_child, "container": on_container, "global": everywhere, "backward": backward}[kind]


@pytest.mark.parametrize("kind", ["child", "container", "global", "backward"])
def test_a_hook_sends_the_call_to_the_general_path(kind: str) -> None:
    model = _mlp()
    x = torch.rand(2, 6, dtype=torch.float64) * 2 - 1
    want = relprop.explain(model, x, 1).relevance
    seen: list[str] = []
    handle = _hooked(kind)(model, seen)
    try:
        assert not _uses_plan(model)
        if kind == "backward":  # refused: the hook would see relevance, and its Function carries a plain gradient
            with pytest.raises(relprop.ExplanationError, match=r"modules \['0'\] have backward hooks"):
                relprop.explain(model, x, 1)
        else:
            got = relprop.explain(model, x, 1).relevance
            assert seen and torch.equal(got, want)
    finally:
        handle.remove()
    assert _uses_plan(model)


def test_a_users_forward_a_mode_or_layer_records_send_the_call_to_the_general_path() -> None:
    model = _mlp()
    x = torch.rand(2, 6, dtype=torch.float64) * 2 - 1
    want = relprop.explain(model, x, 1).relevance

    calls: list[int] = []
    own = model.forward
    model.forward = lambda h: (calls.append(1), own(h))[1]  # type: ignore[method-assign]
    assert not _uses_plan(model)
    assert torch.equal(relprop.explain(model, x, 1).relevance, want) and calls
    del model.forward

    class Watch(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.names.append(getattr(func, "__name__", ""))
            return func(*args, **(kwargs or {}))

    with Watch() as watch:
        assert not _uses_plan(model)
        assert torch.equal(relprop.explain(model, x, 1).relevance, want)
    assert "linear" in watch.names  # the model ran inside the user's mode

    layered = relprop.explain(model, x, 1, layers=["2.0"])
    assert torch.equal(layered.relevance, want) and "2.0" in layered.layers


def test_predicate_selectors_are_never_planned() -> None:
    """A predicate may read anything, so its assignment is not cached, and neither is a plan."""
    model = _mlp()
    rule_map = RuleMap([(lambda name, module: isinstance(module, nn.Linear), rules.Epsilon())])
    assert rule_map.plan(model) is None
    x = torch.rand(2, 6, dtype=torch.float64)
    assert relprop.explain(model, x, 0, rule_map=rule_map).relevance.shape == x.shape


# ------------------------------------------------------------------------------------------------ graph-free plans
def _traced(model: nn.Sequential, x: Tensor, preset: str = "epsilon", **options: Any) -> bool:
    """Whether the plan of ``model`` runs graph-free on ``x``."""
    plan = get_preset(preset, **options).plan(model)
    return plan is not None and isinstance(plan.trace(x), PlanTrace)


def test_ruled_modules_and_reshapes_run_graph_free_and_everything_else_with_autograd() -> None:
    x = torch.rand(3, 6, dtype=torch.float64) * 2 - 1
    assert _traced(_mlp(), x) and _traced(_mlp(inplace=True), x)
    assert _traced(_conv(), torch.rand(2, 2, 7, 7, dtype=torch.float64), "epsilon_plus_flat")
    image = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    plan = get_preset("epsilon").plan(_cnn())
    assert plan is not None and not plan.graph_free and plan.trace(image) is None  # batch norms, max pooling


def _reshaped() -> nn.Sequential:
    """Ruled modules with reshapes and dropout (in eval mode) between them: the stock children that pass their
    input on."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Identity(), nn.Linear(48, 12),
        nn.ReLU(inplace=True), nn.Unflatten(1, (3, 4)), nn.Flatten(), nn.AlphaDropout(0.2), nn.Linear(12, 3),
    ).double().eval()


@pytest.mark.parametrize("preset", ["epsilon", "epsilon_plus_flat", "zplus", "alpha2beta1", "epsilon_gamma_box"])
@pytest.mark.parametrize("target", [1, "all"])
def test_a_graph_free_plan_passes_relevance_through_reshapes_bitwise(preset: str, target: object) -> None:
    options = {"low": -1.0, "high": 1.0} if preset == "epsilon_gamma_box" else {}
    image = torch.rand(3, 2, 6, 6, dtype=torch.float64) * 2 - 1
    assert _traced(_reshaped(), image, preset, **options)
    planned, general = _both(_reshaped(), image, target, preset=preset, **options)
    assert torch.equal(planned.relevance, general.relevance)
    assert torch.equal(planned.details["conservation_gap"], general.details["conservation_gap"])
    assert torch.equal(planned.output, general.output)


def test_dropout_in_training_mode_leaves_the_graph_free_plan_and_is_refused() -> None:
    model = _reshaped()
    model[3].train()
    image = torch.rand(2, 2, 6, 6, dtype=torch.float64)
    assert _uses_plan(model) and not _traced(model, image)
    with pytest.raises(relprop.ExplanationError, match="dropout in training mode"):
        relprop.methods.lrp(model, image, torch.tensor([0, 1]))


class _Doubled(nn.Module):
    """Doubles its input in place (without an ``inplace`` attribute that would say so) and returns it."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mul_(2.0)


def test_a_child_that_changes_its_input_in_place_sends_the_call_back_to_autograd() -> None:
    """The graph-free plan keeps each child's input for its rule; a child that changed it unannounced would corrupt
    the layer before it (Epsilon's denominator is that layer's output): the call runs with autograd instead, whose
    relayed outputs are fresh tensors, and the relevance is that of the general path."""
    rule_map = get_preset("epsilon").with_rules((_Doubled, rules.Pass()))
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 5, bias=False), _Doubled(), nn.Linear(5, 3, bias=False)).double().eval()
    x = torch.rand(3, 6, dtype=torch.float64) * 2 - 1
    plan = rule_map.plan(model)
    assert plan is not None and plan.graph_free and plan.trace(x) is None
    planned = relprop.explain(model, x, 1, rule_map=rule_map)
    general = relprop.explain(_General(*model).eval(), x, 1, rule_map=rule_map)
    assert torch.equal(planned.relevance, general.relevance)
    no_bias = torch.zeros(3, dtype=torch.float64)  # no bias absorbs relevance: conserved
    assert torch.allclose(planned.details["conservation_gap"], no_bias, atol=1e-5)


def test_a_graph_free_plan_checks_the_zb_bounds_as_the_general_path_does() -> None:
    model = _mlp()
    x = torch.rand(2, 6, dtype=torch.float64) * 4 - 2  # outside [-1, 1]
    for explained in (model, _General(*model).eval()):
        with pytest.raises(relprop.ConfigError, match="outside the zB bounds"):
            relprop.explain(explained, x, 0, preset="epsilon_gamma_box", low=-1.0, high=1.0)


class _Shaped:
    """A rule that gives the input ``result`` whatever its shape (None or a wrong shape: broken rules)."""

    def __init__(self, result: Callable[[Tensor], Tensor | None]) -> None:
        self.result = result

    def relevance(self, site: Any, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
                  ) -> tuple[Tensor | None, ...]:
        return (self.result(inputs[0]),)


def test_a_graph_free_plan_names_a_rule_that_returns_the_wrong_relevance() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double().eval()
    x = torch.rand(2, 6, dtype=torch.float64)
    wrong = get_preset("epsilon").with_rules((nn.Tanh, _Shaped(lambda t: t[:, :2])))  # type: ignore[arg-type]
    assert _traced(model, x) and wrong.plan(model) is not None
    with pytest.raises(relprop.ExplanationError, match=r"_Shaped returned relevance of shape \(2, 2\) for the input "
                                                       r"of Tanh, which has shape \(2, 5\)"):
        relprop.explain(model, x, 0, rule_map=wrong)
    cut = get_preset("epsilon").with_rules((nn.Tanh, _Shaped(lambda t: None)))  # type: ignore[arg-type]
    for explained in (model, _General(*model).eval()):
        with pytest.raises(relprop.ExplanationError, match="no relevance can reach the input"):
            relprop.explain(explained, x, 0, rule_map=cut)
