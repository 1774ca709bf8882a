"""The fused LRP path of stock ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (relprop.rules.recurrent): the same relevance
as the explicit cells, used only where it provably is, and the user's model unchanged afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

import relprop
from relprop import rules
from relprop.canonizers import ExplicitRecurrent
from relprop.canonizers import recurrent as canonizer
from relprop.composites import LINEAR_TYPES, RuleMap, get_preset
from relprop.errors import ExplanationError
from relprop.layers import GatedProduct, Sum
from relprop.rules.recurrent import CellRules, GRURules, RNNRules, fused_recurrent


class _LiteralEpsilon(rules.Epsilon):
    """Epsilon through its reference definition; not the exact class, so the fused path declines it."""


def _explicit(epsilon: float = 1e-3, bias: bool = True, stabilizer: float = 1e-6) -> RuleMap:
    """lstm_epsilon's rules, run through the explicit cells."""
    return RuleMap([(LINEAR_TYPES, _LiteralEpsilon(epsilon=epsilon, bias=bias))], stabilizer=stabilizer)


@pytest.fixture
def fused_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the stock module calls that took the fused path."""
    calls: list[int] = []

    def counted(*args: Any) -> Any:
        calls.append(1)
        return fused_recurrent(*args)

    monkeypatch.setattr(canonizer, "fused_recurrent", counted)
    yield calls


class _Classifier(nn.Module):
    """A stock LSTM (GRU, RNN) on (batch, time, features) input in either layout, given h0/c0 or not, read at its
    output sequence and at its final states."""

    def __init__(self, lstm: nn.RNNBase, initial: str = "none", classes: int = 3) -> None:
        super().__init__()
        self.lstm, self.initial = lstm, initial
        directions = 2 if lstm.bidirectional else 1
        self.head = nn.Linear(directions * lstm.hidden_size, classes)
        self.start = nn.Linear(lstm.input_size, lstm.hidden_size)  # h0, c0 from the first step (on the path)

    def _state(self, x: Tensor) -> Any:
        lstm = self.lstm
        slots = lstm.num_layers * (2 if lstm.bidirectional else 1)
        if self.initial == "none":
            return None
        if self.initial == "constant":
            h = torch.linspace(-1, 1, slots * len(x) * lstm.hidden_size, dtype=x.dtype)
            h = h.reshape(slots, len(x), lstm.hidden_size)
        else:
            h = torch.tanh(self.start(x[:, 0])).expand(slots, -1, -1)  # depends on the input
        return (h, h.flip(-1) * 0.5) if isinstance(lstm, nn.LSTM) else h

    def forward(self, x: Tensor) -> Tensor:
        state = self._state(x)
        output, final = self.lstm(x if self.lstm.batch_first else x.transpose(0, 1), state)
        h, c = final if isinstance(final, tuple) else (final, final)
        last = output[:, -1] if self.lstm.batch_first else output[-1]
        return self.head(last) + h.sum(0).mean(-1, keepdim=True) + 0.5 * c[-1].sum(-1, keepdim=True)


_CONFIGS = [
    {"num_layers": 1},
    {"num_layers": 1, "bidirectional": True, "batch_first": False},
    {"num_layers": 2, "batch_first": False},
    {"num_layers": 2, "bidirectional": True},
    {"num_layers": 2, "bidirectional": True, "bias": False, "batch_first": False},
    {"num_layers": 3, "bidirectional": True, "dropout": 0.3},
]


def _model(config: dict[str, Any], initial: str = "none", dtype: torch.dtype = torch.float64,
           stock: Any = nn.LSTM) -> _Classifier:
    torch.manual_seed(3)
    options = {"batch_first": True, **config}
    return _Classifier(stock(4, 6, **options), initial).to(dtype).eval()


_STOCK = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN,
          "rnn_relu": lambda *args, **kwargs: nn.RNN(*args, nonlinearity="relu", **kwargs)}


def _inputs(dtype: torch.dtype = torch.float64, batch: int = 3) -> Tensor:
    return torch.randn(batch, 7, 4, generator=torch.Generator().manual_seed(5), dtype=dtype)


def _assert_relative(got: Tensor, want: Tensor, tolerance: float) -> None:
    scale = want.abs().max()
    assert float((got - want).abs().max() / scale) < tolerance, float((got - want).abs().max() / scale)


@pytest.mark.parametrize("config", _CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("initial", ["none", "constant", "from_input"])
@pytest.mark.parametrize("stock", list(_STOCK))
def test_fused_equals_explicit_cells_in_float64(
    config: dict[str, Any], initial: str, stock: str, fused_calls: list[int]
) -> None:
    model, x = _model(config, initial, stock=_STOCK[stock]), _inputs()
    fused = relprop.explain(model, x, "all", preset="lstm_epsilon")
    assert len(fused_calls) == 1
    explicit = relprop.explain(model, x, "all", rule_map=_explicit())
    assert len(fused_calls) == 1  # the reference ran through the cells
    assert fused.relevance.shape == (3, 3, 7, 4)
    _assert_relative(fused.relevance, explicit.relevance, 1e-10)
    # conservation as the cells have it: the same gap (the biases and stabilisers absorb the same share)
    torch.testing.assert_close(fused.details["conservation_gap"], explicit.details["conservation_gap"],
                               rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("stock", list(_STOCK))
def test_fused_equals_explicit_cells_in_float32(stock: str, fused_calls: list[int]) -> None:
    model = _model({"num_layers": 2, "bidirectional": True}, "from_input", torch.float32, _STOCK[stock])
    x = _inputs(torch.float32)
    fused = relprop.explain(model, x, 1, preset="lstm_epsilon").relevance
    explicit = relprop.explain(model, x, 1, rule_map=_explicit()).relevance
    assert len(fused_calls) == 1
    _assert_relative(fused, explicit, 1e-5)


@pytest.mark.parametrize("options", [{"epsilon": 0.0}, {"epsilon": 0.25, "stabilizer": 1e-2}])
@pytest.mark.parametrize("stock", list(_STOCK))
def test_fused_follows_the_presets_options(options: dict[str, float], stock: str, fused_calls: list[int]) -> None:
    model, x = _model({"num_layers": 2, "bidirectional": True}, stock=_STOCK[stock]), _inputs()
    fused = relprop.explain(model, x, 2, preset="lstm_epsilon", **options).relevance
    explicit = relprop.explain(model, x, 2, rule_map=_explicit(**options)).relevance
    assert len(fused_calls) == 1
    _assert_relative(fused, explicit, 1e-10)


@pytest.mark.parametrize("stock", list(_STOCK))
def test_fused_epsilon_without_bias_and_per_cell_rules(stock: str, fused_calls: list[int]) -> None:
    """Epsilon(bias=False) leaves the bias out of z; a name pattern gives one cell's linear maps their own
    epsilon."""
    model, x = _model({"num_layers": 2, "bidirectional": True}, stock=_STOCK[stock]), _inputs()
    def one_cell(name: str, module: nn.Module) -> bool:
        return name.startswith("lstm.relprop_explicit.layers.1.0.") and isinstance(module, nn.Linear)

    fused_map = RuleMap([(one_cell, rules.Epsilon(epsilon=0.5)),
                         (LINEAR_TYPES, rules.Epsilon(epsilon=1e-3, bias=False))])
    explicit_map = RuleMap([(one_cell, _LiteralEpsilon(epsilon=0.5)),
                            (LINEAR_TYPES, _LiteralEpsilon(epsilon=1e-3, bias=False))])
    fused = relprop.explain(model, x, 0, rule_map=fused_map).relevance
    explicit = relprop.explain(model, x, 0, rule_map=explicit_map).relevance
    assert len(fused_calls) == 1
    _assert_relative(fused, explicit, 1e-10)


class _Tokens(nn.Module):
    """The benchmark's text classifier: embedding, 2-layer bidirectional LSTM, a head on the final states."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(50, 8)
        self.lstm = nn.LSTM(8, 10, num_layers=2, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(20, 4)

    def forward(self, ids: Tensor) -> Tensor:
        states, _ = self.lstm(self.embedding(ids))
        return self.linear(torch.cat([states[:, -1, :10], states[:, 0, 10:]], 1))  # type: ignore[no-any-return]


_Z_RULES = {
    "zplus": (rules.ZPlus, {}), "alpha2beta1": (rules.AlphaBeta, {"alpha": 2.0, "beta": 1.0}),
    "gamma": (rules.Gamma, {"gamma": 0.25}), "zbox": (rules.ZBox, {"low": -4.0, "high": 4.0}),
    "flat": (rules.Flat, {}), "wsquare": (rules.WSquare, {}), "zplus_no_bias": (rules.ZPlus, {"bias": False}),
}


def _literal(rule: type[rules.ZRule]) -> type[rules.ZRule]:
    """The rule's class through its reference definition (no fast kernel), which the fused path declines."""
    return type(f"Literal{rule.__name__}", (rule,), {})


@pytest.mark.parametrize("name", list(_Z_RULES))
@pytest.mark.parametrize("stock", list(_STOCK))
def test_fused_equals_explicit_cells_under_other_z_rules(name: str, stock: str, fused_calls: list[int]) -> None:
    model, x = _model({"num_layers": 2, "bidirectional": True}, "from_input", stock=_STOCK[stock]), _inputs()
    rule, options = _Z_RULES[name]
    fused = relprop.explain(model, x, "all", rule_map=RuleMap([(LINEAR_TYPES, rule(**options))]))
    explicit = relprop.explain(model, x, "all", rule_map=RuleMap([(LINEAR_TYPES, _literal(rule)(**options))]))
    assert len(fused_calls) == 1
    _assert_relative(fused.relevance, explicit.relevance, 1e-10)
    torch.testing.assert_close(fused.details["conservation_gap"], explicit.details["conservation_gap"],
                               rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("stock", list(_STOCK))
def test_fused_under_the_thesis_rules(stock: str, fused_calls: list[int]) -> None:
    """The thesis presets put zB on the first linear layer, which in a stock module is a map inside one step of
    one direction of one layer: they refuse it (the other direction would get another rule, and the state the
    input's). Given that map by name, the rule is the user's choice, and the fused path applies it as the explicit
    cells do, alpha-beta or z+ everywhere else."""
    model, x = _model({"num_layers": 2, "bidirectional": True}, stock=_STOCK[stock]), _inputs()
    bounds = {"low": -4.0, "high": 4.0}
    for preset in ("thesis_lrp", "thesis_dtd"):
        with pytest.raises(ExplanationError, match=r"first-layer rule \(ZBox\) would go to 'lstm\.relprop_explicit"):
            relprop.explain(model, x, 1, preset=preset, **bounds)
    undo = ExplicitRecurrent().apply(model)
    first = next(name for name, module in model.named_modules() if isinstance(module, nn.Linear))
    undo()
    for other in (rules.AlphaBeta, rules.ZPlus):
        options = {"alpha": 1.5, "beta": 0.5} if other is rules.AlphaBeta else {}
        fused = relprop.explain(model, x, 1, rule_map=RuleMap([(first, rules.ZBox(1e-6, **bounds)),
                                                                (LINEAR_TYPES, other(1e-6, **options))]))
        explicit = relprop.explain(model, x, 1, rule_map=RuleMap([(first, _literal(rules.ZBox)(1e-6, **bounds)),
                                                                   (LINEAR_TYPES, _literal(other)(1e-6, **options))]))
        _assert_relative(fused.relevance, explicit.relevance, 1e-10)
    assert len(fused_calls) == 2


@pytest.mark.parametrize("stock", ["lstm", "gru"])
def test_fused_takes_each_modules_own_stabiliser(stock: str, fused_calls: list[int]) -> None:
    model, x = _model({"num_layers": 2, "bidirectional": True}, stock=_STOCK[stock]), _inputs()
    own = (Sum, rules.Proportional(0.05))
    fused = relprop.explain(model, x, 1, rule_map=get_preset("lstm_epsilon").with_rules(own)).relevance
    explicit = relprop.explain(model, x, 1, rule_map=_explicit().with_rules(own)).relevance
    assert len(fused_calls) == 1
    _assert_relative(fused, explicit, 1e-10)
    assert float((fused - relprop.explain(model, x, 1, preset="lstm_epsilon").relevance).abs().max()) > 1e-6


def test_fused_on_token_ids(fused_calls: list[int]) -> None:
    torch.manual_seed(0)
    model, ids = _Tokens().double().eval(), torch.randint(0, 50, (2, 9))
    fused = relprop.explain(model, ids, "all", preset="lstm_epsilon")
    explicit = relprop.explain(model, ids, "all", rule_map=_explicit())
    assert len(fused_calls) == 1
    _assert_relative(fused.details["embedding_relevance"], explicit.details["embedding_relevance"], 1e-10)


class _Unbatched(nn.Module):
    """Runs the LSTM on each sample alone, unbatched (time, features), one step long or longer."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.stack([self.lstm(sample)[0][-1] for sample in x]))  # type: ignore[no-any-return]


class _Sequence(nn.Module):
    """A head on every step of the output sequence, the stock module's output going straight into a layer."""

    def __init__(self, stock: Any) -> None:
        super().__init__()
        self.lstm, self.head = stock(4, 6, batch_first=True), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.lstm(x)[0]).sum(1)  # type: ignore[no-any-return]


@pytest.mark.parametrize("stock", list(_STOCK))
def test_fused_output_feeds_a_layer_directly(stock: str, fused_calls: list[int]) -> None:
    torch.manual_seed(0)
    model, x = _Sequence(_STOCK[stock]).double().eval(), _inputs()
    fused = relprop.explain(model, x, 1, preset="lstm_epsilon").relevance
    explicit = relprop.explain(model, x, 1, rule_map=_explicit()).relevance
    assert len(fused_calls) == 1
    _assert_relative(fused, explicit, 1e-10)


@pytest.mark.parametrize("steps", [1, 5])
def test_fused_on_unbatched_calls(steps: int, fused_calls: list[int]) -> None:
    torch.manual_seed(0)
    model, x = _Unbatched().double().eval(), _inputs()[:, :steps]
    fused = relprop.explain(model, x, 1, preset="lstm_epsilon").relevance
    explicit = relprop.explain(model, x, 1, rule_map=_explicit()).relevance
    assert len(fused_calls) == 3
    _assert_relative(fused, explicit, 1e-10)


@pytest.mark.parametrize("stock", list(_STOCK))
def test_fused_forward_is_the_stock_modules(stock: str) -> None:
    """Outputs of the fused function equal the stock module's, unbatched and time-major, with a state."""
    torch.manual_seed(0)
    rnn = _STOCK[stock](3, 5, num_layers=2, bidirectional=True).double()
    cell_rules: list[Any] = [{"lstm": CellRules(rules.Epsilon(), rules.Proportional()),
                              "gru": GRURules(rules.Epsilon(), rules.Epsilon(), rules.Proportional(),
                                              rules.Proportional())}.get(stock, RNNRules(rules.Epsilon()))] * 4
    x, h0, c0 = torch.randn(6, 2, 3).double(), torch.randn(4, 2, 5).double(), torch.randn(4, 2, 5).double()
    lstm = isinstance(rnn, nn.LSTM)
    for args in [(x, (h0, c0) if lstm else h0), (x[:, 0], (h0[:, 0], c0[:, 0]) if lstm else h0[:, 0]), (x, None)]:
        with torch.no_grad():
            want = rnn(*args)
        got = fused_recurrent(rnn, args[0], args[1], cell_rules)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ---- where the cells run instead -------------------------------------------------------------------------------


def test_other_rules_layers_and_hooks_run_the_cells(fused_calls: list[int]) -> None:
    model, x = _model({"num_layers": 2, "bidirectional": True}), _inputs()
    relprop.explain(model, x, 1, rule_map=get_preset("lstm_epsilon").with_rules((GatedProduct, rules.Uniform())))
    relprop.explain(model, x, 1, rule_map=get_preset("lstm_epsilon").with_rules((nn.Tanh, rules.Proportional())))
    relprop.explain(model, x, 1, rule_map=_explicit())  # a z-rule of the user's own (here: a subclass)
    assert fused_calls == []
    # relevance at a module inside the twin: the cells run, and give the fused path's input relevance
    cell = "lstm.relprop_explicit.layers.0.0.candidate"
    recorded = relprop.explain(model, x, 1, preset="lstm_epsilon", layers=[cell])
    assert fused_calls == [] and recorded.layers[cell].shape[:2] == (3, 7)
    fused = relprop.explain(model, x, 1, preset="lstm_epsilon")
    assert len(fused_calls) == 1
    _assert_relative(recorded.relevance, fused.relevance, 1e-10)
    # a global module hook would see every module of the cells
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, output: None)
    try:
        relprop.explain(model, x, 1, preset="lstm_epsilon")
    finally:
        handle.remove()
    assert len(fused_calls) == 1


def test_other_methods_are_unchanged(fused_calls: list[int]) -> None:
    model, x = _model({"num_layers": 2, "bidirectional": True}), _inputs()
    gradient = relprop.explain(model, x, 1, method="gradient").relevance
    x_ = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(model(x_)[:, 1].sum(), x_)
    torch.testing.assert_close(gradient, want)
    assert fused_calls == []


def test_packed_sequences_are_refused(fused_calls: list[int]) -> None:
    model = _model({"num_layers": 2})
    packed = pack_padded_sequence(_inputs(), torch.tensor([7, 5, 2]), batch_first=True)
    with pytest.raises(ExplanationError, match="PackedSequence"), \
            get_preset("lstm_epsilon").attached(model) as guard, guard:
        model.lstm(packed)
    assert fused_calls == [] and _hooks(model) == 0


class _Reads(nn.Module):
    """A stock LSTM read at its last step, called in one of the ways a model may call it."""

    def __init__(self, how: str, lstm: nn.LSTM | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.lstm = lstm if lstm is not None else nn.LSTM(4, 5, batch_first=how != "time_major")
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        if self.how == "packed":
            packed = pack_padded_sequence(x, torch.full((len(x),), x.shape[1]), batch_first=True)
            return self.head(self.lstm(packed)[1][0][-1])  # type: ignore[no-any-return]
        if self.how == "keyword":
            return self.head(self.lstm(input=x)[0][:, -1])  # type: ignore[no-any-return]
        output = self.lstm(x)[0]
        return self.head(output[-1] if self.how == "time_major" else output[:, -1])  # type: ignore[no-any-return]


def test_packing_inside_the_model_says_to_pad() -> None:
    with pytest.raises(ExplanationError, match=r"padded batches: pass the padded tensor .* lengths - 1"):
        relprop.explain(_Reads("packed").double().eval(), _inputs()[..., :4], 1, preset="lstm_epsilon")


def test_the_module_called_with_keywords(fused_calls: list[int]) -> None:
    """``lstm(input=x)``, torch's own name for the argument, runs as ``lstm(x)`` does."""
    x = _inputs()[..., :4]
    keyword = relprop.explain(_Reads("keyword").double().eval(), x, 1, preset="lstm_epsilon").relevance
    positional = relprop.explain(_Reads("batch_first").double().eval(), x, 1, preset="lstm_epsilon").relevance
    assert len(fused_calls) == 2
    torch.testing.assert_close(keyword, positional, rtol=0, atol=0)


@pytest.mark.parametrize("steps", [2, 7])
@pytest.mark.parametrize("method", ["lrp", "gradient_x_input"])
def test_time_major_inputs_are_refused_by_their_batch(steps: int, method: str) -> None:
    """x (steps, batch, features) given to a time-major model: its scores have ``batch`` rows, not len(x) (this
    failed inside the backward pass with torch's shape error)."""
    x = _inputs()[..., :4].transpose(0, 1)[:steps]  # (steps, 3, 4)
    with pytest.raises(ExplanationError, match=f"scores with 3 rows for a batch of {steps} inputs"):
        relprop.explain(_Reads("time_major").double().eval(), x, 1, method=method)


@pytest.mark.parametrize("method", ["lrp", "gradient"])
def test_a_dtype_the_module_refuses_is_an_explanation_error(method: str) -> None:
    """A stock RNN checks its input's dtype with a ValueError (a Linear raises RuntimeError): both say how to
    match x and the model."""
    model = _Reads("batch_first").eval()  # float32
    with pytest.raises(ExplanationError, match=r"dtype torch.float64.*pass x.to\(torch.float32\)"):
        relprop.explain(model, _inputs()[..., :4], 1, method=method)


class _Reversed(nn.LSTM):
    """A subclass of nn.LSTM whose forward reads the sequence backwards."""

    def forward(self, input: Tensor, hx: Any = None) -> Any:  # type: ignore[override]
        output, state = super().forward(input.flip(1), hx)
        return output.flip(1), state


def test_a_subclass_with_its_own_forward_is_refused() -> None:
    """The explicit cells would run nn.LSTM's computation instead of the subclass's (the reversed reading was
    explained as a forward one, with no error)."""
    model = _Reads("batch_first", _Reversed(4, 5, batch_first=True)).double().eval()
    x, state = _inputs()[..., :4], {k: v.clone() for k, v in model.state_dict().items()}
    for preset in ("lstm_epsilon", "epsilon"):
        with pytest.raises(ExplanationError, match="lstm is a _Reversed, a subclass of nn.LSTM with a forward"):
            relprop.explain(model, x, 1, preset=preset)
    assert "forward" not in model.lstm.__dict__ and "relprop_explicit" not in model.lstm._modules
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()) and _hooks(model) == 0


# ---- the user's model ----------------------------------------------------------------------------------------


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _unchanged(model: nn.Module, state: dict[str, Tensor], modules: list[nn.Module]) -> None:
    assert list(model.modules()) == modules and _hooks(model) == 0
    assert "forward" not in model.lstm.__dict__ and "relprop_explicit" not in model.lstm._modules
    assert state.keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name])


def test_the_users_model_is_unchanged_also_after_an_error(fused_calls: list[int]) -> None:
    model, x = _model({"num_layers": 2, "bidirectional": True}, "from_input"), _inputs()
    state = {name: value.clone() for name, value in model.state_dict().items()}
    modules = list(model.modules())
    relprop.explain(model, x, 1, preset="lstm_epsilon")
    _unchanged(model, state, modules)

    def fail(module: nn.Module, args: Any, output: Any) -> None:
        if torch.is_grad_enabled():  # the explained pass, not explain's plain one
            raise RuntimeError("boom")

    handle = model.head.register_forward_hook(fail)  # after the fused LSTM ran
    with pytest.raises(RuntimeError, match="boom"):
        relprop.explain(model, x, 1, preset="lstm_epsilon")
    handle.remove()
    assert len(fused_calls) == 2
    _unchanged(model, state, modules)
    with torch.no_grad():  # the stock module computes again
        want, _ = nn.LSTM.forward(model.lstm, x)
        torch.testing.assert_close(model.lstm(x)[0], want)
