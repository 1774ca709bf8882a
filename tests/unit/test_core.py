"""The engine: op sites and their errors, in-place operations, tags, and what an explained forward refuses."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relprop
from relprop import ops, rules
from relprop.composites import RuleMap
from relprop.errors import ExplanationError

HERE = re.escape(__file__)


class _Functional(nn.Module):
    """Linear -> a functional tail chosen by ``tail`` -> Linear; no biases."""

    def __init__(self, tail: str) -> None:
        super().__init__()
        self.tail = tail
        self.lin, self.out = nn.Linear(6, 6, bias=False), nn.Linear(6, 3, bias=False)
        self.register_buffer("memory", torch.zeros(6))
        self.scale = nn.Parameter(torch.rand(6) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.lin(x)
        if self.tail == "softmax":
            h = torch.softmax(h, dim=1)
        elif self.tail == "cumsum":
            h = torch.cumsum(h, dim=1)
        elif self.tail == "data":
            h = h.data * 2
        elif self.tail == "dropout":
            h = F.dropout(h, 0.5)  # training=True by default: random
        elif self.tail == "bare-inplace":
            h.relu_()  # the result is not used: h itself changes
            h = h * 2
        elif self.tail == "ungated":
            h = h * self.lin(x)
        elif self.tail == "layer-scale":
            h = F.relu(h, inplace=True) * self.scale
        elif self.tail == "buffer":
            self.memory[:] = 0.0  # an in-place write off the relevance path
            h = h + self.memory
        return self.out(h)


def _model(tail: str) -> _Functional:
    torch.manual_seed(0)
    return _Functional(tail).double().eval()


def _x() -> Tensor:
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_unknown_op_names_the_op_the_line_and_the_fix() -> None:
    with pytest.raises(ExplanationError, match=rf"'cumsum' at {HERE}:\d+ .*relprop.ops.Op"):
        relprop.explain(_model("cumsum"), _x(), method="lrp")


def test_attention_op_without_rule_points_to_the_transformer_presets() -> None:
    with pytest.raises(ExplanationError, match=rf"'softmax' at {HERE}:\d+ .*preset='attnlrp'"):
        relprop.explain(_model("softmax"), _x(), method="lrp", preset="epsilon_plus_flat")


def test_user_declared_op_gets_its_rule() -> None:
    cumsum = ops.Op("cumsum", frozenset({"cumsum"}))
    rule_map = RuleMap([(cumsum, rules.Proportional()), (nn.Linear, rules.Epsilon())])  # cumsum is linear
    explanation = relprop.explain(_model("cumsum"), _x(), method="lrp", rule_map=rule_map)
    assert explanation.relevance.shape == (4, 6)


def test_a_users_op_takes_a_name_from_relprops_own_ops() -> None:
    """An op the user declares with a function name of one of relprop's ops (here the product) has that name: a rule
    map's entries come before its base map's, whose product rule refuses two path tensors."""
    product = ops.Op("product", frozenset({"mul", "__mul__"}))
    linear = (nn.Linear, rules.Epsilon(epsilon=1e-12))
    declared = RuleMap([(product, rules.Uniform(1e-12)), linear], stabilizer=1e-12)
    explanation = relprop.explain(_model("ungated"), _x(), method="lrp", rule_map=declared)
    builtin = RuleMap([(ops.MUL, rules.Uniform(1e-12)), linear], stabilizer=1e-12)
    assert torch.equal(explanation.relevance,
                       relprop.explain(_model("ungated"), _x(), method="lrp", rule_map=builtin).relevance)


def test_dot_data_on_the_path_is_refused() -> None:
    with pytest.raises(ExplanationError, match=rf"'.data'.*{HERE}"):
        relprop.explain(_model("data"), _x(), method="lrp")


def test_functional_dropout_in_training_mode_is_refused() -> None:
    with pytest.raises(ExplanationError, match="dropout in training mode"):
        relprop.explain(_model("dropout"), _x(), method="lrp")


class _InPlace(nn.Module):
    """Linear -> an in-place form chosen by ``form`` (or, with ``written_out``, the same computation out of place)
    -> Linear; no biases. The model goes on with the tensor object it holds."""

    def __init__(self, form: str, written_out: bool = False) -> None:
        super().__init__()
        self.form, self.written_out = form, written_out
        self.lin, self.side, self.out = (nn.Linear(6, 6, bias=False), nn.Linear(6, 6, bias=False),
                                         nn.Linear(6, 3, bias=False))
        self.act = nn.ReLU(inplace=not written_out)
        self.gain = nn.Parameter(torch.rand(6) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.lin(x)
        if self.form == "bare":  # the result of the in-place op is dropped
            if self.written_out:
                h = h.relu()
            else:
                h.relu_()
        elif self.form == "alias":  # another name for the same tensor object sees the change
            kept = h
            if self.written_out:
                kept = h = h * self.gain
            else:
                h.mul_(self.gain)
            h = kept
        elif self.form == "functional":
            if self.written_out:
                h = F.relu(h)
            else:
                F.relu(h, inplace=True)
        elif self.form == "module":  # nn.ReLU(inplace=True) called as a statement
            if self.written_out:
                h = self.act(h)
            else:
                self.act(h)
        elif self.form == "setitem":  # into a ruled layer's output
            if self.written_out:
                h = torch.cat([h[:, 1:2] * 2, h[:, 1:]], dim=1)
            else:
                h[:, 0] = h[:, 1] * 2
        elif self.form == "residual":  # x += y, with the tensor kept under another name first
            kept = h
            if self.written_out:
                kept = h = h + self.side(x)
            else:
                h += self.side(x)
            h = kept.relu()
        elif self.form == "view":  # in-place view ops as statements: the shape changes, no value does
            if self.written_out:
                h = h.unsqueeze(1).transpose(1, 2).squeeze(2)
            else:
                h.unsqueeze_(1)
                h.transpose_(1, 2)
                h.squeeze_(2)
        elif self.form == "index-fill":  # a constant written at some positions
            if self.written_out:
                h = torch.cat([h[:, :2], torch.zeros_like(h[:, 2:3]), h[:, 3:]], dim=1)
            else:
                h.index_fill_(1, torch.tensor([2]), 0.0)
        return self.out(h)


_FORMS = ["bare", "alias", "functional", "module", "setitem", "residual", "view", "index-fill"]


@pytest.mark.parametrize("preset", ["epsilon", "epsilon_plus_flat", "attnlrp"])
@pytest.mark.parametrize("form", _FORMS)
def test_an_in_place_op_changes_the_tensor_object_the_model_holds(form: str, preset: str) -> None:
    """An in-place op on the relevance path runs out of place under its rule, and the tensor object the model holds
    then takes the result, as in the model's own forward pass: the explanation equals that of the same model
    written out of place, bit for bit, its scores are the model's, and (no biases) it conserves."""
    torch.manual_seed(0)
    model = _InPlace(form).double().eval()
    written_out = _InPlace(form, written_out=True).double().eval()
    written_out.load_state_dict(model.state_dict())
    x = _x()
    options: dict[str, Any] = {"epsilon": 1e-12, "stabilizer": 1e-12} if preset == "epsilon" else {}
    explanation = relprop.explain(model, x, method="lrp", preset=preset, **options)
    expected = relprop.explain(written_out, x, method="lrp", preset=preset, **options)
    assert torch.equal(explanation.output, model(x).detach())
    assert torch.equal(explanation.output, expected.output)
    assert torch.equal(explanation.relevance, expected.relevance)
    if preset == "epsilon":
        assert torch.allclose(explanation.relevance.sum(1), explanation.score, rtol=1e-9, atol=0)
    assert not any(name.startswith("_relprop") for name in x.__dict__)


def test_the_bare_inplace_module_call_was_silently_wrong() -> None:
    """The defect this mends: nn.ReLU(inplace=True) called as a statement ran on a copy, and the model went on with
    the unchanged tensor, so relprop explained another function than the model's (its scores differed)."""
    torch.manual_seed(0)
    model = _InPlace("module").double().eval()
    explanation = relprop.explain(model, _x(), method="lrp")
    without_relu = F.linear(model.lin(_x()), model.out.weight).detach()
    assert not torch.allclose(explanation.output, without_relu)
    assert torch.equal(explanation.output, model(_x()).detach())


def test_a_tensor_changed_through_an_in_place_op_on_its_view_is_refused() -> None:
    """``h[:, :3].mul_(2)`` changes ``h`` too; relprop computes it out of place, so ``h`` keeps its old values: a
    later use of ``h`` is refused, naming the in-place op's line."""

    class ViewWrite(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.out = nn.Linear(6, 6, bias=False), nn.Linear(6, 3, bias=False)

        def forward(self, x: Tensor) -> Tensor:
            h = self.lin(x)
            h[:, :3].mul_(2.0)
            return self.out(h)  # type: ignore[no-any-return]

    with pytest.raises(ExplanationError, match=rf"module 'out' \(Linear\) uses a tensor that the in-place "
                                               rf"operation at {HERE}:\d+ changed in a way.*a view of it"):
        relprop.explain(ViewWrite().double().eval(), _x(), method="lrp")


def test_bare_inplace_statement_is_explained_as_the_model_computes_it() -> None:
    """The tail ``h.relu_(); h = h * 2`` (the result of relu_ dropped) was refused as a use of a stale tensor."""
    model = _model("bare-inplace")
    explanation = relprop.explain(model, _x(), method="lrp", preset="epsilon")
    assert torch.equal(explanation.output, model(_x()).detach())


def test_product_of_two_path_tensors_needs_a_gate_or_a_rule() -> None:
    with pytest.raises(ExplanationError, match=r"sigmoid gate.*ops\.MUL, rules\.Uniform"):
        relprop.explain(_model("ungated"), _x(), method="lrp")
    uniform = RuleMap([(ops.MUL, rules.Uniform(1e-12)), (nn.Linear, rules.Epsilon(epsilon=1e-12))], stabilizer=1e-12)
    explanation = relprop.explain(_model("ungated"), _x(), method="lrp", rule_map=uniform)
    assert torch.allclose(explanation.relevance.sum(1), explanation.score, rtol=1e-8, atol=0)


def test_layer_scale_and_inplace_relu_conserve() -> None:
    explanation = relprop.explain(_model("layer-scale"), _x(), method="lrp", preset="epsilon", epsilon=1e-12,
                                  stabilizer=1e-12)
    assert torch.allclose(explanation.relevance.sum(1), explanation.score, rtol=1e-8, atol=0)


def test_off_path_inplace_write_leaves_no_tag_on_the_buffer() -> None:
    model = _model("buffer")
    relprop.explain(model, _x(), method="lrp")
    for param in [*model.parameters(), *model.buffers()]:
        assert not [name for name in getattr(param, "__dict__", {}) if name.startswith("_relprop")]


def test_submodule_left_in_training_mode_is_named() -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double().eval()
    model[1].train()
    with pytest.raises(ExplanationError, match=r"training mode \(1\)"):
        relprop.explain(model, _x(), method="lrp")


def test_batch_norm_without_running_statistics_is_refused() -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2))
    with pytest.raises(ExplanationError, match="batch statistics"):
        relprop.explain(model.double().eval(), _x(), method="lrp")


def test_batch_norm_not_fed_by_a_layer_is_its_affine_map() -> None:
    """A batch norm first in the model (as in DenseNet's pre-activation blocks): epsilon on ``a x + c``."""
    torch.manual_seed(0)
    norm = nn.BatchNorm1d(6)
    norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)
    model = nn.Sequential(norm, nn.ReLU(), nn.Linear(6, 2)).double().eval()
    x = _x()
    options = {"preset": "epsilon", "epsilon": 1e-9, "stabilizer": 1e-9}  # the batch norm's epsilon: the stabilizer
    relevance = relprop.explain(model, x, 0, method="lrp", **options).relevance
    a = (norm.weight / (norm.running_var + norm.eps).sqrt()).detach()
    z = x * a + (norm.bias - norm.running_mean * a).detach()
    relevance_z = relprop.explain(nn.Sequential(nn.ReLU(), model[2]).eval(), z, 0, method="lrp", **options).relevance
    assert torch.allclose(relevance, x * a * relevance_z / rules.elementwise.stabilize(z, 1e-9), rtol=1e-10)


def test_unmatched_name_pattern_is_refused() -> None:
    with pytest.raises(ExplanationError, match=r"\['features\.0'\] match no module"):
        relprop.explain(_model("layer-scale"), _x(), method="lrp", rule_map=RuleMap([("features.0", rules.Flat())]))


def test_guided_backprop_sees_functional_relus() -> None:
    """F.relu in a forward gets the guided rule as an nn.ReLU module does."""

    class Functional(nn.Module):
        def __init__(self, relu: nn.Module | None) -> None:
            super().__init__()
            self.lin, self.out, self.relu = nn.Linear(6, 8), nn.Linear(8, 3), relu

        def forward(self, x: Tensor) -> Tensor:
            h = self.lin(x)
            return self.out(F.relu(h) if self.relu is None else self.relu(h))

    torch.manual_seed(0)
    functional = Functional(None).double().eval()
    modular = Functional(nn.ReLU()).double().eval()
    modular.load_state_dict(functional.state_dict())
    x = _x()
    got = relprop.explain(functional, x, 1, method="guided_backprop").relevance
    want = relprop.explain(modular, x, 1, method="guided_backprop").relevance
    assert torch.equal(got, want)
    assert not torch.equal(got, relprop.explain(functional, x, 1, method="gradient").relevance)


def test_model_errors_in_the_explained_pass_keep_their_type() -> None:
    """A genuine error is not relabelled as a user error: its type and traceback reach the caller."""

    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Tensor:
            if x.requires_grad:  # the explained pass only: a plain forward pass of this input works
                raise TypeError("a bug in the model")
            return self.lin(x)

    with pytest.raises(TypeError, match="a bug in the model"):
        relprop.explain(Fails().double().eval(), _x(), method="lrp")


def test_the_guard_leaves_the_mode_stack_as_it_found_it() -> None:
    """Ruled modules run with the op guard off the mode stack; a module that fails there leaves no mode behind, and a
    user's mode entered around explain stays where it was."""

    class Fails(nn.Linear):
        def forward(self, x: Tensor) -> Tensor:
            raise RuntimeError("a bug inside a ruled module")

    class Outer(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            return func(*args, **(kwargs or {}))

    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), Fails(4, 2)).double().eval()
    with Outer() as outer:
        with pytest.raises((RuntimeError, ExplanationError), match="a bug inside a ruled module"):
            relprop.explain(model, _x(), 0)
        assert torch._C._len_torch_function_stack() == 1
        assert torch._C._get_function_stack_at(0) is outer
    assert torch._C._len_torch_function_stack() == 0
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    working = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    assert relprop.explain(working, _x(), 0).relevance.shape == _x().shape


class _ClassInplaceRelu(nn.Module):
    """An element-wise module that declares ``inplace`` on its class (not on the instance, as nn.ReLU does)."""

    inplace = True

    def forward(self, x: Tensor) -> Tensor:
        return x.relu_()


@pytest.mark.parametrize("relu", [nn.ReLU(inplace=True), _ClassInplaceRelu()])
def test_a_module_working_in_place_gets_a_copy_of_its_input(relu: nn.Module) -> None:
    # the hooks read `inplace` once per attachment: from the instance, or from the class
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), relu, nn.Linear(3, 2)).double().eval()
    rule_map = RuleMap([(nn.Linear, rules.Epsilon()), (type(relu), rules.Pass())])
    x = torch.randn(5, 4, dtype=torch.float64)
    explanation = relprop.explain(model, x, 1, rule_map=rule_map)
    plain = nn.Sequential(model[0], nn.ReLU(), model[2]).eval()
    expected = relprop.explain(plain, x, 1, rule_map=RuleMap([(nn.Linear, rules.Epsilon())]))
    assert torch.allclose(explanation.relevance, expected.relevance, rtol=1e-12, atol=1e-12)
    assert torch.allclose(explanation.output, plain(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_stabilize_moves_away_from_zero_with_zero_and_minus_zero_counted_positive(dtype: torch.dtype) -> None:
    from relprop.core import stabilize

    z = torch.tensor([-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0, float("inf"), -float("inf"), float("nan")], dtype=dtype)
    literal = torch.tensor([v - 0.5 if v < 0 else v + 0.5 for v in z.tolist()], dtype=torch.float64).to(dtype)
    got = stabilize(z, 0.5)
    assert got.dtype == dtype
    assert torch.equal(got[:-1], literal[:-1])  # the literal computes in float64, then rounds once, as stabilize
    assert got[-1].isnan()


def test_finite_sum_reads_several_tensors_at_once() -> None:
    from relprop.validate import finite_sum

    ones = torch.ones(3)
    assert finite_sum(ones, torch.zeros(2, dtype=torch.float64), torch.ones(1, dtype=torch.complex64))
    assert not finite_sum(ones, torch.tensor([float("inf")]))
    assert not finite_sum(torch.tensor([float("nan")]), ones)
    assert not finite_sum(torch.tensor([3e38, 3e38]))  # a finite sum that overflows reads not finite (conservative)


class _FilledGate(nn.Module):
    """``x * g`` with ``g = sigmoid(.)`` changed by a routing op that brings in values of its own (``fill``)."""

    FILLS = {
        "view": lambda g: g.view(-1, 6),
        "masked_fill-0": lambda g: g.masked_fill(g > 0.7, 0.0),
        "masked_fill--1": lambda g: g.masked_fill(g > 0.7, -1.0),
        "masked_fill-2": lambda g: g.masked_fill(g > 0.7, 2.0),
        "where-0.5": lambda g: g.where(g > 0.3, 0.5),
        "where-path": lambda g: g.where(g > 0.3, g - 1.0),
        "pad-0": lambda g: F.pad(g, (1, 0))[:, :6],
        "pad--1": lambda g: F.pad(g, (1, 0), value=-1.0)[:, :6],
        "setitem--3": lambda g: g.__setitem__((slice(None), 0), -3.0) or g,
        "torch.where-0": lambda g: torch.where(g > 0.3, g, 0.0),
        "torch.where-path": lambda g: torch.where(g > 0.3, g, g - 1.0),
        "index_fill-0": lambda g: g.index_fill(1, torch.tensor([0, 2]), 0.0),
        "index_fill--1": lambda g: g.index_fill(1, torch.tensor([0, 2]), -1.0),
        "masked_scatter-gate": lambda g: g.masked_scatter(g > 0.5, g.flip(1)),
        "masked_scatter-path": lambda g: g.masked_scatter(g > 0.5, g - 1.0),
    }

    def __init__(self, fill: str) -> None:
        super().__init__()
        self.fill = fill
        self.a, self.b, self.out = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.b(x))
        return self.out(self.a(x) * self.FILLS[self.fill](gate))  # type: ignore[no-any-return]


@pytest.mark.parametrize(("fill", "gate"), [
    ("view", True), ("masked_fill-0", True), ("masked_fill--1", False), ("masked_fill-2", True),
    ("where-0.5", True), ("where-path", False), ("pad-0", True), ("pad--1", False), ("setitem--3", False),
    ("torch.where-0", True), ("torch.where-path", False), ("index_fill-0", True), ("index_fill--1", False),
    ("masked_scatter-gate", True), ("masked_scatter-path", False),
])
def test_a_gate_stays_one_only_while_its_values_cannot_be_negative(fill: str, gate: bool) -> None:
    """A routing op keeps a gate's range; one that brings in a value widens it (``masked_fill``, ``where``, ``pad``,
    ``x[i] = v``, ``index_fill``, ``masked_scatter``), and a factor that can then be negative is a signal, whose
    product with another signal the CNN presets refuse. The gate tag passed through masked_fill unchanged before (a
    factor filled with -1 was a gate)."""
    torch.manual_seed(0)
    model = _FilledGate(fill).double().eval()
    if gate:
        explanation = relprop.explain(model, _x(), method="lrp", preset="epsilon")
        assert torch.equal(explanation.output, model(_x()).detach())
    else:
        with pytest.raises(ExplanationError, match=r"multiplies 2 tensors on the relevance path and 0 of them"):
            relprop.explain(model, _x(), method="lrp", preset="epsilon")


class _MaskedScores(nn.Module):
    """Self-attention over 4 tokens whose scores are masked causally, in place (``scores.masked_fill_(mask, -inf)``,
    the result dropped, as much attention code writes it) or out of place."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.in_place = in_place
        self.q, self.k, self.v, self.out = (nn.Linear(6, 6, bias=False) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        h = x.view(-1, 4, 6)
        scores = self.q(h) @ self.k(h).transpose(1, 2)
        mask = torch.ones(4, 4, dtype=torch.bool).triu(1)
        if self.in_place:
            scores.masked_fill_(mask, float("-inf"))
        else:
            scores = scores.masked_fill(mask, float("-inf"))
        return self.out(torch.softmax(scores, -1) @ self.v(h)).sum(1)  # type: ignore[no-any-return]


@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
def test_attention_scores_masked_in_place_equal_the_out_of_place_mask(preset: str) -> None:
    """``masked_fill_`` had no rule (only ``masked_fill``); it routes now, and its result goes to the scores the
    model holds."""
    torch.manual_seed(0)
    model, written_out = _MaskedScores(True).double().eval(), _MaskedScores(False).double().eval()
    written_out.load_state_dict(model.state_dict())
    x = torch.randn(2, 24, dtype=torch.float64)
    explanation = relprop.explain(model, x, 0, method="lrp", preset=preset)
    expected = relprop.explain(written_out, x, 0, method="lrp", preset=preset)
    assert torch.equal(explanation.output, model(x).detach())
    assert torch.equal(explanation.relevance, expected.relevance)


class _ResidualBeforeAttention(nn.Module):
    """``h = lin(x)``, ``h += x`` (or ``h = h + x``), attention on h as one ``F.scaled_dot_product_attention`` (which
    the presets decompose into its ops), and h again after it."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.in_place = in_place
        self.lin, self.out = nn.Linear(4, 4, bias=False), nn.Linear(4, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.lin(x)
        if self.in_place:
            h += x
        else:
            h = h + x
        q = h.unsqueeze(1)
        attended = F.scaled_dot_product_attention(q, q, q).squeeze(1)
        return self.out(attended + h)  # type: ignore[no-any-return]


@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
def test_a_tensor_rebound_in_place_stays_on_the_path_after_a_decomposed_op(preset: str) -> None:
    """A decomposition ran its ops under the guard entered again with ``with guard``, whose exit took the tags off
    every tensor the pass had tagged: h, rebound by ``h += x`` before the attention, then counted as a constant in
    ``attended + h``, and its share of the relevance was lost without an error (0.64 of the largest value here)."""
    torch.manual_seed(0)
    model, written_out = _ResidualBeforeAttention(True).double().eval(), _ResidualBeforeAttention(False).double().eval()
    written_out.load_state_dict(model.state_dict())
    x = torch.randn(2, 4, dtype=torch.float64)
    explanation = relprop.explain(model, x, 1, method="lrp", preset=preset)
    expected = relprop.explain(written_out, x, 1, method="lrp", preset=preset)
    assert torch.equal(explanation.relevance, expected.relevance)


class _InputChangedAfterTheLayer(nn.Module):
    """``y = conv(h)``, then ``h.mul_(2)`` (or ``h = h * 2``), then ``bn(y) + h``: the batch norm merges with the
    convolution, which ran on the old ``h``."""

    def __init__(self, bare: bool) -> None:
        super().__init__()
        self.bare = bare
        self.lin, self.conv, self.bn, self.head = nn.Linear(4, 6), nn.Conv1d(6, 6, 1), nn.BatchNorm1d(6), \
            nn.Linear(18, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.lin(x).transpose(1, 2).contiguous()
        y = self.conv(h)
        if self.bare:
            h.mul_(2.0)
        else:
            h = h * 2.0
        return self.head((self.bn(y) + h).flatten(1))  # type: ignore[no-any-return]


@pytest.mark.parametrize("preset", ["epsilon_plus_flat", "alpha2beta1", "zplus"])
def test_a_batch_norm_merges_with_its_layer_as_it_ran_when_the_layers_input_changed_in_place_since(
        preset: str) -> None:
    """The merged pair's rule takes the layer's input: the tensor the layer ran on, not the one an in-place op gave
    the same object afterwards (which it took, for a commit: another heatmap than the out-of-place form's)."""
    torch.manual_seed(0)
    model, written_out = _InputChangedAfterTheLayer(True).double().eval(), \
        _InputChangedAfterTheLayer(False).double().eval()
    model.bn.running_mean.uniform_(-1.0, 1.0)
    written_out.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    explanation = relprop.explain(model, x, 0, method="lrp", preset=preset)
    assert torch.equal(explanation.relevance, relprop.explain(written_out, x, 0, method="lrp", preset=preset).relevance)
    assert torch.equal(explanation.output, model(x).detach())


class _Attention(nn.Module):
    """Self-attention over 4 tokens written with the old einsum interface (operands in a list, CvT's) or with a
    template op on the softmax output (``softmax(s.float()).type_as(s)``, XLM's), or plainly (``plain``)."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.q, self.k, self.v = (nn.Linear(6, 6) for _ in range(3))
        self.out = nn.Linear(24, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = x.view(-1, 4, 6)
        q, k, v = self.q(h), self.k(h), self.v(h)
        if self.form == "einsum-list":
            scores = torch.einsum("bik,bjk->bij", [q, k])
        else:
            scores = torch.einsum("bik,bjk->bij", q, k)
        weights = scores.softmax(-1)
        if self.form == "templates":
            weights = weights.type_as(scores).view_as(scores).reshape_as(scores).expand_as(scores)
        context = torch.einsum("bij,bjk->bik", [weights, v]) if self.form == "einsum-list" else weights @ v
        return self.out(context.flatten(1))  # type: ignore[no-any-return]


@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
@pytest.mark.parametrize("form", ["einsum-list", "templates"])
def test_einsum_operands_in_a_list_and_template_ops_explain_as_the_plain_forms(form: str, preset: str) -> None:
    """``torch.einsum(eq, [a, b])`` was refused (the operands in a list, where no rule saw them), and under cp_lrp
    ``weights.type_as(scores)`` (the weights a constant, the scores lending their dtype) read as an op joining a
    constant to the path. The operands are unpacked and a template lends only its dtype or shape: bit for bit the
    plain forms."""
    torch.manual_seed(0)
    model = _Attention(form).double().eval()
    plain = _Attention("plain").double().eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    explanation = relprop.explain(model, x, 0, method="lrp", preset=preset)
    expected = relprop.explain(plain, x, 0, method="lrp", preset=preset)
    assert torch.equal(explanation.output, model(x).detach())
    assert torch.allclose(explanation.relevance, expected.relevance, rtol=1e-12, atol=1e-15)
    assert explanation.relevance.abs().sum() > 0


class _ResponseNormalised(nn.Module):
    """Conv1d -> ReLU -> local response normalisation -> Linear, no biases; or (``twin``) the normalisation written
    out, ``h / d`` with the denominator ``d = (k + alpha * mean over a window of channels of h^2)^beta`` detached."""

    def __init__(self, twin: bool) -> None:
        super().__init__()
        self.twin = twin
        self.conv, self.out = nn.Conv1d(2, 5, 3, bias=False), nn.Linear(5 * 6, 3, bias=False)
        self.norm = nn.LocalResponseNorm(3, alpha=0.5, beta=0.75, k=1.0)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x.view(-1, 2, 8)))
        if not self.twin:
            return self.out(self.norm(h).flatten(1))  # type: ignore[no-any-return]
        square = F.pad(h.detach().pow(2).unsqueeze(1), (0, 0, 1, 1))  # the window of 3 channels around each
        d = F.avg_pool2d(square, (3, 1), stride=1).squeeze(1).mul(0.5).add(1.0).pow(0.75)
        return self.out((h / d).flatten(1))  # type: ignore[no-any-return]


@pytest.mark.parametrize("preset", ["epsilon", "epsilon_plus_flat", "attnlrp"])
def test_local_response_normalisation_holds_its_denominator_constant(preset: str) -> None:
    """``nn.LocalResponseNorm`` was refused; it divides by a statistic of the path, which the rule holds constant
    (as F.normalize's norm): R_x = R, the twin with the denominator detached (1e-12), conserving without biases."""
    torch.manual_seed(0)
    model, twin = _ResponseNormalised(False).double().eval(), _ResponseNormalised(True).double().eval()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    options: dict[str, Any] = {"epsilon": 1e-12, "stabilizer": 1e-12} if preset == "epsilon" else {}
    explanation = relprop.explain(model, x, 0, method="lrp", preset=preset, **options)
    expected = relprop.explain(twin, x, 0, method="lrp", preset=preset, **options)
    assert torch.allclose(explanation.output, twin(x).detach(), rtol=1e-12, atol=0)
    assert torch.allclose(explanation.relevance, expected.relevance, rtol=1e-10, atol=1e-14)
    if preset == "epsilon":
        assert torch.allclose(explanation.relevance.sum(1), explanation.score, rtol=1e-9, atol=0)


class _Windows(nn.Module):
    """Overlapping windows of a hidden layer (width 4, stride 2), as Longformer's sliding chunks read them: by
    ``as_strided`` or by ``unfold``, the same values."""

    def __init__(self, strided: bool) -> None:
        super().__init__()
        self.strided = strided
        self.inner, self.outer = nn.Linear(6, 16, bias=False), nn.Linear(7, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inner(x)
        windows = h.as_strided((len(h), 7, 4), (16, 2, 1)) if self.strided else h.unfold(1, 4, 2)
        return self.outer(torch.relu(windows).sum(2))


def test_as_strided_routes_relevance_as_unfold_does_and_conserves_it() -> None:
    """Elements read by two windows get the relevance of both (as_strided's own backward sums them)."""
    torch.manual_seed(0)
    strided, unfolded = _Windows(True).double().eval(), _Windows(False).double().eval()
    unfolded.load_state_dict(strided.state_dict())
    x = torch.randn(3, 6, dtype=torch.float64)
    got = relprop.explain(strided, x, 1, method="lrp", preset="epsilon", epsilon=1e-12, stabilizer=1e-12)
    want = relprop.explain(unfolded, x, 1, method="lrp", preset="epsilon", epsilon=1e-12, stabilizer=1e-12)
    torch.testing.assert_close(got.relevance, want.relevance, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got.relevance.sum(1), got.score, rtol=1e-9, atol=1e-12)


class _CastConstant(nn.Module):
    """A constant cast to a path tensor's dtype and device, ``scale.to(h)``, then multiplied with it."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.inner, self.outer = nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inner(x)
        scale = torch.arange(1.0, 5.0)
        if self.form == "positional":
            scale = scale.to(h)
        elif self.form == "keyword":
            scale = scale.to(tensor=h, non_blocking=False)
        else:
            scale = scale.to(h, False, True)  # non_blocking, copy
        return self.outer(h * scale)


@pytest.mark.parametrize("form", ["positional", "keyword", "flags"])
@pytest.mark.parametrize("preset", ["attnlrp", "epsilon"])
def test_a_constant_cast_to_a_path_tensor_stays_a_constant(form: str, preset: str) -> None:
    """``t.to(h)`` lends h's dtype and device only. It made h an operand, so the constant went on the path and
    the product read as two factors: the transformer presets' uniform rule halved the relevance, silently."""
    torch.manual_seed(0)
    model = _CastConstant(form).double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    explanation = relprop.explain(model, x, 0, method="lrp", preset=preset, epsilon=1e-12, stabilizer=1e-12)
    torch.testing.assert_close(explanation.relevance.sum(1), explanation.score, rtol=1e-9, atol=1e-11)


class _Assembled(nn.Module):
    """Two layers' outputs side by side: by ``cat``, by ``x[..., :4] = a`` into a tensor made in the forward pass, or
    by ``copy_`` into its slices (DeepSeek-V3's latent attention assembles its keys so)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.a, self.b, self.head = kind, nn.Linear(6, 4), nn.Linear(6, 3), nn.Linear(7, 2)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.a(x), self.b(x)
        if self.kind == "cat":
            h = torch.cat([a, b], -1)
        else:
            h = a.new_empty(len(x), 7)
            if self.kind == "setitem":
                h[..., :4], h[..., 4:] = a, b
            else:
                h[..., :4].copy_(a)
                h[..., 4:].copy_(b)
        return self.head(torch.relu(h))  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["setitem", "copy"])
@pytest.mark.parametrize(("method", "options"), [("lrp", {"preset": "epsilon"}), ("lrp", {"preset": "zplus"}),
                                                 ("deeplift", {})])
def test_values_copied_into_a_new_tensor_keep_their_relevance(kind: str, method: str, options: dict[str, Any]
                                                             ) -> None:
    """``copy_`` into slices of a tensor the forward pass made routes each slice's relevance to its source, as
    ``cat`` does; it was refused (no rule), which kept Hugging Face's DeepSeek-V3 from being explained."""
    torch.manual_seed(0)
    joined, model = _Assembled("cat").double().eval(), _Assembled(kind).double().eval()
    model.load_state_dict(joined.state_dict())
    x = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = relprop.explain(model, x, 1, method=method, **options)
    expected = relprop.explain(joined, x, 1, method=method, **options)
    torch.testing.assert_close(got.relevance, expected.relevance, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(got.output, expected.output, rtol=0, atol=0)
