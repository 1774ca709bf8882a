"""relprop.validate: what explain() refuses before it runs anything, one test per class of bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relprop
from relprop.composites import get_preset
from relprop.errors import ConfigError, ExplanationError


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    return model.double().eval()


def _x(low: float = -1.0, high: float = 1.0) -> Tensor:
    return torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * (high - low) + low


def test_a_submodule_in_training_mode_is_refused_before_the_model_runs() -> None:
    model = _cnn()
    model[1].train()
    statistics = (model[1].running_mean.clone(), model[1].running_var.clone(), model[1].num_batches_tracked.clone())
    for method in ("lrp", "gradient", "integrated_gradients"):
        with pytest.raises(ExplanationError, match=r"has 1 module in training mode \(1\) of type BatchNorm2d.*"
                                                   r"model\.eval\(\)"):
            relprop.explain(model, _x(), method=method)
    wrapper = nn.DataParallel(model.eval())  # a wrapper made after eval() is itself in training mode
    with pytest.raises(ExplanationError, match=r"DataParallel has 1 module in training mode \(DataParallel\) of "
                                               r"type DataParallel"):
        relprop.explain(wrapper, _x())
    relprop.explain(wrapper.eval(), _x())
    assert all(torch.equal(a, b) for a, b in zip(statistics, (model[1].running_mean, model[1].running_var,
                                                             model[1].num_batches_tracked)))


@pytest.mark.parametrize("where", ["weight", "buffer"])
def test_nan_or_inf_in_the_model_is_refused(where: str) -> None:
    model = _cnn()
    with torch.no_grad():
        if where == "weight":
            model[4].weight[0, 0] = float("nan")
        else:
            model[1].running_var[1] = float("inf")
    name = "4.weight" if where == "weight" else "1.running_var"
    with pytest.raises(ExplanationError, match=rf"NaN or infinite values in {name}"):
        relprop.explain(model, _x(), method="gradient")


@pytest.mark.parametrize("method", ["lrp", "gradient", "integrated_gradients", "occlusion"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_layer_weight_is_named_also_where_relu_cuts_it_off(method: str, value: float) -> None:
    # the weights of linear layers are checked after the explanation (relprop.validate.finite_weights), for
    # occlusion before: the error is the same. -inf into a ReLU gives a finite score; the relevance is NaN then
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double().eval()
    x = torch.tensor([[0.0, 0.5, 1.0, 0.25]], dtype=torch.float64)
    with torch.no_grad():
        model[0].weight[1, 2] = value
    options = {"window": 1} if method == "occlusion" else {}
    with pytest.raises(ExplanationError, match=r"NaN or infinite values in 0\.weight; its outputs"):
        relprop.explain(model, x, 1, method=method, **options)
    with torch.no_grad():
        model[0].weight[1, 2] = 0.0
        model[2].bias[1] = value
    with pytest.raises(ExplanationError, match=r"NaN or infinite values in 2\.bias"):
        relprop.explain(model, x, 1, method=method, **options)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_matrix_kernels_propagate_a_non_finite_weight_entry_times_zero(dtype: torch.dtype, value: float) -> None:
    # what checking linear layers' weights after the explanation relies on: 0 * inf is NaN in the matrix kernels
    # too (a kernel skipping zero inputs would break it), in the forward map and in the transposed one
    for batch in (1, 3):
        weight = torch.randn(5, 7, dtype=dtype)
        weight[2, 0] = value
        x, s = torch.randn(batch, 7, dtype=dtype), torch.randn(batch, 5, dtype=dtype)
        x[:, 0], s[:, 2] = 0.0, 0.0
        assert not bool(torch.isfinite(F.linear(x, weight)[:, 2]).any())
        assert not bool(torch.isfinite((s @ weight)[:, 0]).any())
        conv_weight = weight.reshape(5, 7, 1, 1)
        assert not bool(torch.isfinite(F.conv2d(x.reshape(batch, 7, 1, 1), conv_weight)[:, 2]).any())


def test_an_error_in_the_run_names_a_non_finite_weight_as_its_cause() -> None:
    class Checked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            z = self.lin(x)
            if not bool(torch.isfinite(z).all()):
                raise RuntimeError("non-finite activation")
            return z

    model = Checked().double().eval()
    with torch.no_grad():
        model.lin.weight[0, 0] = float("nan")
    with pytest.raises(ExplanationError, match=r"NaN or infinite values in lin\.weight") as raised:
        relprop.explain(model, torch.ones(1, 3, dtype=torch.float64), 0, method="gradient")
    assert "non-finite activation" in str(raised.value.__cause__)


def test_finite_results_with_finite_weights_pass_unchanged() -> None:
    model, x = _cnn(), _x()
    explanation = relprop.explain(model, x, 1, method="lrp", preset="epsilon")
    assert bool(torch.isfinite(explanation.relevance).all())


@pytest.mark.parametrize(("method", "options", "message"), [
    ("lrp", {"epsilon": float("nan")}, r"epsilon=nan must be a finite number >= 0"),
    ("lrp", {"epsilon": -0.1}, r"epsilon=-0.1 must be a finite number >= 0"),
    ("lrp", {"preset": "zplus", "stabilizer": float("inf")}, r"stabilizer=inf"),
    ("lrp", {"preset": "epsilon_gamma_box", "low": -1.0, "high": 1.0, "gamma": -1.0}, r"gamma=-1.0"),
    ("integrated_gradients", {"baseline": float("nan")}, r"baseline=nan"),
    ("integrated_gradients", {"baseline": torch.full((1, 6, 6), float("inf"), dtype=torch.float64)}, r"NaN or inf"),
    ("integrated_gradients", {"baseline": torch.zeros(3, 5)}, r"does not broadcast"),
    ("integrated_gradients", {"steps": 0}, r"steps=0 must be a positive integer"),
    ("smoothgrad", {"noise": float("nan")}, r"noise=nan"),
    ("smoothgrad", {"noise": -0.5}, r"noise=-0.5"),
    ("occlusion", {"window": (2, 0, 2)}, r"window=\(2, 0, 2\)"),
    ("occlusion", {"fill": float("inf")}, r"fill=inf"),
    ("occlusion", {"window": (1, 7, 2)}, r"window \(1, 7, 2\) is larger than x's non-batch shape \(1, 6, 6\)"),
    ("lrp", {"preset": "dtd", "low": 1.0, "high": -1.0}, r"low must not exceed high"),
    ("lrp", {"preset": "dtd", "low": 0.0, "high": 1.0}, r"x lies outside the zB bounds"),
    ("lrp", {"preset": "thesis_dtd"}, r"x lies outside the zB bounds \[low, high\] = \[-1.0, 1.0\]"),  # defaults
])
def test_out_of_domain_options_are_refused(method: str, options: dict[str, object], message: str) -> None:
    x = _x(-2.0, 2.0) if options.get("preset") == "thesis_dtd" else _x()
    with pytest.raises(ConfigError, match=message):
        relprop.explain(_cnn(), x, 0, method=method, **options)


def test_a_zbox_of_a_rule_map_checks_its_layers_input() -> None:
    """The bounds of a ZBox given in a RuleMap are checked where the layer runs, on the input it sees."""
    from relprop import rules
    from relprop.composites import RuleMap

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()
    rule_map = RuleMap([("0", rules.ZBox(low=-1.0, high=1.0)), (nn.Linear, rules.Epsilon())])
    x = torch.linspace(-2, 2, 12, dtype=torch.float64).reshape(2, 6)
    with pytest.raises(ConfigError, match=r"the input of Linear\(in_features=6.* lies outside the zB bounds "
                                          r"\[low, high\] = \[-1.0, 1.0\] \(it spans \[-2, 2\]\)"):
        relprop.explain(model, x, 0, rule_map=rule_map)
    assert "forward" not in vars(model[0]) and not model[0]._forward_hooks
    inside = relprop.explain(model, x / 2, "all", rule_map=rule_map)  # inside: one pass for all targets
    torch.testing.assert_close(inside.relevance[:, 1], relprop.explain(model, x / 2, 1, rule_map=rule_map).relevance)
    deeper = RuleMap([("2", rules.ZBox(low=0.0, high=0.1)), (nn.Linear, rules.Epsilon())])  # a ReLU output
    with pytest.raises(ConfigError, match=r"the input of Linear\(in_features=5"):
        relprop.explain(model, x / 2, 0, rule_map=deeper)


@pytest.mark.parametrize("options", [{"preset": "zplus"}, {"epsilon": 0.1}, {"preset": "dtd", "low": -1.0}])
def test_options_that_rule_map_would_ignore_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"rule_map= together with .* would be ignored"):
        relprop.explain(_cnn(), _x(), method="lrp", rule_map=get_preset("epsilon"), **options)


def test_layers_go_with_a_rule_map() -> None:
    """``layers=`` and ``layer_at=`` are the method's own options, not a preset's: a rule map takes them."""
    model, x = _cnn(), _x()
    explanation = relprop.explain(model, x, 0, method="lrp", rule_map=get_preset("epsilon"), layers=["0"],
                                  layer_at="input")
    torch.testing.assert_close(explanation.layers["0"], explanation.relevance)  # the first layer's input is x


class _Pair(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.lin = kind, nn.Linear(4, 3)

    def forward(self, x: Tensor) -> object:
        scores = self.lin(x)
        return (scores, x) if self.kind == "tuple" else {"scores": scores}


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_a_model_returning_a_tuple_or_dict_needs_output(kind: str) -> None:
    model, x = _Pair(kind).double().eval(), torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ExplanationError, match=r"pass output= to select them"):
        relprop.explain(model, x, method="gradient")
    select = (lambda result: result[0]) if kind == "tuple" else (lambda result: result["scores"])
    explanation = relprop.explain(model, x, 1, method="gradient", output=select)
    assert torch.equal(explanation.relevance, model.lin.weight[1].expand(2, 4))


def test_inference_mode_is_refused() -> None:
    model, x = _cnn(), _x()
    with torch.inference_mode():
        with pytest.raises(ExplanationError, match=r"inside torch.inference_mode\(\)"):
            relprop.explain(model, x, method="lrp")
        frozen = x.clone()
    with pytest.raises(ExplanationError, match=r"^relprop\.explain: x were created in torch.inference_mode"):
        relprop.explain(model, frozen, method="lrp")


def test_meta_tensors_are_refused() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 3)).eval()
    with pytest.raises(ExplanationError, match=r"0.weight, 0.bias are meta tensors"):
        relprop.explain(model, torch.randn(2, 4), method="lrp")


def test_a_compiled_model_is_explained_through_its_original_module() -> None:
    model, x = _cnn(), _x()
    compiled = torch.compile(model)  # compiles lazily: explain never runs the compiled code
    assert torch.equal(relprop.explain(compiled, x, 1, method="lrp").relevance,
                       relprop.explain(model, x, 1, method="lrp").relevance)
    wrapper = nn.Sequential(torch.compile(model)).eval()
    with pytest.raises(ExplanationError, match=r"sub-modules 0 of Sequential are torch.compile'd"):
        relprop.explain(wrapper, x, method="lrp")


class _CompiledBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.last = nn.Linear(4, 4), nn.Linear(4, 3)
        self.plain = lambda h: torch.relu(h) * 2.0
        self.branch = torch.compile(self.plain, backend="aot_eager")  # no C++ compiler needed

    def forward(self, x: Tensor) -> Tensor:
        h = self.first(x)
        return self.last(h + self.branch(h))  # type: ignore[no-any-return]


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """Each test compiles afresh, and leaves no compiled frame of relprop's code to the next."""
    dynamo = pytest.importorskip("torch._dynamo")
    dynamo.reset()
    yield
    dynamo.reset()


@pytest.mark.filterwarnings("ignore:Dynamo:UserWarning")
def test_a_compiled_function_called_in_forward_runs_op_by_op_through_the_guard(fresh_dynamo: None) -> None:
    """dynamo traced the op guard into the compiled graph, whose backward (the Function AOT autograd makes) carries a
    plain gradient: relprop refused it, and once dynamo had hit its recompile limit on the guard's code it ran
    without an error instead. The guard is opaque to dynamo now: the compiled function runs op by op, explained as
    the plain one."""
    model = _CompiledBranch().double().eval()
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    methods = ("lrp", "guided_backprop")
    compiled, model.branch = model.branch, model.plain
    wants = {method: relprop.explain(model, x, 0, method=method).relevance for method in methods}
    model.branch = compiled
    for cached in (False, True):
        if cached:
            model(x)  # compiled and cached by a plain forward pass before the explanation
        for method in methods:
            got = relprop.explain(model, x, 0, method=method).relevance
            torch.testing.assert_close(got, wants[method], rtol=1e-12, atol=1e-14)
    model.branch = torch.compile(lambda h: torch.tanh(h) * 3.0, backend="aot_eager", fullgraph=True)  # new code
    with pytest.raises(ExplanationError, match=r"torch.compile\(fullgraph=True\) .*_torchdynamo_orig_callable"):
        relprop.explain(model, x, 0, method="lrp")


_TRACED_GUARD = """
import warnings, torch, relprop
from relprop import core
from torch import nn
warnings.filterwarnings("ignore")
core._opaque_to_dynamo = lambda: None  # dynamo traces the guard, as when it is imported after the guard's entry


class CompiledBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.last = nn.Linear(4, 4), nn.Linear(4, 3)
        self.branch = torch.compile(lambda h: torch.relu(h) * 2.0, backend="aot_eager")

    def forward(self, x):
        h = self.first(x)
        return self.last(h + self.branch(h))


try:
    relprop.explain(CompiledBranch().eval(), torch.randn(2, 4), 0, method="lrp")
except relprop.ExplanationError as error:
    print(error)
"""


def test_a_compiled_graph_on_the_path_is_refused_naming_torch_compile() -> None:
    """Where dynamo does trace the guard (imported only after the guard was entered, as when a forward pass compiles
    its first function), the graph's output comes from the Function AOT autograd makes. The error named it a
    "custom autograd.Function" (torch._functorch...CompiledFunction); it names torch.compile and the way back. In a
    process of its own: once the guard is opaque to dynamo, dynamo skips its code for good."""
    done = subprocess.run([sys.executable, "-c", _TRACED_GUARD], capture_output=True, text=True, timeout=300,
                          check=True)
    assert re.search(r"from code compiled by torch.compile, .*_torchdynamo_orig_callable", done.stdout), done.stdout


class _Doubler(torch.autograd.Function):
    """``2 x`` with a backward that is not its derivative: relprop must never use it."""

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        return grad * 5


_DOUBLED = _Doubler.apply  # bound before any explanation: calls through it bypass relprop (as a library's alias)


class _Custom(nn.Module):
    def __init__(self, written_out: bool = False) -> None:
        super().__init__()
        self.written_out = written_out
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        return self.b(h * 2 if self.written_out else _Doubler.apply(h))  # type: ignore[no-any-return]


@pytest.mark.parametrize("preset", ["epsilon", "epsilon_plus_flat", "attnlrp"])
def test_a_custom_autograd_function_is_explained_through_its_forward(preset: str) -> None:
    """Its backward (here not even the derivative) is not relevance: its forward's operations get their rules, and
    the heatmap is that of the same model with the forward written out; ``Function.apply`` is torch's again after."""
    apply = torch.autograd.Function.__dict__["apply"]
    torch.manual_seed(0)
    model, written_out = _Custom().double().eval(), _Custom(written_out=True).double().eval()
    written_out.load_state_dict(model.state_dict())
    x = torch.randn(2, 4, dtype=torch.float64)
    explanation = relprop.explain(model, x, 0, method="lrp", preset=preset)
    expected = relprop.explain(written_out, x, 0, method="lrp", preset=preset)
    assert torch.equal(explanation.relevance, expected.relevance)
    assert torch.equal(explanation.output, model(x).detach())
    assert torch.autograd.Function.__dict__["apply"] is apply
    gradient = relprop.explain(model, x, 0, method="gradient").relevance  # the gradient methods use its backward
    assert torch.allclose(gradient, 2.5 * relprop.explain(written_out, x, 0, method="gradient").relevance)


class _SetupContext(torch.autograd.Function):
    """``(x * sigmoid(x) * scale, 3 x, argmax)`` in the setup_context form, ``3 x`` and the index marked
    non-differentiable (constants for the rest of the model)."""

    @staticmethod
    def forward(x: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
        return x * torch.sigmoid(x) * scale, x * 3.0, x.argmax(-1)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(inputs[0])
        ctx.mark_non_differentiable(output[1], output[2])

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Tensor, __: Tensor) -> tuple[Tensor, None]:
        return grad * 0, None


class _Swish(torch.autograd.Function):
    """``x * sigmoid(x)``, ctx-style, saving its input and reading ``needs_input_grad``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad * 0


def test_custom_functions_in_both_forms_equal_their_forward_written_out() -> None:
    class Swishes(nn.Module):
        def __init__(self, written_out: bool) -> None:
            super().__init__()
            self.written_out = written_out
            self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)
            if self.written_out:
                h = self.b(h * torch.sigmoid(h) * 0.5 + (h * 3.0).detach())
                return self.c(h * torch.sigmoid(h))  # type: ignore[no-any-return]
            h, constant, index = _SetupContext.apply(h, 0.5)
            assert not index.is_floating_point() and not constant.requires_grad
            return self.c(_Swish.apply(self.b(h + constant)))  # type: ignore[no-any-return]

    torch.manual_seed(0)
    model, written_out = Swishes(False).double().eval(), Swishes(True).double().eval()
    written_out.load_state_dict(model.state_dict())
    x = torch.randn(3, 4, dtype=torch.float64)
    for preset in ("epsilon", "attnlrp"):  # the sigmoid is a gate: the signal takes all
        got = relprop.explain(model, x, 1, method="lrp", preset=preset).relevance
        assert torch.equal(got, relprop.explain(written_out, x, 1, method="lrp", preset=preset).relevance)


@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
def test_bloom_gelu_a_custom_function_explains_as_the_tanh_gelu(preset: str) -> None:
    """BLOOM's ``BloomGelu`` calls ``GeLUFunction.apply`` (Megatron's hand-written backward): the Hugging Face bloom
    family was refused. Its forward is the tanh GELU written out, whose tanh factor is a gate, so the MLP's input
    takes all, as ``F.gelu(approximate="tanh")`` passes it (its constants are rounded: 1e-6)."""
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")

    class Mlp(nn.Module):
        def __init__(self, act: nn.Module) -> None:
            super().__init__()
            self.up, self.act, self.down = nn.Linear(4, 8), act, nn.Linear(8, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.down(self.act(self.up(x)))  # type: ignore[no-any-return]

    torch.manual_seed(0)
    model, stock = Mlp(bloom.BloomGelu()).double().eval(), Mlp(nn.GELU(approximate="tanh")).double().eval()
    stock.load_state_dict(model.state_dict())
    x = torch.randn(3, 4, dtype=torch.float64)
    got = relprop.explain(model, x, 0, method="lrp", preset=preset).relevance
    want = relprop.explain(stock, x, 0, method="lrp", preset=preset).relevance
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-9 * float(want.abs().max()))


class _Around(nn.Module):
    """``b(function.apply(a(x)))``: a custom autograd.Function between two layers."""

    def __init__(self, function: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.function = function
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.function.apply(self.a(x)))  # type: ignore[no-any-return]


def test_a_custom_function_whose_forward_the_guard_cannot_follow_is_refused() -> None:
    class NoGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Tensor) -> Tensor:
            with torch.no_grad():
                return x * 2

        @staticmethod
        def backward(ctx: Any, grad: Tensor) -> Tensor:
            return grad * 2

    apply = torch.autograd.Function.__dict__["apply"]
    with pytest.raises(ExplanationError, match=r"custom autograd.Function .*NoGrad at .*test_validate.py:\d+: .*"
                                               r"under torch.no_grad"):
        relprop.explain(_Around(NoGrad).double().eval(), torch.randn(2, 4, dtype=torch.float64), 0, method="lrp")
    assert torch.autograd.Function.__dict__["apply"] is apply


def test_a_custom_forward_reading_what_the_context_lacks_gets_a_clear_attribute_error() -> None:
    class Reads(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Tensor) -> Tensor:
            return x * 2 if ctx.generator_state is None else x

        @staticmethod
        def backward(ctx: Any, grad: Tensor) -> Tensor:
            return grad * 2

    with pytest.raises(AttributeError, match=r"reads ctx.generator_state, which the context relprop gives it"):
        relprop.explain(_Around(Reads).double().eval(), torch.randn(2, 4, dtype=torch.float64), 0, method="lrp")


def test_another_threads_custom_function_keeps_its_own_backward() -> None:
    """``Function.apply`` is one attribute for all threads: during an explanation, a call in another thread makes
    the custom node as always."""
    import threading

    nodes: list[str] = []

    class Spawning(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 3)

        def forward(self, x: Tensor) -> Tensor:
            def elsewhere() -> None:
                y = _Doubler.apply(torch.ones(2, requires_grad=True))
                nodes.append(type(y.grad_fn).__name__)

            thread = threading.Thread(target=elsewhere)
            thread.start()
            thread.join()
            return self.a(x)  # type: ignore[no-any-return]

    relprop.explain(Spawning().double().eval(), torch.randn(2, 4, dtype=torch.float64), 0, method="lrp")
    assert nodes == ["_DoublerBackward"]


@pytest.mark.parametrize("then", [lambda t: t.view(2, 5), lambda t: t.clone(), lambda t: t[:, [0, 1, 2, 3, 4]],
                                  lambda t: torch.cat([t[:, :2], t[:, 2:]], 1),
                                  lambda t: F.max_pool1d(t[:, None], 1)[:, 0]],
                         ids=["view", "clone", "index", "cat", "max_pool"])
def test_a_custom_autograd_function_is_refused_behind_a_routing_op(then) -> None:  # type: ignore[no-untyped-def]
    """A custom Function whose ``apply`` was bound before the explanation (``_DOUBLED``) makes its own node, whose
    backward is a gradient. A routing op or max pool runs its own backward, which would carry it on: the op checks
    its inputs as every ruled site does (this relevance summed to 2 f(x), with no error)."""
    class Behind(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 5, bias=False), nn.Linear(5, 3, bias=False)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(then(_DOUBLED(torch.relu(self.a(x)))))  # type: ignore[no-any-return]

    torch.manual_seed(0)
    with pytest.raises(ExplanationError, match=r"the input of '.*' at .* comes from the custom autograd.Function"):
        relprop.explain(Behind().double().eval(), torch.randn(2, 4, dtype=torch.float64), 0, method="lrp",
                        preset="epsilon")


def test_writing_data_on_the_path_is_refused() -> None:
    class Writes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)
            h.data = h.data.clamp(min=0)  # cuts the relevance: the next layer sees values autograd never saw
            return self.b(h)

    with pytest.raises(ExplanationError, match=r"'\.data'"):
        relprop.explain(Writes().double().eval(), torch.randn(2, 4, dtype=torch.float64), method="lrp")


def test_a_custom_function_as_the_last_op_is_refused() -> None:
    """Through an ``apply`` bound before the explanation, which makes the Function's own node."""

    class LastIsCustom(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _DOUBLED(self.linear(x))  # type: ignore[no-any-return]

    with pytest.raises(ExplanationError, match="LastIsCustom comes from the custom autograd.Function .*_Doubler"):
        relprop.explain(LastIsCustom().eval(), torch.randn(2, 4), target=0, method="lrp", preset="epsilon")


def test_messages_say_how_to_fix_the_call() -> None:
    """A dict result, a score vector and a dtype mismatch each get an error that shows the call that works."""

    class _Scores(nn.Module):
        def __init__(self, kind: str) -> None:
            super().__init__()
            self.kind, self.lin = kind, nn.Linear(4, 3)

        def forward(self, x: Tensor) -> object:
            scores = self.lin(x)
            return {"scores": scores} if self.kind == "dict" else scores[:, 0]

    x = torch.randn(2, 4)
    with pytest.raises(ExplanationError, match=r"output=lambda result: result\['scores'\]"):
        relprop.explain(_Scores("dict").eval(), x, 0)
    with pytest.raises(ExplanationError, match=r"got shape \(2,\); .*output=lambda out: out.unsqueeze\(1\)"):
        relprop.explain(_Scores("vector").eval(), x, 0)
    fixed = relprop.explain(_Scores("vector").eval(), x, 0, output=lambda out: out.unsqueeze(1))
    assert fixed.relevance.shape == x.shape
    with pytest.raises(ExplanationError, match=r"parameters are torch.float32: pass x.to\(torch.float32\)"):
        relprop.explain(_Scores("dict").eval(), x.double(), 0, output=lambda result: result["scores"])
    with pytest.raises(ExplanationError, match=r"\(batch, k\), 'all' or None, got 1.0"):
        relprop.explain(nn.Linear(4, 3).eval(), x, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_a_torch_recurrent_cell_is_refused_pointing_to_relprops_cells(kind: str) -> None:
    class _Step(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell, self.out = getattr(nn, kind)(4, 5), nn.Linear(5, 2)

        def forward(self, x: Tensor) -> Tensor:
            state = self.cell(x)
            return self.out(state[0] if isinstance(state, tuple) else state)  # type: ignore[no-any-return]

    with pytest.raises(ExplanationError, match=rf"fused step of nn.{kind}.*relprop.models' cells"):
        relprop.explain(_Step().eval(), torch.randn(2, 4), 0)


def test_backward_hooks_are_refused_by_the_rule_methods_and_named() -> None:
    """A user's full backward hook (a gradient logger) made LRP refuse with a message about a custom
    autograd.Function at '__get__'; the rule methods now name the hooked modules, and the gradient methods run it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    x = torch.randn(2, 4)
    calls = []
    handle = model[2].register_full_backward_hook(lambda module, grad_in, grad_out: calls.append(1))
    try:
        for method in ("lrp", "guided_backprop", "deconvnet"):
            with pytest.raises(ExplanationError, match=r"modules \['2'\] have backward hooks"):
                relprop.explain(model, x, 0, method=method)
        assert not calls
        relprop.explain(model, x, 0, method="gradient")
        assert calls == [1]
    finally:
        handle.remove()
    handle = nn.modules.module.register_module_full_backward_hook(lambda module, grad_in, grad_out: None)
    try:
        with pytest.raises(ExplanationError, match="every module: a global hook"):
            relprop.explain(model, x, 0, method="lrp")
    finally:
        handle.remove()
    relprop.explain(model, x, 0, method="lrp")
