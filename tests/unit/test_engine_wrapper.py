"""The engine's per-call machinery: one wrapper per ruled module call (installed as the module's ``forward`` and
removed again), LRP-epsilon on linear layers in autograd's own form, and the cached walk of the module tree
(:func:`relprop.core.structure`)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop import rules
from relprop.composites import RuleMap
from relprop.core import Site, attached_rule, structure
from relprop.errors import ExplanationError


class _DefinitionEpsilon(rules.Epsilon):
    """Epsilon as its readable definition: a subclass gets neither the fast kernel nor autograd's form."""


class _Net(nn.Sequential):
    """A subclass of nn.Sequential runs the general path (wrappers and the op guard); an exact nn.Sequential of
    ruled modules runs :class:`relprop.core.SequentialPlan` (tests/unit/test_sequential_plan.py)."""


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return _Net(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double().eval()


def _cnn(bias: bool) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=bias), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2, bias=bias),
                         nn.Flatten(), nn.Linear(2 * 3 * 3, 3, bias=bias)).double().eval()


def _no_changes_left(model: nn.Module) -> None:
    for module in model.modules():
        assert "forward" not in vars(module), type(module).__name__
        assert not (module._forward_hooks or module._forward_pre_hooks), type(module).__name__
    assert torch._C._len_torch_function_stack() == 0


def test_epsilon_in_autograd_form_equals_its_definition() -> None:
    """Linear and Conv under Epsilon (autograd's form) against the rule's definition run as a Python relay, in float64,
    with and without bias, one target and all targets (the batched backward)."""
    x = torch.rand(3, 6, dtype=torch.float64) * 2 - 1
    image = torch.rand(2, 2, 7, 7, dtype=torch.float64) * 2 - 1
    for model, inputs in ((_mlp(), x), (_cnn(True), image), (_cnn(False), image)):
        for epsilon in (0.0, 1e-6, 0.25):
            fast = RuleMap([((nn.Linear, nn.Conv2d), rules.Epsilon(epsilon=epsilon))])
            slow = RuleMap([((nn.Linear, nn.Conv2d), _DefinitionEpsilon(epsilon=epsilon))])
            for target in (1, "all"):
                got = relprop.explain(model, inputs, target, rule_map=fast).relevance
                want = relprop.explain(model, inputs, target, rule_map=slow).relevance
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
        _no_changes_left(model)


def test_epsilon_without_bias_in_the_denominator_keeps_the_definition() -> None:
    rule = rules.Epsilon(bias=False)
    assert rule.output_denominator(nn.Linear(2, 2)) is None  # z differs from the layer's output
    assert rule.output_denominator(nn.Linear(2, 2, bias=False)) is not None
    assert rules.Epsilon().output_denominator(nn.Conv2d(1, 1, 3, padding="same")) is None
    assert rules.Epsilon().output_denominator(nn.Conv2d(1, 1, 3, padding_mode="reflect")) is None
    assert _DefinitionEpsilon().output_denominator(nn.Linear(2, 2)) is None

    class Scaled(nn.Linear):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x) * 2

    assert rules.Epsilon().output_denominator(Scaled(2, 2)) is None  # a subclass may compute something else


def test_the_wrapper_is_removed_also_after_an_error() -> None:
    class Fails(nn.Linear):
        def forward(self, x: Tensor) -> Tensor:
            raise RuntimeError("a bug inside a ruled module")

    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), Fails(4, 2)).double().eval()
    with pytest.raises((RuntimeError, ExplanationError), match="a bug inside a ruled module"):
        relprop.explain(model, torch.randn(2, 6, dtype=torch.float64), 0)
    _no_changes_left(model)


def test_an_instance_forward_of_the_user_runs_and_is_restored() -> None:
    model = _mlp()
    layer = model[2]
    calls = []

    def doubled(x: Tensor) -> Tensor:
        calls.append(x.shape)
        return nn.Linear.forward(layer, x) * 2

    layer.forward = doubled  # type: ignore[method-assign]
    x = torch.randn(2, 6, dtype=torch.float64)
    with torch.no_grad():
        scores = model(x)
    calls.clear()
    explanation = relprop.explain(model, x, 1)
    assert calls == [(2, 5)]  # the user's forward ran inside relprop's wrapper
    torch.testing.assert_close(explanation.output, scores)
    assert vars(layer)["forward"] is doubled
    del layer.forward
    _no_changes_left(model)


def test_a_rule_that_reruns_its_module_gets_the_module_itself() -> None:
    """In the backward pass (a rule running) the wrapper passes the call through: no second relay, no recursion."""
    seen = []

    class Rerun:
        def relevance(self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
                      ) -> tuple[Tensor | None, ...]:
            assert isinstance(site, nn.Module)
            again = site.forward(inputs[0])  # the wrapper is still installed here
            seen.append(again.requires_grad)
            torch.testing.assert_close(again, output)
            return (relevance_out * inputs[0] / (output + (output == 0).to(output)),)

    model = _mlp()
    rule_map = RuleMap([(nn.ReLU, Rerun()), (nn.Linear, rules.Epsilon())])
    relprop.explain(model, torch.randn(2, 6, dtype=torch.float64), 0, rule_map=rule_map)
    assert seen == [False, False]
    _no_changes_left(model)


def test_another_threads_forward_pass_runs_the_plain_module() -> None:
    model = _mlp()
    x = torch.randn(2, 6, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)
    results: list[Any] = []

    class Probe:
        def relevance(self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
                      ) -> tuple[Tensor | None, ...]:
            return (relevance_out,)

        def route(self, site: Site, inputs: tuple[Any, ...], output: Tensor) -> int | None:
            if not results:  # while the rules are attached in this thread
                thread = threading.Thread(target=lambda: results.append(model(x)))
                thread.start()
                thread.join()
                results.append(attached_rule(model[1]))
            return 0

    relprop.explain(model, x, 0, rule_map=RuleMap([(nn.ReLU, Probe()), (nn.Linear, rules.Epsilon())]))
    other, (rule, other_hooks) = results
    assert torch.equal(other.detach(), want) and type(other.grad_fn).__name__ == "AddmmBackward0"  # the plain layer
    assert isinstance(rule, Probe) and not other_hooks
    _no_changes_left(model)


def test_a_module_with_its_own_call_gets_hooks_instead_of_the_wrapper() -> None:
    class Called(nn.ReLU):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return super().__call__(*args, **kwargs)

    model = nn.Sequential(nn.Linear(6, 4), Called(), nn.Linear(4, 2)).double().eval()
    x = torch.randn(2, 6, dtype=torch.float64)
    hooked: list[int] = []

    class Counted(rules.Pass):
        def route(self, site: Site, inputs: tuple[Any, ...], output: Tensor) -> int | None:
            hooked.append(len(model[1]._forward_pre_hooks) + len(model[1]._forward_hooks))
            return super().route(site, inputs, output)

    got = relprop.explain(model, x, 1, rule_map=RuleMap([(nn.Linear, rules.Epsilon()), (Called, Counted())])).relevance
    assert hooked == [2]  # the pre-hook and the hook of the rule
    plain = nn.Sequential(model[0], nn.ReLU(), model[2]).eval()
    torch.testing.assert_close(got, relprop.explain(plain, x, 1, preset="epsilon").relevance, rtol=1e-12, atol=0)
    _no_changes_left(model)


def test_the_tree_walk_is_cached_until_the_tree_changes() -> None:
    model = _mlp()
    first = structure(model)
    assert structure(model) is first
    x = torch.randn(2, 6, dtype=torch.float64)
    before = relprop.explain(model, x, 1).relevance
    torch.manual_seed(5)
    model[2] = nn.Linear(5, 4).double()  # a module replaced: its parent's children changed
    assert structure(model) is not first
    fresh = nn.Sequential(*model).eval()
    after = relprop.explain(model, x, 1).relevance
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, relprop.explain(fresh, x, 1).relevance, rtol=0, atol=0)
    second = structure(model)
    model[0].extra = nn.Identity()  # a module added deep in the tree
    assert structure(model) is not second
    assert [name for name, _ in structure(model).named_modules(model)] == [name for name, _ in model.named_modules()]
    del model[0].extra


def test_a_module_given_a_new_class_is_assigned_again() -> None:
    class Quiet(nn.ReLU):
        """A ReLU subclass without a rule of its own."""

    model = _mlp()
    x = torch.randn(2, 6, dtype=torch.float64)
    relprop.explain(model, x, 1, rule_map=RuleMap([(nn.Linear, rules.Epsilon()), (Quiet, rules.Proportional())]))
    tree = structure(model)
    model[1].__class__ = Quiet
    assert structure(model) is not tree
    rule_map = RuleMap([(nn.Linear, rules.Epsilon()), (Quiet, rules.Proportional())])
    assert dict((name, type(rule)) for name, _, rule in rule_map.assign(model)[0])["1"] is rules.Proportional
    assert dict((name, type(rule)) for name, _, rule in rule_map.assign(model)[0])["3"] is rules.Pass


def test_hugging_face_style_output_is_explained_through_its_logits() -> None:
    class Output(dict[str, Tensor]):
        pass

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _mlp()

        def forward(self, x: Tensor) -> Output:
            return Output(logits=self.body(x))

    model = Wrapped().eval()
    x = torch.randn(2, 6, dtype=torch.float64)
    got = relprop.explain(model, x, 1)
    want = relprop.explain(model.body, x, 1)
    torch.testing.assert_close(got.relevance, want.relevance, rtol=0, atol=0)
    torch.testing.assert_close(got.output, want.output, rtol=0, atol=0)

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _mlp()

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            return self.body(x), x

    with pytest.raises(ExplanationError, match="not a tensor of scores"):
        relprop.explain(Pair().eval(), x, 1)
    torch.testing.assert_close(relprop.explain(Pair().eval(), x, 1, output=lambda r: r[0]).relevance,
                               want.relevance, rtol=0, atol=0)
